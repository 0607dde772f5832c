"""The driver's link to the wrapper: channels, the handshake, and the Write,
WriteBatch and WriteStream calls.

Below the subscription (driver/subscription.py) and the public write calls
(driver/api.py), which share one session: the subscription's handshake
opens it, and writes reuse it (saying Hello again themselves when the
wrapper no longer knows it). The handshake is challenge and response over
the tenant secret (prism.fabric.auth): the driver proves it holds the
secret, checks that the wrapper holds it too, and unwraps the tenant's
projection key. gRPC errors become typed DriverErrors here and in
driver/errors.py, nowhere else.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from prism.driver import tlscheck
from prism.driver.config import DriverConfig
from prism.driver.errors import (
    AuthenticationError,
    DriverError,
    SessionExpiredError,
    TlsMismatchError,
    WriteOutcomeUnknownError,
    map_grpc_error,
    map_write_error,
    outcome_unknown,
    write_refusal,
)
from prism.driver.writebatch import WriteCoalescer
from prism.driver.writestream import CallDeadline, WriteStream
from prism.fabric import PROTOCOL_VERSION
from prism.fabric import auth as handshake
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.errorkinds import ErrorKind, kind_in
from prism.fabric.errors import AuthError, PrismError
from prism.fabric.keys import load_secret

log = logging.getLogger("prism.driver")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
WRITE_BATCH = "write-batch"  # the wrapper capability (HelloResponse) of WriteBatch calls
WRITE_STREAM = "write-stream"  # ... and of WriteStream calls
# How long past its deadline a write call may stay unanswered before the
# driver cancels it itself (see _answer).
CALL_GRACE_S = 5.0
# The TLS diagnosis after a failed connection takes one round trip or two;
# past this (a stalled link) the driver just retries as before.
DIAGNOSE_MAX_S = 5.0
_Req = TypeVar("_Req", pb.SubscribeRequest, pb.WriteRequest)
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    # Each channel owns its connection: after a rejected frame the driver
    # drops the channel, and the next one must not inherit the suspect
    # connection from gRPC's process-wide subchannel pool.
    ("grpc.use_local_subchannel_pool", 1),
]


def may_be_tls_mismatch(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a failed handshake call may have failed for a TLS setting: it
    is UNAVAILABLE, and not a refusal that names its kind, which the wrapper
    itself sent over this very connection (say, while it is starting). The
    diagnosis waits up to DIAGNOSE_MAX_S for a healthy wrapper's reply."""
    trailing: Any = exc.trailing_metadata() or ()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and kind_in(trailing) is None


@dataclass(frozen=True)
class Login:
    """One authenticated session: Hello's answer, the tenant's projection key
    and the key that MACs the session's requests."""

    hello: pb.HelloResponse
    projection_key: bytes
    session_key: bytes

    def signed(self, request: _Req) -> _Req:
        request.mac = handshake.request_mac(self.session_key, request)
        return request


class Link:
    def __init__(self, config: DriverConfig) -> None:
        self.config = config
        self.secret = load_secret(config.secret_file)
        self.login: Login | None = None  # the latest session, which writes reuse
        self._write_channel: grpc.aio.Channel | None = None
        # Made once per channel: a stub builds a callable for every method of
        # the service, 3% of the driver's time per write when made per call.
        self._write_stub_: pb_grpc.WrapperServiceStub | None = None
        self._writes: WriteCoalescer | None = None
        self._stream: WriteStream | None = None

    # Lone writes as messages on a WriteStream call kept open (see
    # driver/writestream.py); False: every write is a Write or WriteBatch call.
    write_stream = True

    def reload_secret(self) -> None:
        """Read the secret file again before each subscription handshake, so a
        secret rotated on disk is picked up at the next reconnect (the wrapper
        cuts streams of a retired secret) without restarting the app."""
        try:
            secret = load_secret(self.config.secret_file)
        except PrismError as exc:
            log.warning("cannot re-read the secret file; keeping the loaded secret: %s", exc)
            return
        if secret != self.secret:
            log.info("the secret file changed: authenticating with the new secret")
            self.secret = secret

    def channel(self) -> grpc.aio.Channel:
        creds = self.config.channel_credentials()
        if creds is None:
            return grpc.aio.insecure_channel(self.config.target, options=_CHANNEL_OPTIONS)
        options = list(_CHANNEL_OPTIONS)
        if self.config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.config.tls_server_name))
        return grpc.aio.secure_channel(self.config.target, creds, options=options)

    async def handshake(self, stub: pb_grpc.WrapperServiceStub) -> Login:
        """Challenge, then Hello with our proof; check the wrapper's proof,
        unwrap the projection key and derive the session key. The new
        session is the one writes use from now on."""
        cfg = self.config
        secret = self.secret
        try:
            challenge = await stub.Challenge(
                pb.ChallengeRequest(protocol_version=PROTOCOL_VERSION, tenant_id=cfg.tenant_id),
                timeout=cfg.connect_timeout_s,
            )
            client_nonce = os.urandom(32)
            server_nonce = challenge.server_nonce
            try:
                proof = handshake.client_proof(secret, cfg.tenant_id, server_nonce, client_nonce)
            except AuthError as exc:
                raise AuthenticationError(f"bad challenge from the wrapper: {exc}") from None
            hello = await stub.Hello(
                pb.HelloRequest(
                    protocol_version=PROTOCOL_VERSION,
                    tenant_id=cfg.tenant_id,
                    capabilities=["frames-v2"],
                    client_nonce=client_nonce,
                    server_nonce=server_nonce,
                    proof=proof,
                ),
                timeout=cfg.connect_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if may_be_tls_mismatch(exc):
                await self._raise_if_tls_mismatch(exc)
            raise map_grpc_error(exc, f"authenticating to {cfg.target}") from exc
        if hello.protocol_version != PROTOCOL_VERSION:
            raise DriverError(
                f"wrapper speaks protocol {hello.protocol_version}, driver {PROTOCOL_VERSION}"
            )
        expected = handshake.server_proof(secret, cfg.tenant_id, server_nonce, client_nonce)
        try:
            if not handshake.proof_matches(expected, hello.key_proof):
                raise AuthError("server proof does not match")
            projection_key = handshake.unwrap_projection_key(
                secret, cfg.tenant_id, server_nonce, client_nonce, hello.projection_key
            )
        except AuthError as exc:
            raise AuthenticationError(
                f"the wrapper at {cfg.target} does not hold the same secret for tenant "
                f"{cfg.tenant_id!r} ({exc}): check secret_file {cfg.secret_file}",
                retriable=False,
            ) from None
        key = handshake.session_key(secret, cfg.tenant_id, server_nonce, client_nonce)
        self.login = Login(hello, projection_key, key)
        return self.login

    async def _raise_if_tls_mismatch(self, exc: grpc.aio.AioRpcError) -> None:
        """A connection that failed may have failed for good: a TLS setting
        that does not fit the wrapper's. Ask (within connect_timeout_s) and
        raise that as a permanent TlsMismatchError, so wait_ready() and
        every read say so instead of the driver retrying forever."""
        if "connection refused" in (exc.details() or "").lower():
            return  # nothing listens (yet): a wrapper restarting, not a mismatch
        timeout = min(self.config.connect_timeout_s, DIAGNOSE_MAX_S)
        try:
            cause = await asyncio.wait_for(tlscheck.diagnose(self.config, timeout), timeout)
        except TimeoutError:
            return
        if cause is not None:
            raise TlsMismatchError(
                f"cannot connect to the wrapper at {self.config.target}: {cause} "
                f"(gRPC: {exc.details()})",
                retriable=False,
            ) from exc

    async def write(self, ops: list[pb.WriteOp], request_id: str) -> pb.WriteResponse:
        """One write's ack. Writes that overlap share WriteBatch calls
        (driver/writebatch.py); refusals come back as typed WriteErrors, an
        answer lost on the way as WriteOutcomeUnknownError carrying
        `request_id`, to retry with."""
        if self._writes is None:
            self._writes = WriteCoalescer(self.write_one, self.write_batch)
        return await self._writes.write(ops, request_id)

    def _write_stub(self) -> pb_grpc.WrapperServiceStub:
        if self._write_stub_ is None:  # set with the channel, cleared with it
            self._write_channel = self.channel()
            self._write_stub_ = pb_grpc.WrapperServiceStub(self._write_channel)
        return self._write_stub_

    def _write_request(
        self,
        login: Login,
        ops: list[pb.WriteOp],
        request_id: str,
        into: pb.WriteRequest | None = None,
    ) -> pb.WriteRequest:
        """The signed request of one write, made in `into` when given (a
        message's own request: no copy of the rows into it)."""
        request = pb.WriteRequest() if into is None else into
        request.protocol_version = PROTOCOL_VERSION
        request.tenant_id = self.config.tenant_id
        request.ops.extend(ops)
        request.request_id = request_id
        request.session = login.hello.session
        return login.signed(request)

    async def write_one(self, ops: list[pb.WriteOp], request_id: str) -> pb.WriteResponse:
        """One write on the current session: a message on the open
        WriteStream call when the wrapper has them and no other write is out
        on it, else (and when that call broke) a Write call, which starts a
        new session when there is none yet, or once when the wrapper forgot
        it."""
        stub = self._write_stub()
        login = self.login
        if (
            login is not None
            and self.write_stream
            and WRITE_STREAM in login.hello.capabilities
            and (self._stream is None or not self._stream.busy)
        ):
            if self._stream is None:
                self._stream = WriteStream(stub.WriteStream)
            message = pb.WriteStreamRequest()
            self._write_request(login, ops, request_id, message.requests.add())
            try:
                results = await self._stream.send(
                    message, self.config.write_timeout_s + CALL_GRACE_S
                )
            except WriteOutcomeUnknownError as exc:
                exc.request_id = request_id
                raise
            if results is not None:
                answer = _batch_result(results[0], request_id)
                if not isinstance(answer, DriverError):
                    return answer
                if not isinstance(answer, SessionExpiredError):
                    raise answer
                self.login = None  # the wrapper restarted: a Write call authenticates again
        for attempt in (1, 2):
            login = self.login or await self.handshake(stub)
            try:
                call = stub.Write(
                    self._write_request(login, ops, request_id),
                    timeout=self.config.write_timeout_s,
                )
                response: pb.WriteResponse = await _answer(call, self.config.write_timeout_s)
                return response
            except WriteOutcomeUnknownError as exc:
                exc.request_id = request_id
                raise
            except grpc.aio.AioRpcError as exc:
                err = map_write_error(exc)
                if isinstance(err, SessionExpiredError) and attempt == 1:
                    self.login = None  # the wrapper restarted: authenticate again
                    continue
                if isinstance(err, WriteOutcomeUnknownError):
                    err.request_id = request_id
                raise err from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def write_batch(
        self, items: Sequence[tuple[list[pb.WriteOp], str]]
    ) -> list[pb.WriteResponse | DriverError]:
        """Several writes in one WriteBatch call: each write's ack or typed
        error, in order (never raises for them). A wrapper without the
        call gets them as concurrent Write calls."""
        stub = self._write_stub()
        for attempt in (1, 2):
            login = self.login or await self.handshake(stub)
            if WRITE_BATCH not in login.hello.capabilities:
                return list(
                    await asyncio.gather(*(self._write_result(ops, rid) for ops, rid in items))
                )
            request = pb.WriteBatchRequest(
                requests=[self._write_request(login, ops, rid) for ops, rid in items]
            )
            try:
                call = stub.WriteBatch(request, timeout=self.config.write_timeout_s)
                response: pb.WriteBatchResponse = await _answer(call, self.config.write_timeout_s)
            except WriteOutcomeUnknownError as exc:
                return [_own_copy(exc, rid) for _, rid in items]
            except grpc.aio.AioRpcError as exc:
                err = map_write_error(exc)
                if isinstance(err, SessionExpiredError) and attempt == 1:
                    self.login = None
                    continue
                return [_own_copy(err, rid) for _, rid in items]
            if len(response.results) != len(items):
                lost = WriteOutcomeUnknownError(
                    f"the wrapper answered {len(response.results)} results for "
                    f"{len(items)} writes - retry each with its request_id"
                )
                return [_own_copy(lost, rid) for _, rid in items]
            return [
                _batch_result(r, rid) for (_, rid), r in zip(items, response.results, strict=True)
            ]
        raise AssertionError("unreachable: the second attempt returns")

    async def _write_result(
        self, ops: list[pb.WriteOp], request_id: str
    ) -> pb.WriteResponse | DriverError:
        try:
            return await self.write_one(ops, request_id)
        except DriverError as exc:
            return exc

    async def close(self) -> None:
        if self._writes is not None:
            await self._writes.close()
            self._writes = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._write_channel is not None:
            await self._write_channel.close(None)
            self._write_channel = None
            self._write_stub_ = None


def _own_copy(err: DriverError, request_id: str) -> DriverError:
    """Each write of a failed batch gets an exception of its own (each caller
    raises it), with its request_id when the outcome is unknown."""
    mine = copy.copy(err)
    if isinstance(mine, WriteOutcomeUnknownError):
        mine.request_id = request_id
    return mine


def _batch_result(result: pb.WriteResult, request_id: str) -> pb.WriteResponse | DriverError:
    if result.HasField("response"):
        return result.response
    try:
        kind: ErrorKind | None = ErrorKind(result.error_kind)
    except ValueError:
        kind = None  # a kind from a newer wrapper: nothing says whether it ran
    err = write_refusal(kind, result.error_message or result.error_kind, result.sqlstate)
    if isinstance(err, WriteOutcomeUnknownError):
        err.request_id = request_id
    return err


async def _answer(call: Any, timeout: float) -> Any:
    """The response of a unary write call. gRPC ends the call at its deadline
    itself; but a call whose status never reached asyncio (grpc.aio status
    tasks were seen failing with a TypeError in a CI run) would be awaited
    forever, and every write queued behind it too. Past the deadline and a grace the
    driver cancels it through gRPC (CallDeadline), and the write's outcome is unknown."""
    deadline = CallDeadline(call, timeout + CALL_GRACE_S)
    try:
        return await call
    except asyncio.CancelledError:
        if deadline.expired():
            raise outcome_unknown(
                f"Write: no answer {timeout + CALL_GRACE_S:g}s after it was sent"
            ) from None
        raise
    finally:
        deadline.cancel()
