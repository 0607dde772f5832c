"""The driver's link to the wrapper: channels, the handshake, and the Write
call.

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
import logging
import os
from dataclasses import dataclass
from typing import TypeVar

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
)
from prism.fabric import PROTOCOL_VERSION
from prism.fabric import auth as handshake
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.errors import AuthError, PrismError
from prism.fabric.keys import load_secret

log = logging.getLogger("prism.driver")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
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
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
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
        """One Write call on the current session (a new one when there is
        none yet, or once when the wrapper forgot it). Refusals come back
        as typed WriteErrors; an answer lost on the way as
        WriteOutcomeUnknownError carrying `request_id`, to retry with."""
        if self._write_channel is None:
            self._write_channel = self.channel()
        stub = pb_grpc.WrapperServiceStub(self._write_channel)
        for attempt in (1, 2):
            login = self.login or await self.handshake(stub)
            try:
                response: pb.WriteResponse = await stub.Write(
                    login.signed(
                        pb.WriteRequest(
                            protocol_version=PROTOCOL_VERSION,
                            tenant_id=self.config.tenant_id,
                            ops=ops,
                            request_id=request_id,
                            session=login.hello.session,
                        )
                    ),
                    timeout=self.config.write_timeout_s,
                )
                return response
            except grpc.aio.AioRpcError as exc:
                err = map_write_error(exc)
                if isinstance(err, SessionExpiredError) and attempt == 1:
                    self.login = None  # the wrapper restarted: authenticate again
                    continue
                if isinstance(err, WriteOutcomeUnknownError):
                    err.request_id = request_id
                raise err from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def close(self) -> None:
        if self._write_channel is not None:
            await self._write_channel.close(None)
            self._write_channel = None
