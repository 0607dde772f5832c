"""Frames altered in flight are rejected, counted and logged, nothing of them
reaches the replica, and the driver resumes from its last good position.

A real gRPC server over TCP serves a real store. Two kinds of attacker:
- in the application layer, a servicer that alters the frames it streams
  (flips, re-signing with a wrong key, drops, replays, reorders, truncation,
  rows moved between frames, frames from another call or an expired epoch);
- on the wire, a TCP proxy that flips, drops or repeats the server's bytes,
  on the plaintext path (the frame checks catch it) and under TLS (the TLS
  record layer catches it first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import bind_frame, frame_watermark, seal_frame
from prism.fabric.keys import derive_epoch_keys, load_secret, write_secret
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer
from prism.wrapper.auth import Authenticator, TenantSecrets
from prism.wrapper.certs import CertPaths
from prism.wrapper.config import config_from_mapping
from prism.wrapper.keyring import Keyring
from prism.wrapper.pipeline import Pipeline
from prism.wrapper.server import (
    WrapperServicer,
    WrapperState,
    create_server,
    server_credentials,
)
from prism.wrapper.store import Store
from support.proxy import Mutator, Proxy
from support.servers import driver_for

pytestmark = pytest.mark.integration
TENANT = "acme"
TABLE = "public.t"
ROWS = 40
LIVE = 20  # rows changed after the bootstrap, in one source transaction
DIM = 8


@dataclass
class Served:
    """A store with ROWS rows behind a real gRPC server (plaintext unless TLS
    is asked for), and what a test needs to change it and check the replica."""

    state: WrapperState
    secret_file: Path
    keyring: Keyring
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    expected: dict[int, str] = field(default_factory=dict)

    def write(self, keys: range, version: int) -> None:
        """One store transaction that upserts these rows (a source commit)."""
        pipeline, store = self.state.pipeline, self.state.store
        with store.transaction() as txn:
            for i in keys:
                name = f"row {i} v{version}"
                row = {"id": i, "name": name, "v": self.rng.normal(size=DIM).tolist()}
                txn.upsert(
                    TABLE,
                    encode_key([i]),
                    encode_row(row),
                    pipeline.vectorizer.vector_bytes(TABLE, row),
                    1,
                )
                self.expected[i] = name

    def sealer(self, epoch: int) -> Sealer:
        """The tenant's real keys: for an attacker who stole the HMAC key."""
        return Sealer(derive_epoch_keys(load_secret(self.secret_file), TENANT, epoch), DIM)

    @contextlib.contextmanager
    def serve(
        self, servicer: WrapperServicer, credentials: grpc.ServerCredentials | None = None
    ) -> Iterator[int]:
        server, port = create_server(self.state, "127.0.0.1:0", servicer, credentials)
        server.start()
        try:
            yield port
        finally:
            server.stop(0).wait()


@pytest.fixture
def served(tmp_path: Path, certs: CertPaths) -> Iterator[Served]:
    secret_file = tmp_path / "t.secret"
    write_secret(secret_file)
    cfg = config_from_mapping(
        {
            "database": {"dsn": "host=unused"},
            "server": {"tenant_id": TENANT, "secret_file": str(secret_file)},
            "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
            "store": {"path": str(tmp_path / "s.sqlite3")},
            "tables": [{"name": TABLE, "vector_column": "v", "vector_dim": DIM}],
        },
        env={},
    )
    store = Store(cfg.store_path, "normal")
    store.reset("s")
    keyring = Keyring(cfg.store_path, [TENANT], 0)
    pipeline = Pipeline(cfg, store, {TENANT: keyring.projection_key(TENANT)})
    auth = Authenticator({TENANT: TenantSecrets(TENANT, (load_secret(secret_file),))})
    state = WrapperState(cfg=cfg, store=store, pipeline=pipeline, auth=auth, keyring=keyring)
    with store.transaction() as txn:
        txn.set_table_columns(
            TABLE,
            json.dumps(
                {
                    "columns": [["id", "int8"], ["name", "text"], ["v", "_float4"]],
                    "key_columns": ["id"],
                }
            ),
        )
        txn.mark_snapshot_done()
    s = Served(state, secret_file, keyring)
    s.write(range(ROWS), 1)
    yield s
    keyring.close()
    store.close()


# -- the application-layer attacker ------------------------------------------

# What the attacker does to the frames of one Subscribe call:
# (servicer, call number from 1, the frames the wrapper sends) -> frames sent.
Attack = Callable[["Tampering", int, Iterator[pb.Frame]], Iterator[pb.Frame]]
# What it does to one frame, given the frames after it: the frames sent instead.
Alter = Callable[[pb.Frame, Iterator[pb.Frame]], list[pb.Frame]]


class Tampering(WrapperServicer):
    """A servicer whose Subscribe streams pass through an attack; it records
    what the real servicer sent, so attacks can replay it."""

    def __init__(self, state: WrapperState, attack: Attack) -> None:
        super().__init__(state)
        self.attack = attack
        self.calls = 0
        self.tampered = 0
        self.sent: list[pb.Frame] = []  # every genuine frame, of every call

    def Subscribe(self, request: pb.SubscribeRequest, context: Any) -> Iterator[pb.Frame]:
        self.calls += 1

        def genuine() -> Iterator[pb.Frame]:
            for f in super(Tampering, self).Subscribe(request, context):
                self.sent.append(f)
                yield f

        yield from self.attack(self, self.calls, genuine())


def copy(f: pb.Frame) -> pb.Frame:
    g = pb.Frame()
    g.CopyFrom(f)
    return g


def on_target(phase: str, alter: Alter) -> Attack:
    """Alter the 2nd data frame of the first call's bootstrap, or of the live
    batch after it."""

    def attack(srv: Tampering, call: int, frames: Iterator[pb.Frame]) -> Iterator[pb.Frame]:
        seen = 0
        for f in frames:
            live = f.kind == pb.CHANGES and f.count and min(_positions(f)) > ROWS
            if call == 1 and f.count and (live if phase == "live" else not live):
                seen += 1
                if seen == 2:
                    srv.tampered += 1
                    yield from alter(f, frames)
                    continue
            yield f

    return attack


def _positions(f: pb.Frame) -> list[int]:
    return np.frombuffer(f.positions, dtype="<u8").tolist()


def flip_byte(field: str, at: float, bit: int) -> Alter:
    """Flip one bit of a block, a fraction `at` into it."""

    def alter(f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
        g = copy(f)
        v = bytearray(getattr(g, field))
        v[int(len(v) * at)] ^= bit
        setattr(g, field, bytes(v))
        return [g]

    return alter


def truncate_vectors(f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
    g = copy(f)
    g.vectors = g.vectors[: len(g.vectors) // 2]
    return [g]


def resign_with_wrong_key(f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
    """Rewrite the rows and seal everything again under another secret."""
    g = copy(f)
    wrong = Sealer(derive_epoch_keys(b"w" * 32, g.tenant_id, g.key_epoch), DIM)
    seal_frame(g, wrong, b"", b"", b"")
    return [g]


def drop(_f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
    return []


def replay(f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
    return [f, f]  # the original signature, twice


def reorder(f: pb.Frame, rest: Iterator[pb.Frame]) -> list[pb.Frame]:
    return [next(rest), f]


APP_ATTACKS = {
    "flip-vector": (flip_byte("vectors", 0.5, 0x01), "watermark"),
    "flip-sealed-rows": (flip_byte("sealed_rows", 0.3, 0x80), "watermark"),
    "truncate": (truncate_vectors, "watermark"),
    "wrong-key": (resign_with_wrong_key, "watermark"),
    "drop": (drop, "sequence"),
    "replay": (replay, "sequence"),
    "reorder": (reorder, "sequence"),
}


async def run_driver(
    s: Served, port: int, until: Callable[[Any], bool], **config: Any
) -> dict[str, Any]:
    """A driver that syncs (and, when `until` needs it, sees the live write);
    returns its stats once its replica equals the store."""
    async with driver_for(port, s.secret_file, max_frame_rows=8, **config) as driver:
        await driver.wait_ready(timeout=30)
        for _ in range(300):
            if until(driver):
                break
            await asyncio.sleep(0.05)
        rows = {k: driver.get(TABLE, k) for k in s.expected}
        stats: dict[str, Any] = driver.stats()
    got = {k: (r or {}).get("name") for k, r in rows.items()}
    assert got == s.expected, "the replica differs from the store"
    return stats


def shows_live(s: Served) -> Callable[[Any], bool]:
    return lambda d: all(
        (d.get(TABLE, k) or {}).get("name") == s.expected[k] for k in range(ROWS, ROWS + LIVE)
    )


async def attacked(s: Served, attack: Attack, phase: str) -> tuple[Tampering, dict[str, Any]]:
    servicer = Tampering(s.state, attack)
    with s.serve(servicer) as port:
        if phase == "bootstrap":
            stats = await run_driver(s, port, lambda d: True, insecure=True)
        else:
            async with driver_for(port, s.secret_file, max_frame_rows=8, insecure=True) as d:
                await d.wait_ready(timeout=30)
                assert d.stats()["bootstraps"] == 1
                s.write(range(ROWS // 2, ROWS + LIVE), 2)  # updates and inserts, one commit
                for _ in range(300):
                    if shows_live(s)(d):
                        break
                    await asyncio.sleep(0.05)
                rows = {k: (d.get(TABLE, k) or {}).get("name") for k in s.expected}
                stats = d.stats()
            assert rows == s.expected, "the replica differs from the store"
    return servicer, stats


@pytest.mark.parametrize("phase", ["bootstrap", "live"])
@pytest.mark.parametrize("name", list(APP_ATTACKS))
async def test_altered_frame_is_rejected_and_driver_resumes(
    served: Served, name: str, phase: str, caplog: pytest.LogCaptureFixture
) -> None:
    alter, reason = APP_ATTACKS[name]
    with caplog.at_level(logging.WARNING, logger="prism.driver"):
        servicer, stats = await attacked(served, on_target(phase, alter), phase)
    assert servicer.tampered == 1
    assert stats["frames_rejected"] == 1
    assert stats["frames_rejected_by_reason"] == {reason: 1}
    assert stats["reconnects"] >= 1 and servicer.calls >= 2
    assert stats["rows"][TABLE] == len(served.expected)
    # The half-received bootstrap was never applied, and after a bad live
    # frame the driver resumed from its position rather than bootstrapping.
    assert stats["bootstraps"] == 1
    assert any(f"frame rejected ({reason})" in r.getMessage() for r in caplog.records)


async def test_rows_moved_between_frames_fail_the_aead(served: Served) -> None:
    """An attacker holding the HMAC key (not the AEAD key) moves one frame's
    encrypted rows into another and signs the result: the associated data
    binds rows to their frame, so AES-GCM refuses them."""
    previous: list[pb.Frame] = []

    def splice(f: pb.Frame, _rest: Iterator[pb.Frame]) -> list[pb.Frame]:
        donor = previous[-2]  # the data frame before this one
        g = copy(f)
        g.sealed_rows, g.aead_nonce = donor.sealed_rows, donor.aead_nonce
        sealer = served.sealer(g.key_epoch)
        g.watermark = frame_watermark(sealer, g)
        # With the HMAC key the attacker can bind the frame to the call too.
        g.binding = bind_frame(sealer, g.subscription, g.sequence, g.watermark)
        return [g]

    def attack(srv: Tampering, call: int, frames: Iterator[pb.Frame]) -> Iterator[pb.Frame]:
        inner = on_target("bootstrap", splice)
        yield from inner(srv, call, iter_recording(frames, previous))

    servicer, stats = await attacked(served, attack, "bootstrap")
    assert servicer.tampered == 1
    assert stats["frames_rejected_by_reason"] == {"sealed-rows": 1}
    assert stats["bootstraps"] == 1


def iter_recording(frames: Iterator[pb.Frame], into: list[pb.Frame]) -> Iterator[pb.Frame]:
    for f in frames:
        if f.count:
            into.append(f)
        yield f


async def test_frames_from_another_call_are_refused(served: Served) -> None:
    """A recorded bootstrap replayed, signatures intact, into a later call
    (as to roll a replica back) is refused: frames name their call."""

    def attack(srv: Tampering, call: int, frames: Iterator[pb.Frame]) -> Iterator[pb.Frame]:
        if call == 1:
            yield from on_target("bootstrap", drop)(srv, call, frames)
        elif call == 2:
            srv.tampered += 1
            first = next(frames)
            assert first.sequence == 1
            yield srv.sent[0]  # call 1's first frame: same sequence, valid watermark
        else:
            yield from frames

    servicer, stats = await attacked(served, attack, "bootstrap")
    assert servicer.tampered == 2 and servicer.calls >= 3
    assert stats["frames_rejected_by_reason"] == {"sequence": 1, "replayed": 1}
    assert stats["bootstraps"] == 1


async def test_frame_of_an_expired_epoch_is_refused(served: Served) -> None:
    """After the keys rotate, a genuine frame of the old epoch replayed into
    the stream is refused as expired, and the driver carries on."""

    def attack(srv: Tampering, call: int, frames: Iterator[pb.Frame]) -> Iterator[pb.Frame]:
        old = None
        for f in frames:
            if f.count and f.key_epoch == 1 and old is None:
                old = f
            if call == 1 and f.key_epoch == 2 and f.count and not srv.tampered:
                srv.tampered += 1
                assert old is not None
                yield old
                continue
            yield f

    servicer = Tampering(served.state, attack)
    with served.serve(servicer) as port:
        async with driver_for(port, served.secret_file, max_frame_rows=8, insecure=True) as d:
            await d.wait_ready(timeout=30)
            assert d.stats()["key_epoch"] == 1
            served.keyring.rotate()
            for _ in range(100):  # heartbeats carry the new epoch within a second
                if d.stats()["key_epoch"] == 2:
                    break
                await asyncio.sleep(0.05)
            assert d.stats()["key_epoch"] == 2 and d.stats()["key_rotations"] == 1
            served.write(range(ROWS, ROWS + LIVE), 2)
            for _ in range(300):
                if shows_live(served)(d):
                    break
                await asyncio.sleep(0.05)
            stats = d.stats()
            names = {k: (d.get(TABLE, k) or {}).get("name") for k in served.expected}
    assert names == served.expected
    assert servicer.tampered == 1
    assert stats["frames_rejected_by_reason"] == {"expired-epoch": 1}
    assert stats["key_epoch"] == 2 and stats["bootstraps"] == 1


# -- the attacker on the wire -------------------------------------------------


def flip_at(offset: int) -> Mutator:
    def mutate(at: int, data: bytes) -> bytes:
        if at <= offset < at + len(data):
            b = bytearray(data)
            b[offset - at] ^= 0x20
            return bytes(b)
        return data

    return mutate


def drop_at(offset: int, n: int = 7) -> Mutator:
    def mutate(at: int, data: bytes) -> bytes:
        if at <= offset < at + len(data):
            i = offset - at
            return data[:i] + data[i + n :]
        return data

    return mutate


def repeat_at(offset: int, n: int = 64) -> Mutator:
    def mutate(at: int, data: bytes) -> bytes:
        if at <= offset < at + len(data):
            i = offset - at
            return data[: i + n] + data[i : i + n] + data[i + n :]
        return data

    return mutate


WIRE_FAULTS = {"flip": flip_at, "drop": drop_at, "repeat": repeat_at}


async def bytes_to_sync(s: Served, port: int, **config: Any) -> int:
    """How many bytes the server sends a driver until its replica is ready."""
    total = 0

    def count(at: int, data: bytes) -> bytes:
        nonlocal total
        total = max(total, at + len(data))
        return data

    proxy = Proxy(port)
    try:
        proxy.mutate_next(count)
        await run_driver(s, proxy.port, lambda d: True, **config)
    finally:
        proxy.close()
    return total


@pytest.mark.parametrize("fault", list(WIRE_FAULTS))
async def test_plaintext_wire_faults_never_reach_the_replica(served: Served, fault: str) -> None:
    """On the plaintext path nothing but the frame checks stands between the
    wire and the replica: bytes flipped, dropped or repeated anywhere in the
    sync either break the connection or fail a frame check, and the driver
    always ends with the store's exact rows."""
    with served.serve(WrapperServicer(served.state)) as port:
        total = await bytes_to_sync(served, port, insecure=True)
        rejected_by: dict[str, int] = {}
        for frac in (0.35, 0.5, 0.65, 0.8, 0.95):
            proxy = Proxy(port)
            try:
                proxy.mutate_next(WIRE_FAULTS[fault](int(total * frac)))
                stats = await run_driver(served, proxy.port, lambda d: True, insecure=True)
            finally:
                proxy.close()
            assert stats["frames_rejected"] + stats["reconnects"] >= 1, f"fault at {frac}"
            assert stats["bootstraps"] == 1
            for k, v in stats["frames_rejected_by_reason"].items():
                rejected_by[k] = rejected_by.get(k, 0) + v
    if fault == "flip":
        # Most of the sync's bytes are sealed vectors and rows: a flipped
        # byte there parses, and only the frame's own checks can catch it.
        assert rejected_by.get("watermark", 0) >= 1, rejected_by


@pytest.mark.parametrize("fault", list(WIRE_FAULTS))
async def test_tls_wire_faults_break_the_connection(
    served: Served, fault: str, certs: CertPaths
) -> None:
    """Under TLS a changed byte never reaches gRPC: the record layer fails,
    the connection drops, and the driver reconnects and syncs."""
    creds = server_credentials(served.state.cfg)
    tls = {"tls_ca_file": certs.ca_cert, "tls_server_name": "localhost"}
    with served.serve(WrapperServicer(served.state), creds) as port:
        total = await bytes_to_sync(served, port, **tls)
        for frac in (0.5, 0.9):
            proxy = Proxy(port)
            try:
                proxy.mutate_next(WIRE_FAULTS[fault](int(total * frac)))
                stats = await run_driver(served, proxy.port, lambda d: True, **tls)
            finally:
                proxy.close()
            assert stats["frames_rejected"] == 0
            assert stats["reconnects"] >= 1 and stats["bootstraps"] == 1
