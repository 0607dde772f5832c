"""The gRPC face of the wrapper (serve): Challenge, Hello, Subscribe, Write,
Health, over TLS (optionally mutual) unless configured insecure.

Kept thin: authentication rules live in wrapper/auth.py, key epochs in
wrapper/keyring.py, what a Subscribe call streams in wrapper/subscription.py,
keys in prism.fabric.
`create_server()` binds and returns the port, so tests can ask for port 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import numpy as np

from prism.fabric import FRAME_FORMATS, PROTOCOL_VERSION
from prism.fabric import auth as handshake
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.errorkinds import GRPC_STATUS, ErrorKind, refusal_metadata
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.sealing import Sealer
from prism.fabric.tablenames import qualify
from prism.wrapper.auth import Authenticator, AuthFailure, Session
from prism.wrapper.config import TableConfig, WrapperConfig
from prism.wrapper.errors import ConfigError
from prism.wrapper.framecache import FrameCache
from prism.wrapper.keyring import Keyring
from prism.wrapper.metrics import WrapperMetrics, store_bytes
from prism.wrapper.pipeline import Pipeline
from prism.wrapper.sources.flavor import describe_point
from prism.wrapper.store import ReaderPool, Store, free_bytes
from prism.wrapper.subscription import (
    Prebuilds,
    SendWatchdog,
    ServeScope,
    frame_format_for,
    frame_rows,
    subscription,
)
from prism.wrapper.writeplan import WriteError
from prism.wrapper.writes import WriteExecutor

log = logging.getLogger("prism.wrapper.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MIN_SUBSCRIPTION, MAX_SUBSCRIPTION = 16, 64
CAPABILITIES = (
    "frames-v2",
    "catch-up",
    "bootstrap",
    "text-embedder",
    "key-rotation",
    "write-batch",
    "write-stream",
)
# Requests per WriteBatch call (a driver sends at most 64; see driver/link.py).
MAX_WRITE_BATCH = 1024
# How long a Hello that arrives before the tables are discovered waits for
# them before it is refused (UNAVAILABLE, the driver retries).
HELLO_DISCOVERY_WAIT_S = 10.0


@dataclass
class WrapperState:
    cfg: WrapperConfig
    store: Store
    pipeline: Pipeline
    auth: Authenticator
    keyring: Keyring
    writes: WriteExecutor | None = None
    metrics: WrapperMetrics = field(default_factory=WrapperMetrics)
    auth_lock: threading.Lock = field(default_factory=threading.Lock)
    frames: FrameCache | None = None  # shared frames; sized from server.frame_cache_mb
    readers: ReaderPool | None = None  # store readers for Subscribe calls and frame builds
    watchdog: SendWatchdog = field(default_factory=SendWatchdog)
    prebuilds: Prebuilds = field(default_factory=Prebuilds)  # segments sealed during a sync
    write_idle: SendWatchdog | None = None  # ends WriteStream calls that send nothing
    _sealers: dict[tuple[bytes, str, int, int], Sealer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames is None:
            mb = 1024 * 1024
            self.frames = FrameCache(
                int(self.cfg.server.frame_cache_mb * mb),
                spill_bytes=int(self.cfg.server.frame_spill_mb * mb),
                spill_behind_bytes=int(self.cfg.server.frame_spill_behind_mb * mb),
                spill_dir=self.store.path.parent,
            )
        if self.readers is None:
            self.readers = ReaderPool(self.store.path)
        if self.write_idle is None:
            self.write_idle = SendWatchdog(
                self.cfg.server.write_stream_idle_seconds,
                "ending a write stream that sent nothing in %.0fs",
            )

    def sealer(self, secret: bytes, tenant: str, epoch: int, dim: int) -> Sealer:
        k = (secret, tenant, epoch, dim)
        s = self._sealers.get(k)
        if s is None:
            if len(self._sealers) > 256:  # old epochs are never asked for again
                self._sealers.clear()
            s = self._sealers[k] = Sealer(derive_epoch_keys(secret, tenant, epoch), dim)
        return s

    def matrices(self, tables: Sequence[TableConfig]) -> dict[str, np.ndarray]:
        """The projection matrix of each of `tables` that has vectors, for
        resolving stored vector references when frames are built."""
        out: dict[str, np.ndarray] = {}
        for t in tables:
            m = self.pipeline.vectorizer.matrix(t.name)
            if m is not None:
                out[t.name] = m
        return out

    def wait_for_head(self, position: int, timeout: float) -> bool:
        store = self.store
        with store.changed:
            # A staged commit wakes the call too: it seals its segment while
            # the commit syncs (subscription.Call.prebuild).
            return store.changed.wait_for(
                lambda: store.meta.head != position or store.staged is not None, timeout
            )


def peer_host(peer: str) -> str:
    """The client address of a gRPC peer string ("ipv4:1.2.3.4:5678",
    "ipv6:[::1]:5678"), without the port: failed attempts count per host."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, _port = rest.rpartition(":")
        return host.strip("[]") or rest
    return peer


def peer_identities(context: grpc.ServicerContext) -> list[str]:
    """The CN and SAN values of a verified client certificate (mTLS), if any."""
    ctx: Mapping[str, Iterable[bytes]] = context.auth_context()  # type: ignore[assignment]
    out = []
    for k in ("x509_common_name", "x509_subject_alternative_name"):
        out += [v.decode("utf-8", "replace") for v in ctx.get(k, [])]
    return out


T = TypeVar("T")


class WrapperServicer(pb_grpc.WrapperServiceServicer):
    def __init__(self, state: WrapperState) -> None:
        self.state = state

    def _authed(self, context: grpc.ServicerContext, what: str, fn: Callable[[], T]) -> T:
        """Run an Authenticator call; refuse the RPC, logged with the peer,
        when it fails."""
        try:
            with self.state.auth_lock:
                return fn()
        except AuthFailure as exc:
            self._refuse(context, what, exc)

    def _refuse(self, context: grpc.ServicerContext, what: str, exc: AuthFailure) -> NoReturn:
        self._count_refusal(context, what, exc)
        context.set_trailing_metadata(refusal_metadata(exc.kind))
        context.abort(GRPC_STATUS[exc.kind], str(exc))

    def _count_refusal(self, context: grpc.ServicerContext, what: str, exc: AuthFailure) -> None:
        log.warning("%s refused: %s", what, exc, extra={"peer": context.peer(), "kind": exc.kind})
        self.state.metrics.refused(what, exc.kind.value)

    def _still_valid(self, token: bytes) -> bool:
        with self.state.auth_lock:
            valid = self.state.auth.still_valid(token)
        if not valid:
            log.warning("ending a stream whose session expired or whose secret was retired")
        return valid

    def _check_version(self, version: int, context: grpc.ServicerContext) -> None:
        if version != PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {version} not supported; this wrapper speaks {PROTOCOL_VERSION}",
            )

    def _session(
        self, request: pb.SubscribeRequest | pb.WriteRequest, context: grpc.ServicerContext
    ) -> Session:
        """The call's session: for the request's tenant, and MAC'd with its key."""
        host = peer_host(context.peer())
        return self._authed(
            context,
            "call",
            lambda: self.state.auth.session(request.session, request.tenant_id, host, request),
        )

    def Challenge(
        self, request: pb.ChallengeRequest, context: grpc.ServicerContext
    ) -> pb.ChallengeResponse:
        self._check_version(request.protocol_version, context)
        host = peer_host(context.peer())
        nonce = self._authed(
            context, "challenge", lambda: self.state.auth.challenge(request.tenant_id, host)
        )
        return pb.ChallengeResponse(server_nonce=nonce)

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloResponse:
        self._check_version(request.protocol_version, context)
        st = self.state
        host = peer_host(context.peer())
        identities = peer_identities(context)
        tenant_id = request.tenant_id
        token, session, secret = self._authed(
            context,
            "hello",
            lambda: st.auth.hello(
                tenant_id,
                request.server_nonce,
                request.client_nonce,
                request.proof,
                identities,
                host,
            ),
        )
        if session.secret_index > 0:
            log.warning(
                "driver authenticated with a retiring secret",
                extra={"peer": context.peer(), "tenant": tenant_id},
            )
        tables = []
        assert st.readers is not None
        reader = st.readers.get()
        try:
            with reader.snapshot() as meta:
                stored = reader.table_columns() if meta.snapshot_done else {}
        finally:
            st.readers.put(reader)
        if not stored and len(st.pipeline.shapes) < len(st.cfg.tables):
            # A driver must not learn an empty schema and keep it. Discovery
            # takes a moment after the server listens: wait for it rather than
            # send the driver into its reconnect backoff (up to 5 s).
            st.pipeline.status.discovered.wait(HELLO_DISCOVERY_WAIT_S)
            if len(st.pipeline.shapes) < len(st.cfg.tables):
                context.set_trailing_metadata(refusal_metadata(ErrorKind.UNAVAILABLE))
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the wrapper is starting: its tables are not discovered yet",
                )
        for t in st.cfg.tables_of(tenant_id):
            info = json.loads(stored[t.name]) if t.name in stored else None
            shape = st.pipeline.shapes.get(t.name)
            cols = info["columns"] if info else (list(shape.columns) if shape else [])
            keyc = info["key_columns"] if info else (list(shape.key_columns) if shape else [])
            source = (
                f"column:{t.vector_column}"
                if t.vector_column
                else "text:" + ",".join(t.text_columns)
                if t.text_columns
                else ""
            )
            tables.append(
                pb.TableSchema(
                    name=t.name,
                    columns=[
                        pb.Column(name=c, type_name=ty, is_key=c in keyc)
                        for c, ty in cols
                        if c != t.hidden_column
                    ],
                    key_columns=keyc,
                    has_vectors=t.has_vectors,
                    vector_source=source,
                    text_columns=list(t.repr_columns),
                    source_dim=st.cfg.source_dim(t) if t.has_vectors else 0,
                    vector_dim=st.cfg.table_dim(t),
                    writable=t.writable,
                    writable_columns=list(t.writable_columns),
                    indexes=list(t.indexes),
                )
            )
        keys = st.keyring.get(tenant_id)
        nonces = (request.server_nonce, request.client_nonce)
        log.info("driver authenticated", extra={"peer": context.peer(), "tenant": tenant_id})
        return pb.HelloResponse(
            protocol_version=PROTOCOL_VERSION,
            stream_id=meta.stream_id,
            tables=tables,
            key_epoch=keys.epoch,
            key_proof=handshake.server_proof(secret, tenant_id, *nonces),
            capabilities=list(CAPABILITIES),
            head_position=meta.head,
            retention_floor=meta.retention_floor,
            text_embedder_dim=st.cfg.vectors.text_dim,
            session=token,
            projection_key=handshake.wrap_projection_key(
                secret, tenant_id, *nonces, keys.projection_key
            ),
        )

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Frame]:
        """The stream as Frame messages, for code that wants to look at them
        (tools, tests that play the attacker). The server itself registers
        subscribe_bytes, which sends the same frames without parsing them."""
        for data in self.subscribe_bytes(request, context):
            yield pb.Frame.FromString(data)

    def subscribe_bytes(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Subscribe's frames as the bytes gRPC sends: shared, sealed frames
        with this call's envelope appended."""
        st = self.state
        tenant_id = request.tenant_id
        session = self._session(request, context)
        if not MIN_SUBSCRIPTION <= len(request.subscription) <= MAX_SUBSCRIPTION:
            st.metrics.refused("subscribe", "invalid-subscription")
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"subscription must be {MIN_SUBSCRIPTION}-{MAX_SUBSCRIPTION} random bytes, "
                f"got {len(request.subscription)}",
            )
        frame_format = frame_format_for(request.frame_format)
        if frame_format is None:
            st.metrics.refused("subscribe", "frame-format")
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"frame_format {request.frame_format} is older than any this wrapper writes "
                f"({', '.join(map(str, sorted(FRAME_FORMATS)))}): upgrade prismlib on the app node",
            )
        secret = st.auth.tenants[tenant_id].secrets[session.secret_index]
        tables = st.cfg.tables_of(tenant_id)
        scope = ServeScope(
            tenant_id=tenant_id,
            tables=tuple(t.name for t in tables),
            dims={t.name: st.cfg.table_dim(t) for t in tables},
            sealer=lambda epoch, dim: st.sealer(secret, tenant_id, epoch, dim),
            epoch=lambda: st.keyring.epoch(tenant_id),
            secret_id=hashlib.sha256(b"prism/serve-scope\0" + secret).digest()[:16],
            max_rows=frame_rows(request.max_frame_rows),
            frame_format=frame_format,
            matrices=st.matrices(tables),
            presealed=st.writes.presealed if st.writes is not None else None,
        )
        log.info(
            "subscriber",
            extra={
                "peer": context.peer(),
                "from": request.from_position,
                "stream": request.stream_id,
            },
        )
        assert st.frames is not None and st.readers is not None
        ended = st.metrics.subscribed(tenant_id)
        sent = st.metrics.sender(tenant_id)
        frames = st.watchdog.guard(
            subscription(
                scope,
                st.frames,
                st.readers,
                request.stream_id,
                request.from_position,
                request.subscription,
                st.wait_for_head,
                lambda: context.is_active() and self._still_valid(request.session),
                current=lambda: st.store.meta,
                recent=st.store.recent,
                staged=lambda: st.store.staged,
                wait_durable=st.store.wait_durable,
                wait_unstaged=st.store.wait_unstaged,
                prebuilds=st.prebuilds,
            ),
            context.cancel,
            context.peer(),
        )
        try:
            for data in frames:
                sent()
                yield data
        finally:
            # Close the frames now (their segment and reader with them): a for
            # loop left by GeneratorExit does not.
            frames.close()
            ended()

    def Write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> pb.WriteResponse:
        self._authorize_write(request, context)
        (result,) = self._execute([request], context)
        if isinstance(result, WriteError):
            context.set_trailing_metadata(refusal_metadata(result.kind, result.sqlstate))
            context.abort(GRPC_STATUS[result.kind], str(result))
        return result

    def WriteBatch(
        self, request: pb.WriteBatchRequest, context: grpc.ServicerContext
    ) -> pb.WriteBatchResponse:
        """Several Write requests in one call; each its own result (see the proto)."""
        n = len(request.requests)
        if not 1 <= n <= MAX_WRITE_BATCH:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a write batch holds 1 to {MAX_WRITE_BATCH} requests, this one {n}",
            )
        for one in request.requests:
            self._authorize_write(one, context)
        out = pb.WriteBatchResponse()
        _add_results(out.results, self._execute(list(request.requests), context))
        return out

    def WriteStream(
        self, request_iterator: Iterator[pb.WriteStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.WriteStreamResponse]:
        """Messages of write requests on one call, run in order on this
        call's thread, each answered before the next is read (see the
        proto): no hand-off to another thread on a write's path."""
        assert self.state.write_idle is not None
        messages = self.state.write_idle.arrivals(request_iterator, context.cancel, context.peer())
        for message in messages:
            yield self._stream_message(message, context)

    def _stream_message(
        self, message: pb.WriteStreamRequest, context: grpc.ServicerContext
    ) -> pb.WriteStreamResponse:
        """One WriteStream message's answer: a WriteBatch's results, except
        that a refusal of the message (its size, or the authentication of any
        request) is every result's instead of the call's."""
        out = pb.WriteStreamResponse(call_id=message.call_id)
        requests = list(message.requests)
        n = len(requests)
        if not 1 <= n <= MAX_WRITE_BATCH:
            detail = f"a write stream message holds 1 to {MAX_WRITE_BATCH} requests, this one {n}"
            for _ in requests:
                out.results.add(error_kind=ErrorKind.INVALID.value, error_message=detail)
            return out
        for one in requests:
            refused = self._write_auth_failure(one, context)
            if refused is not None:
                what, failure = refused
                self._count_refusal(context, what, failure)
                for _ in requests:
                    out.results.add(error_kind=failure.kind.value, error_message=str(failure))
                return out
        _add_results(out.results, self._execute(requests, context))
        return out

    def _execute(
        self, requests: list[pb.WriteRequest], context: grpc.ServicerContext
    ) -> list[pb.WriteResponse | WriteError]:
        """Run authorized write requests together: each one's ack or refusal,
        timed and counted, refusals logged with the peer."""
        st = self.state
        started = time.monotonic()
        results: list[pb.WriteResponse | WriteError]
        if st.writes is None:
            refusal = WriteError(ErrorKind.PERMISSION, "no table is writable for this tenant")
            results = [refusal] * len(requests)
        else:
            results = st.writes.execute_many(requests)
        for result in results:
            kind = result.kind.value if isinstance(result, WriteError) else "ok"
            st.metrics.write_seconds.labels(kind).observe(time.monotonic() - started)
            if isinstance(result, WriteError):
                st.metrics.refused("write", kind)
                level = logging.WARNING if result.kind == ErrorKind.PERMISSION else logging.INFO
                log.log(
                    level,
                    "write refused: %s",
                    result,
                    extra={
                        "peer": context.peer(),
                        "kind": result.kind,
                        "sqlstate": result.sqlstate,
                    },
                )
        return results

    def _authorize_write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> None:
        """The request's session, and every table it names of that session's
        tenant; the call is refused otherwise."""
        refused = self._write_auth_failure(request, context)
        if refused is not None:
            self._refuse(context, *refused)

    def _write_auth_failure(
        self, request: pb.WriteRequest, context: grpc.ServicerContext
    ) -> tuple[str, AuthFailure] | None:
        """Why the request may not run, with what was refused ("call": its
        session, "write": a table of another tenant), or None."""
        host = peer_host(context.peer())
        try:
            with self.state.auth_lock:
                session = self.state.auth.session(request.session, request.tenant_id, host, request)
        except AuthFailure as exc:
            return "call", exc
        for op in request.ops:
            try:
                owner = self.state.cfg.table(qualify(op.table)).tenant
            except (KeyError, ValueError):
                continue  # not a configured table: the executor refuses it by name
            if owner != session.tenant:
                return "write", AuthFailure(
                    ErrorKind.WRONG_TENANT,
                    f"table {op.table!r} belongs to another tenant than {session.tenant!r}",
                )
        return None

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        st = self.state
        meta = st.store.meta
        status = st.pipeline.status
        state = {"STREAMING": "SERVING", "FAILED": "DEGRADED", "RETRYING": "DEGRADED"}.get(
            status.state, status.state
        )
        counters = {
            "transactions": status.transactions,
            "changes": status.changes,
            "snapshot_rows": status.snapshot_rows,
            "retries": status.retries,
            "store_full": status.store_full,
            "subscribers": st.metrics.subscriber_count,
            "frames_sent": st.metrics.frames_sent_count,
            "store_bytes": store_bytes(st.store.path),
            # live segments cut from the rows just committed, not read back
            "recent_windows": st.store.recent.served,
        }
        if st.writes is not None:
            counters.update(st.writes.counters())
        free = free_bytes(st.store.path)
        if free is not None:
            counters["store_disk_free_bytes"] = free
        for t in st.cfg.tenants:
            counters[f"key_epoch:{t.id}"] = st.keyring.epoch(t.id)
        for (table, reason), n in dict(st.pipeline.vectorizer.missing).items():
            counters[f"vector_missing:{table}:{reason}"] = n
        if st.frames is not None:
            counters.update(st.frames.counters())
        return pb.HealthResponse(
            status=state,
            counters=counters,
            head_position=meta.head,
            source_position=describe_point(st.cfg.flavor, meta.resume_point),
            stream_id=meta.stream_id,
            last_commit_time_us=meta.last_commit_us,
            detail=status.detail,
        )


def _add_results(out: Any, results: Sequence[pb.WriteResponse | WriteError]) -> None:
    """Each write's ack or refusal as a WriteResult, in order."""
    for result in results:
        if isinstance(result, WriteError):
            out.add(
                error_kind=result.kind.value,
                error_message=str(result),
                sqlstate=result.sqlstate or "",
            )
        else:
            out.add(response=result)


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key} = {path!r}: cannot read it ({exc.strerror})") from None


def server_credentials(cfg: WrapperConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from [tls], or None when server.insecure = true."""
    if cfg.insecure:
        return None
    cert = _read(cfg.tls.cert_file, "tls.cert_file")
    key = _read(cfg.tls.key_file, "tls.key_file")
    ca = cfg.tls.client_ca_file
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=_read(ca, "tls.client_ca_file") if ca else None,
        require_client_auth=bool(ca),
    )


class _Handlers:
    """Stands in for a server to catch the generated method handlers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass

    def add_registered_method_handlers(
        self, _service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = handlers


def add_servicer(servicer: WrapperServicer, server: grpc.Server) -> None:
    """Register the servicer's methods, as the generated
    add_WrapperServiceServicer_to_server does, except that Subscribe sends
    the bytes of subscribe_bytes as they are (no serializer): frames are
    serialized once, when built, not once per call. A servicer that
    overrides Subscribe (a test's attacker) keeps the Frame path."""
    caught = _Handlers()
    pb_grpc.add_WrapperServiceServicer_to_server(servicer, caught)
    handlers = dict(caught.handlers)
    if type(servicer).Subscribe is WrapperServicer.Subscribe:
        handlers["Subscribe"] = grpc.unary_stream_rpc_method_handler(
            servicer.subscribe_bytes,
            request_deserializer=pb.SubscribeRequest.FromString,
            response_serializer=None,
        )
    service = "prism.fabric.v1.WrapperService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def create_server(
    state: WrapperState,
    address: str,
    servicer: WrapperServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int]:
    """Build the server and bind `address` ("host:port", port 0 for any),
    with TLS when ``credentials`` are given. Returns (server, bound port);
    call server.start()."""
    workers = int(os.environ.get("PRISM_GRPC_WORKERS", "64"))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_servicer(servicer or WrapperServicer(state), server)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise ConfigError(f"server.listen_port: cannot bind {address}")
    return server, port
