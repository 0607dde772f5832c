"""PrismDriver: the app's replacement for its database connection.

Owns a background subscription task (started on `async with`, cancelled
and awaited on exit) that connects over TLS, authenticates by challenge and
response (and checks that the wrapper holds the same tenant secret),
subscribes from its last applied position, verifies, decrypts and unseals
each frame, follows key rotation from the frames' key epochs, and applies
whole batches to the local Replica. Reads
(`get`, `query`) are answered in process. A failure of the task is raised to
every caller and waiter, never lost in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from prism.driver.config import DriverConfig
from prism.driver.errors import (
    AuthenticationError,
    ConnectionLostError,
    DriverError,
    InvalidWriteError,
    NotReadyError,
    QueryError,
    ReplicaLagError,
    SessionExpiredError,
    WaitTimeoutError,
    WriteOutcomeUnknownError,
    map_grpc_error,
    map_write_error,
)
from prism.driver.follow import Batch, Follower
from prism.driver.replica import Replica, ReplicaFeed, TableReplica
from prism.driver.writes import WriteAck, WriteOp, ack_of, encode_op
from prism.fabric import PROTOCOL_VERSION
from prism.fabric import auth as handshake
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.embedder import TextEmbedder, row_text
from prism.fabric.errors import (
    AuthError,
    ExpiredEpochError,
    FrameError,
    PrismError,
    ReplayedFrameError,
    SealedRowsError,
    SequenceGapError,
    UnknownEpochError,
    WatermarkError,
)
from prism.fabric.frames import open_frame, parse_frame
from prism.fabric.keys import derive_epoch_keys, load_secret
from prism.fabric.payload import decode_key, encode_key, qualify
from prism.fabric.projection import Projection
from prism.fabric.sealing import Sealer

log = logging.getLogger("prism.driver")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# How many key epochs past the newest verified one a frame may claim: the
# wrapper rotates at most once per rotate-keys or rotation period, so more
# means a forged or foreign frame. The driver then resumes and learns the
# wrapper's current epoch from Hello.
MAX_EPOCH_AHEAD = 16
_Req = TypeVar("_Req", pb.SubscribeRequest, pb.WriteRequest)
SUBSCRIBE_METHOD = "/prism.fabric.v1.WrapperService/Subscribe"
# stats()["frames_rejected_by_reason"] keys, most specific first.
_REJECTION_REASONS: tuple[tuple[type[FrameError], str], ...] = (
    (ExpiredEpochError, "expired-epoch"),
    (UnknownEpochError, "unknown-epoch"),
    (WatermarkError, "watermark"),
    (ReplayedFrameError, "replayed"),
    (SealedRowsError, "sealed-rows"),
    (SequenceGapError, "sequence"),
)
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
class Match:
    row_id: Any  # the primary key value (a tuple for composite keys)
    score: float  # exact cosine of grid vectors in the keyed space, in [-1, 1]
    row: dict[str, Any]
    text_repr: str
    table: str


@dataclass(frozen=True)
class TableInfo:
    name: str
    key_columns: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    has_vectors: bool
    vector_source: str
    text_columns: tuple[str, ...]
    source_dim: int  # what query(embedding=...) takes for this table
    vector_dim: int  # after the tenant's keyed projection: what the index holds
    writable: bool = False
    writable_columns: tuple[str, ...] = ()

    @property
    def text_embedded(self) -> bool:
        return self.vector_source.startswith("text:")


@dataclass(frozen=True)
class _Login:
    """One authenticated session: Hello's answer, the tenant's projection key
    and the key that MACs the session's requests."""

    hello: pb.HelloResponse
    projection_key: bytes
    session_key: bytes

    def signed(self, request: _Req) -> _Req:
        request.mac = handshake.request_mac(self.session_key, request)
        return request


class PrismDriver:
    def __init__(self, config: DriverConfig) -> None:
        if not isinstance(config, DriverConfig):
            raise TypeError("PrismDriver(config): expected a DriverConfig")
        self.config = config
        self._secret = load_secret(config.secret_file)
        self._follower = Follower()
        self._feed = ReplicaFeed(Replica({}))
        self._tables: dict[str, TableInfo] = {}
        self._epoch = 0
        self._projection_key = b""
        self._login: _Login | None = None  # the latest session, for writes
        self._rejections: Counter[str] = Counter()
        self._sealers: dict[tuple[int, int], Sealer] = {}
        self._projections: dict[tuple[int, int], Projection] = {}
        self._embedder: TextEmbedder | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()
        self._progress = asyncio.Event()
        self._closed = False
        self._stats = {
            "bootstraps": 0,
            "reconnects": 0,
            "frames_rejected": 0,
            "batches": 0,
            "changes_applied": 0,
            "frames": 0,
            "key_rotations": 0,
        }
        self._last_commit_us = 0
        self._last_error: str | None = None  # the latest transient failure, for stats()
        self._connected = False
        self._write_channel: grpc.aio.Channel | None = None

    # -- lifecycle --------------------------------------------------------
    async def __aenter__(self) -> PrismDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="prism-subscribe")
        self._task.add_done_callback(self._on_task_done)

    async def close(self) -> None:
        self._closed = True
        if self._failure is None:
            self._failure = NotReadyError("the driver is closed")
        self._ready.set()
        self._signal_progress()
        if self._write_channel is not None:
            await self._write_channel.close(None)
            self._write_channel = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PrismError):
                await self._task
        self._task = None

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failure is None:
            self._failure = exc
        self._ready.set()
        self._signal_progress()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._task is None:
            raise NotReadyError("the driver is not started: use `async with PrismDriver(...)`")

    # -- subscription -----------------------------------------------------
    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        first = True
        while True:
            if not first:
                self._stats["reconnects"] += 1
            first = False
            made_progress = False
            try:
                made_progress = await self._session()
            except DriverError as exc:
                if not exc.retriable:
                    log.error("subscription stopped: %s", exc)
                    raise
                self._last_error = str(exc)
                log.warning("link to wrapper lost, reconnecting in %.2fs: %s", delay, exc)
            finally:
                self._connected = False
            if made_progress:
                delay = self.config.reconnect_min_s
            await asyncio.sleep(delay)
            delay = min(self.config.reconnect_max_s, delay * 2)

    def _reload_secret(self) -> None:
        """Read the secret file again before each subscription handshake, so a
        secret rotated on disk is picked up at the next reconnect (the wrapper
        cuts streams of a retired secret) without restarting the app."""
        try:
            secret = load_secret(self.config.secret_file)
        except PrismError as exc:
            log.warning("cannot re-read the secret file; keeping the loaded secret: %s", exc)
            return
        if secret != self._secret:
            log.info("the secret file changed: authenticating with the new secret")
            self._secret = secret
            self._sealers = {}

    def _channel(self) -> grpc.aio.Channel:
        creds = self.config.channel_credentials()
        if creds is None:
            return grpc.aio.insecure_channel(self.config.target, options=_CHANNEL_OPTIONS)
        options = list(_CHANNEL_OPTIONS)
        if self.config.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.config.tls_server_name))
        return grpc.aio.secure_channel(self.config.target, creds, options=options)

    async def _handshake(self, stub: pb_grpc.WrapperServiceStub) -> _Login:
        """Challenge, then Hello with our proof; check the wrapper's proof,
        unwrap the projection key and derive the session key."""
        cfg = self.config
        try:
            challenge = await stub.Challenge(
                pb.ChallengeRequest(protocol_version=PROTOCOL_VERSION, tenant_id=cfg.tenant_id),
                timeout=cfg.connect_timeout_s,
            )
            client_nonce = os.urandom(32)
            server_nonce = challenge.server_nonce
            try:
                proof = handshake.client_proof(
                    self._secret, cfg.tenant_id, server_nonce, client_nonce
                )
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
            raise map_grpc_error(exc, f"authenticating to {cfg.target}") from exc
        if hello.protocol_version != PROTOCOL_VERSION:
            raise DriverError(
                f"wrapper speaks protocol {hello.protocol_version}, driver {PROTOCOL_VERSION}"
            )
        expected = handshake.server_proof(self._secret, cfg.tenant_id, server_nonce, client_nonce)
        try:
            if not handshake.proof_matches(expected, hello.key_proof):
                raise AuthError("server proof does not match")
            projection_key = handshake.unwrap_projection_key(
                self._secret, cfg.tenant_id, server_nonce, client_nonce, hello.projection_key
            )
        except AuthError as exc:
            raise AuthenticationError(
                f"the wrapper at {cfg.target} does not hold the same secret for tenant "
                f"{cfg.tenant_id!r} ({exc}): check secret_file {cfg.secret_file}",
                retriable=False,
            ) from None
        key = handshake.session_key(self._secret, cfg.tenant_id, server_nonce, client_nonce)
        return _Login(hello, projection_key, key)

    async def _session(self) -> bool:
        cfg = self.config
        progressed = False
        async with self._channel() as channel:
            stub = pb_grpc.WrapperServiceStub(channel)
            self._reload_secret()
            login = await self._handshake(stub)
            self._on_hello(login)
            stream_id, position = self._follower.new_call()
            self._feed.restart()
            subscription = os.urandom(16)
            # Raw bytes, parsed by parse_frame: a frame that does not parse is
            # then a counted rejection rather than a None from gRPC.
            subscribe = channel.unary_stream(
                SUBSCRIBE_METHOD,
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=None,
            )
            call = subscribe(
                login.signed(
                    pb.SubscribeRequest(
                        tenant_id=cfg.tenant_id,
                        stream_id=stream_id,
                        from_position=position,
                        max_frame_rows=cfg.max_frame_rows,
                        session=login.hello.session,
                        subscription=subscription,
                    )
                )
            )
            self._connected = True
            try:
                async for raw in call:
                    try:
                        frame = parse_frame(raw)
                        decoded = open_frame(
                            frame,
                            functools.partial(self._sealer, dim=frame.vector_dim),
                            tenant_id=cfg.tenant_id,
                            stream_id=None,
                            subscription=subscription,
                        )
                        batch = self._follower.on_frame(decoded)
                    except FrameError as exc:
                        self._reject(exc)
                        call.cancel()
                        raise ConnectionLostError(f"frame rejected: {exc}") from exc
                    self._stats["frames"] += 1
                    if decoded.key_epoch > self._epoch:
                        self._rotate_to(decoded.key_epoch)
                    if batch is not None:
                        self._apply(batch)
                        progressed = True
                        self._last_error = None
                    elif self._follower.resetting:
                        # Bootstrap frames go to the replica built aside at
                        # once; then let readers in before the next frame
                        # (a buffered stream need not yield by itself).
                        self._feed.bootstrap_frames(self._follower.take_bootstrap_frames())
                        await asyncio.sleep(0)
                    else:
                        self._signal_progress()  # head moved: lag is visible in stats
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self._closed:
                    return progressed
                raise map_grpc_error(exc, "Subscribe") from exc
        raise ConnectionLostError("the wrapper ended the stream")

    def _reject(self, exc: FrameError) -> None:
        """Count and log a frame that failed a check; nothing of it is applied."""
        reason = next(
            (name for cls, name in _REJECTION_REASONS if isinstance(exc, cls)), "malformed"
        )
        self._rejections[reason] += 1
        self._stats["frames_rejected"] += 1
        log.warning(
            "frame rejected (%s); resuming from the last good position: %s",
            reason,
            exc,
            extra={"position": self._follower.position},
        )

    def _sealer(self, epoch: int, dim: int) -> Sealer:
        """The keys of a frame's epoch: the newest verified one or a later one
        (rotation); never an older one (a replay of an old frame)."""
        if epoch < self._epoch:
            raise ExpiredEpochError(
                f"frame sealed with key epoch {epoch}, older than the current epoch {self._epoch}"
            )
        if epoch > self._epoch + MAX_EPOCH_AHEAD:
            raise UnknownEpochError(
                f"frame claims key epoch {epoch}, more than {MAX_EPOCH_AHEAD} past the current "
                f"epoch {self._epoch}"
            )
        s = self._sealers.get((epoch, dim))
        if s is None:
            keys = derive_epoch_keys(self._secret, self.config.tenant_id, epoch)
            s = self._sealers[(epoch, dim)] = Sealer(keys, dim)
        return s

    def _rotate_to(self, epoch: int) -> None:
        """A verified frame of a newer epoch: the wrapper rotated its keys.
        Older epochs are refused from now on."""
        log.info("key epoch %d -> %d", self._epoch, epoch)
        self._epoch = epoch
        self._sealers = {k: v for k, v in self._sealers.items() if k[0] >= epoch}
        self._stats["key_rotations"] += 1

    def _on_hello(self, login: _Login) -> None:
        hello, projection_key = login.hello, login.projection_key
        self._epoch = hello.key_epoch
        self._sealers = {}
        self._login = login  # writes reuse the subscription's session
        if projection_key != self._projection_key:
            self._projection_key = projection_key
            self._projections = {}
        tables = {
            t.name: TableInfo(
                name=t.name,
                key_columns=tuple(t.key_columns),
                columns=tuple((c.name, c.type_name) for c in t.columns),
                has_vectors=t.has_vectors,
                vector_source=t.vector_source,
                text_columns=tuple(t.text_columns),
                source_dim=t.source_dim,
                vector_dim=t.vector_dim,
                writable=t.writable,
                writable_columns=tuple(t.writable_columns),
            )
            for t in hello.tables
        }
        if tables != self._tables:
            shape = Replica.for_tables(
                {
                    n: (t.key_columns, t.text_columns, t.vector_dim if t.has_vectors else 0)
                    for n, t in tables.items()
                },
                self.config.index,
            )
            if self._ready.is_set():
                # Readers keep the replica they have until the bootstrap of
                # the new shape is complete (never an empty one meanwhile).
                self._feed.reshape(shape)
            else:
                self._feed = ReplicaFeed(shape)
            self._follower = Follower()  # a different shape: bootstrap afresh
        self._tables = tables
        for info in tables.values():  # build the keyed projections now, not on a query
            if info.has_vectors:
                self._projection(info)
        if hello.text_embedder_dim:
            self._embedder = TextEmbedder(hello.text_embedder_dim)

    def _apply(self, batch: Batch) -> None:
        # Synchronous on purpose: no await between the first and the last
        # change, so readers on this loop see the batch whole or not at all.
        n = self._feed.apply(batch)
        if batch.reset:
            self._stats["bootstraps"] += 1
        self._follower.committed(batch)
        self._last_commit_us = max(self._last_commit_us, batch.commit_time_us)
        self._stats["batches"] += 1
        self._stats["changes_applied"] += n
        self._ready.set()
        self._signal_progress()

    @property
    def _replica(self) -> Replica:
        """The replica readers see."""
        return self._feed.replica

    def _signal_progress(self) -> None:
        # Wake every waiter, then give later waiters a fresh event: an event
        # left set would make their wait return at once, forever, spinning.
        self._progress.set()
        self._progress = asyncio.Event()

    # -- waiting ----------------------------------------------------------
    @property
    def position(self) -> int:
        """The wrapper position the replica shows (0: nothing yet)."""
        return self._follower.position

    @property
    def stream_id(self) -> str:
        return self._follower.stream_id

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the initial sync is applied; raise the subscription's
        failure (e.g. AuthenticationError) instead if it fails first."""
        self._raise_if_failed()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            last = f"; last error: {self._last_error}" if self._last_error else ""
            raise WaitTimeoutError(f"the initial sync did not finish in {timeout}s{last}") from None
        self._raise_if_failed()

    async def wait_for(self, position: int, timeout: float | None = None) -> None:
        """Return once the replica shows wrapper position `position`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._raise_if_failed()
            if self._ready.is_set() and self._follower.position >= position:
                return
            ev = self._progress
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(
                    f"replica at position {self._follower.position}, not {position}, "
                    f"after {timeout}s"
                )
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except TimeoutError:
                continue

    # -- reads ------------------------------------------------------------
    def _table(self, table: str) -> TableReplica:
        t = self._replica.tables.get(qualify(table))
        if t is None:
            self._raise_if_failed()
            known = ", ".join(sorted(self._replica.tables)) or "none yet"
            raise QueryError(f"unknown table {table!r} (replicated: {known})")
        return t

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key `key` (a tuple for composite keys), or None."""
        t = self._replica.tables.get(table) or self._table(table)
        if type(key) is int and len(t.key_columns) == 1:
            # The common case without the general encoder: encode_key([n])
            # is "[n]" for any int (tests/unit/test_payload.py checks it).
            return t.rows.get(f"[{key}]")
        values = key if isinstance(key, tuple | list) else (key,)
        if len(values) != len(t.key_columns):
            raise QueryError(
                f"table {t.name} has key ({', '.join(t.key_columns)}); got {len(values)} value(s)"
            )
        return t.rows.get(encode_key(list(values)))

    def _query_vector(
        self, info: TableInfo, embedding: np.ndarray | None, text: str | None
    ) -> np.ndarray | None:
        if text is not None:
            if not info.text_embedded or self._embedder is None:
                return None
            raw = self._embedder.embed(text)
        else:
            assert embedding is not None
            if info.text_embedded or embedding.shape[0] != info.source_dim:
                return None
            raw = embedding
        # Not normalized: the index scales the query onto its grid itself.
        return raw.astype(np.float32) @ self._projection(info).matrix

    def _projection(self, info: TableInfo) -> Projection:
        dims = (info.source_dim, info.vector_dim)
        proj = self._projections.get(dims)
        if proj is None:
            proj = Projection(self._projection_key, self.config.tenant_id, *dims)
            self._projections[dims] = proj
        return proj

    async def query(
        self,
        embedding: Sequence[float] | np.ndarray | None = None,
        *,
        text: str | None = None,
        top_k: int = 10,
        threshold: float = 0.0,
        table: str | None = None,
        exact: bool = False,
    ) -> list[Match]:
        """Rows most similar to `embedding` (or to `text`, embedded with the
        built-in text embedder), best first. A row is returned when its
        score is >= threshold, exactly: the score is the cosine of the
        query's and the row's grid vectors in the tenant's keyed space (see
        prism.driver.index). A large table is searched through its
        partitions, which may miss a row; `exact=True` scans every row."""
        self._raise_if_failed()
        if (embedding is None) == (text is None):
            raise QueryError("query: give exactly one of embedding=... or text=...")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise QueryError(f"top_k must be a positive integer, got {top_k!r}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not -1.0 <= threshold <= 1.0
        ):
            raise QueryError(f"threshold must be a number in [-1, 1], got {threshold!r}")
        emb = None
        if embedding is not None:
            try:
                emb = np.asarray(embedding, dtype=np.float64)
            except (TypeError, ValueError):
                raise QueryError("embedding must be a sequence of numbers") from None
            if emb.ndim != 1 or emb.size == 0:
                raise QueryError(f"embedding must be one-dimensional, got shape {emb.shape}")
            if not np.isfinite(emb).all():
                raise QueryError("embedding contains NaN or infinite values")
            if not np.any(emb):
                raise QueryError("embedding is all zeros: it has no direction")
        elif not isinstance(text, str):
            raise QueryError("text must be a string")
        infos = [self._tables[self._table(table).name]] if table else list(self._tables.values())
        searchable = [i for i in infos if i.has_vectors]
        results: list[tuple[float, str, str]] = []
        tried = False
        for info in searchable:
            q = self._query_vector(info, emb, text)
            if q is None:
                continue
            tried = True
            t = self._replica.tables.get(info.name)
            if t is None or t.index is None or t.index.dim != q.shape[0]:
                continue  # the table changed shape: its new replica is being built
            for key, score in t.index.query(q, top_k, float(threshold), exact=bool(exact)):
                results.append((score, info.name, key))
        if not tried:
            dims = sorted({i.source_dim for i in searchable if not i.text_embedded})
            what = (
                "text queries need a table with text_columns"
                if text is not None
                else f"embedding has dimension {emb.shape[0] if emb is not None else 0}; "
                f"tables take {dims or 'no embeddings'}"
            )
            raise QueryError(f"no table can answer this query: {what}")
        results.sort(key=lambda r: (-r[0], r[1], r[2]))
        out = []
        for score, tname, key in results[:top_k]:
            t = self._replica.tables[tname]
            row = t.rows[key]
            kv = decode_key(key)
            out.append(
                Match(
                    row_id=kv[0] if len(kv) == 1 else tuple(kv),
                    score=score,
                    row=row,
                    text_repr=row_text(row, t.text_columns),
                    table=tname,
                )
            )
        return out

    # -- writes -------------------------------------------------------------
    def _write_table(self, table: str | None) -> TableInfo:
        if table is None:
            writable = [t for t in self._tables.values() if t.writable]
            if len(writable) != 1:
                self._raise_if_failed()
                raise InvalidWriteError(
                    "table= is required: "
                    + (
                        f"writable tables are {[t.name for t in writable]}"
                        if writable
                        else "no writable table is known yet (await wait_ready() first)"
                    )
                )
            return writable[0]
        info = self._tables.get(qualify(table))
        if info is None:
            self._raise_if_failed()
            raise InvalidWriteError(f"unknown table {table!r} (replicated: {sorted(self._tables)})")
        return info

    async def write_many(
        self,
        ops: Sequence[WriteOp],
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Run the operations in one database transaction: all or nothing.
        With wait=True (the default) return only once the local replica shows
        the write; with wait=False, once the database committed it. A
        `request_id` makes a retried call apply once."""
        self._raise_if_failed()
        encoded = []
        for op in ops:
            if not isinstance(op, WriteOp):
                raise InvalidWriteError(f"write_many takes WriteOp items, got {type(op).__name__}")
            info = self._write_table(op.table)
            encoded.append(encode_op(op, info.name, info.key_columns))
        if not encoded:
            raise InvalidWriteError("write_many needs at least one operation")
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise InvalidWriteError("request_id must be a non-empty string")
        # Every write carries an id, so one whose outcome is unknown (the link
        # failed mid-call) can be retried safely: see WriteOutcomeUnknownError.
        request_id = request_id or f"auto-{uuid.uuid4()}"
        if self._write_channel is None:
            self._write_channel = self._channel()
        stub = pb_grpc.WrapperServiceStub(self._write_channel)
        for attempt in (1, 2):
            login = self._login
            if login is None:
                login = self._login = await self._handshake(stub)
            try:
                resp = await stub.Write(
                    login.signed(
                        pb.WriteRequest(
                            protocol_version=PROTOCOL_VERSION,
                            tenant_id=self.config.tenant_id,
                            ops=encoded,
                            request_id=request_id or "",
                            session=login.hello.session,
                        )
                    ),
                    timeout=self.config.write_timeout_s,
                )
                break
            except grpc.aio.AioRpcError as exc:
                err = map_write_error(exc)
                if isinstance(err, SessionExpiredError) and attempt == 1:
                    self._login = None  # the wrapper restarted: authenticate again
                    continue
                if isinstance(err, WriteOutcomeUnknownError):
                    err.request_id = request_id
                raise err from exc
        ack = ack_of(resp)
        if wait:
            try:
                await self._wait_stream(ack.stream_id, ack.position, timeout)
            except WaitTimeoutError:
                raise ReplicaLagError(
                    f"the write committed (event {ack.event_id}, position {ack.position}) but "
                    f"the local replica is at {self.position} after {timeout}s; it will catch up",
                    ack=ack,
                ) from None
            except PrismError as exc:  # the subscription failed: the commit still happened
                raise ReplicaLagError(
                    f"the write committed (event {ack.event_id}, position {ack.position}) but "
                    f"the local replica cannot show it: {exc}",
                    ack=ack,
                ) from exc
        return ack

    async def _wait_stream(self, stream_id: str, position: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._follower.stream_id != stream_id:
            self._raise_if_failed()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError("the replica follows another stream")
            ev = self._progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), remaining)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        await self.wait_for(position, remaining)

    async def write(
        self,
        row_id: Any,
        data: Mapping[str, Any],
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Upsert: insert the row, or replace the given columns of it."""
        return await self.write_many(
            [WriteOp("upsert", row_id, data, table)],
            wait=wait,
            timeout=timeout,
            request_id=request_id,
        )

    async def update(
        self,
        row_id: Any,
        data: Mapping[str, Any],
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Change the given columns of an existing row (RowNotFoundError if none)."""
        return await self.write_many(
            [WriteOp("update", row_id, data, table)],
            wait=wait,
            timeout=timeout,
            request_id=request_id,
        )

    async def delete(
        self,
        row_id: Any,
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Delete the row (ack.affected == (0,) when there was none)."""
        return await self.write_many(
            [WriteOp("delete", row_id, {}, table)],
            wait=wait,
            timeout=timeout,
            request_id=request_id,
        )

    # -- introspection ----------------------------------------------------
    def tables(self) -> dict[str, TableInfo]:
        return dict(self._tables)

    def stats(self) -> dict[str, Any]:
        now_us = time.time_ns() // 1000
        idx = {
            n: t.index.describe() for n, t in self._replica.tables.items() if t.index is not None
        }
        return {
            "rows": self._replica.row_counts(),
            "position": self._follower.position,
            "head": self._follower.head,
            "lag_positions": max(0, self._follower.head - self._follower.position),
            "lag_ms": (now_us - self._last_commit_us) / 1000 if self._last_commit_us else None,
            "stream_id": self._follower.stream_id,
            "connected": self._connected,
            "ready": self._ready.is_set() and self._failure is None,
            "index": idx,
            "bootstrap_rows_built": self._feed.building_rows,
            "key_epoch": self._epoch,
            "last_error": self._last_error,
            "frames_rejected_by_reason": dict(self._rejections),
            **self._stats,
        }
