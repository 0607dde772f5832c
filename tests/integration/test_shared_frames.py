"""Shared frames through the real gRPC server: one build for N subscribers,
and the per-call binding as the only thing that tells their frames apart.

The server (wrapper/server.py over a real store, real gRPC over TCP) seals
each frame once and sends the same bytes to every call with only the call's
envelope (sequence, subscription, binding) appended. So here the attacker
is a gRPC man in the middle in front of that server, with frames that are
genuine, byte for byte, in their shared part:
- a frame recorded from one call and replayed into another at the same
  sequence number (its watermark and rows verify; only the binding names
  the other call);
- a frame moved within a call under the envelope of the frame it replaces
  (the sequence number fits; the binding was made for the other frame's
  watermark).
The driver refuses both, counts them, and resumes to the store's exact rows.
"""

# ruff: noqa: F811  (the tests take test_tamper's `served` fixture as an argument)
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from test_tamper import LIVE, ROWS, TABLE, TENANT, Served, served  # noqa: F401

from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.frames import open_frame, parse_frame
from prism.fabric.keys import derive_epoch_keys, load_secret
from prism.fabric.sealing import Sealer
from prism.wrapper.server import WrapperServicer
from support.servers import authenticate, driver_for

pytestmark = pytest.mark.integration
SUBSCRIBE = "/prism.fabric.v1.WrapperService/Subscribe"
ENVELOPE = ("sequence", "subscription", "binding")


def shared_part(data: bytes) -> bytes:
    """A frame's bytes without its call's envelope."""
    f = parse_frame(data)
    for name in ENVELOPE:
        f.ClearField(name)  # type: ignore[arg-type]
    return f.SerializeToString()


def counters(port: int) -> dict[str, int]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return dict(pb_grpc.WrapperServiceStub(ch).Health(pb.HealthRequest(), timeout=10).counters)


class RawCall:
    """A blocking Subscribe call that keeps every frame's bytes."""

    def __init__(self, port: int, s: Served, **request: Any) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        login = authenticate(grpc.insecure_channel(f"127.0.0.1:{port}"), s.secret_file, TENANT)
        self.nonce = os.urandom(16)
        sub = self.channel.unary_stream(SUBSCRIBE, pb.SubscribeRequest.SerializeToString, None)
        req = pb.SubscribeRequest(
            tenant_id=TENANT, session=login.session, subscription=self.nonce, **request
        )
        self.stream = sub(login.signed(req))
        self.frames: list[bytes] = []
        self.secret = load_secret(s.secret_file)

    def until_commit(self) -> pb.Frame:
        """Frames up to the next one that carries commit_position."""
        for data in self.stream:
            f = parse_frame(data)
            if f.kind == pb.HEARTBEAT:
                continue
            self.frames.append(data)
            # each frame opens with this call's nonce (binding and all)
            open_frame(
                f,
                lambda e, d=f.vector_dim: Sealer(derive_epoch_keys(self.secret, TENANT, e), d),
                tenant_id=TENANT,
                stream_id=None,
                subscription=self.nonce,
            )
            if f.commit_position:
                return f
        raise AssertionError("the stream ended")

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def test_n_subscribers_at_one_position_cause_one_build(served: Served) -> None:
    n = 5
    with served.serve(WrapperServicer(served.state)) as port:
        calls = [RawCall(port, served) for _ in range(n)]
        heads = [0] * n

        def bootstrap(i: int) -> None:
            heads[i] = calls[i].until_commit().commit_position

        threads = [threading.Thread(target=bootstrap, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert heads == [served.state.store.meta.head] * n
        boot = counters(port)
        per_call = len(calls[0].frames)
        # One bootstrap built for all five, and one segment that commits it
        # (a bootstrap never commits itself: the changes after its head do).
        assert boot["frame_cache_segments_built"] == 2
        assert boot["frame_cache_frames_built"] == per_call
        # Every call got the same sealed bytes; only the envelopes differ.
        for c in calls[1:]:
            assert [shared_part(d) for d in c.frames] == [shared_part(d) for d in calls[0].frames]
            assert c.frames[0] != calls[0].frames[0]

        # Live: all five wait at the head; one commit, one build.
        marks = [len(c.frames) for c in calls]
        threads = [threading.Thread(target=c.until_commit) for c in calls]
        for t in threads:
            t.start()
        served.write(range(ROWS, ROWS + LIVE), 2)
        for t in threads:
            t.join(30)
        live = counters(port)
        assert live["frame_cache_segments_built"] == 3
        got = [len(c.frames) - m for c, m in zip(calls, marks, strict=True)]
        assert live["frame_cache_frames_built"] - boot["frame_cache_frames_built"] == got[0]
        assert got == [got[0]] * n
        for c in calls:
            c.close()


# -- the man in the middle ------------------------------------------------------

# (proxy, call number from 1, the genuine frames of that call) -> frames sent.
Attack = Callable[["FrameProxy", int, Iterator[bytes]], Iterator[bytes]]


class FrameProxy(grpc.GenericRpcHandler):
    """Forwards every call to the real server, passing each Subscribe
    call's frames (their bytes) through an attack; records what the server
    sent in each call."""

    def __init__(self, upstream: int, attack: Attack) -> None:
        self.upstream = grpc.insecure_channel(f"127.0.0.1:{upstream}")
        self.attack = attack
        self.calls = 0
        self.tampered = 0
        self.sent: list[list[bytes]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]
        if method == SUBSCRIBE:
            return grpc.unary_stream_rpc_method_handler(self._subscribe)
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(method, request, context)
        )

    def _unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return bytes(self.upstream.unary_unary(method)(request, timeout=30))
        except grpc.RpcError as exc:
            context.set_trailing_metadata(exc.trailing_metadata())  # type: ignore[attr-defined]
            context.abort(exc.code(), exc.details())  # type: ignore[attr-defined]

    def _subscribe(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls += 1
        call = self.calls
        recorded: list[bytes] = []
        self.sent.append(recorded)
        upstream = self.upstream.unary_stream(SUBSCRIBE)(request)
        context.add_callback(upstream.cancel)

        def genuine() -> Iterator[bytes]:
            for data in upstream:
                recorded.append(data)
                yield data

        yield from self.attack(self, call, genuine())

    def close(self) -> None:
        self.server.stop(0).wait()
        self.upstream.close()


def data_frames(frames: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(sequence, bytes) of the frames that carry rows."""
    for data in frames:
        f = parse_frame(data)
        yield (f.sequence if f.count else 0), data


async def attacked(s: Served, attack: Attack) -> tuple[FrameProxy, dict[str, Any]]:
    """The real server behind a proxy running `attack`; a driver syncs
    through it (sync_through). The proxy, and the driver's stats."""
    with s.serve(WrapperServicer(s.state)) as port:
        proxy = FrameProxy(port, attack)
        try:
            return proxy, await sync_through(s, proxy)
        finally:
            proxy.close()


async def sync_through(s: Served, proxy: FrameProxy) -> dict[str, Any]:
    """A driver that bootstraps through the proxy, then sees a live write;
    its stats once its replica equals the store."""
    async with driver_for(proxy.port, s.secret_file, max_frame_rows=8, insecure=True) as d:
        await d.wait_ready(timeout=30)
        s.write(range(ROWS // 2, ROWS + LIVE), 2)
        for _ in range(300):
            if all((d.get(TABLE, k) or {}).get("name") == s.expected[k] for k in s.expected):
                break
            await asyncio.sleep(0.05)
        rows = {k: (d.get(TABLE, k) or {}).get("name") for k in s.expected}
        stats: dict[str, Any] = d.stats()
    assert rows == s.expected, "the replica differs from the store"
    return stats


async def test_a_frame_replayed_from_another_call_is_refused(served: Served) -> None:
    """Call 1 loses a frame (the driver reconnects); into call 2 the attacker
    puts call 1's frame of the same sequence number: the same shared bytes,
    a valid watermark, the right sequence, but another call's binding."""
    target = 3

    def attack(proxy: FrameProxy, call: int, frames: Iterator[bytes]) -> Iterator[bytes]:
        for seq, data in data_frames(frames):
            if call == 1 and seq == target:
                proxy.tampered += 1
                continue  # dropped: the driver ends the call
            if call == 2 and seq == target:
                old = proxy.sent[0][target - 1]
                assert parse_frame(old).sequence == target
                # Genuine, byte for byte, but for the envelope.
                assert shared_part(old) == shared_part(data) and old != data
                proxy.tampered += 1
                yield old
                continue
            yield data

    proxy, stats = await attacked(served, attack)
    assert proxy.tampered == 2 and proxy.calls >= 3
    assert stats["frames_rejected_by_reason"] == {"sequence": 1, "replayed": 1}
    assert stats["bootstraps"] == 1


@pytest.mark.parametrize("phase", ["bootstrap", "live"])
async def test_a_frame_moved_within_a_call_fails_its_binding(served: Served, phase: str) -> None:
    """The attacker sends the next frame's shared bytes under this frame's
    envelope (sequence, subscription and binding all of this call, this
    place): the sequence fits, the binding does not."""

    def attack(proxy: FrameProxy, call: int, frames: Iterator[bytes]) -> Iterator[bytes]:
        it = data_frames(frames)
        for seq, data in it:
            f = parse_frame(data)
            live = f.kind == pb.CHANGES and f.head_position > ROWS + 1
            if call == 1 and seq and not proxy.tampered and live == (phase == "live"):
                nxt_seq, nxt = next(it)
                assert nxt_seq == seq + 1
                moved = parse_frame(shared_part(nxt))
                for name in ENVELOPE:
                    setattr(moved, name, getattr(f, name))
                proxy.tampered += 1
                yield moved.SerializeToString()
                yield nxt
                continue
            yield data

    proxy, stats = await attacked(served, attack)
    assert proxy.tampered == 1 and proxy.calls >= 2
    assert stats["frames_rejected_by_reason"] == {"replayed": 1}
    assert stats["bootstraps"] == 1
