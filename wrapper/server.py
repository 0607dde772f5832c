"""The gRPC face of the wrapper (serve): Hello, Subscribe, Health.

Kept thin: streaming logic lives in wrapper/serve.py, keys in prism.fabric.
`create_server()` binds and returns the port, so tests can ask for port 0.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from prism.fabric import PROTOCOL_VERSION
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.sealing import Sealer, hello_proof
from prism.wrapper.config import WrapperConfig
from prism.wrapper.pipeline import Pipeline
from prism.wrapper.serve import ServeContext, subscription
from prism.wrapper.store import Store, StoreReader
from prism.wrapper.writes import WriteError, WriteExecutor

log = logging.getLogger("prism.wrapper.server")

KEY_EPOCH = 1  # rotation comes with the secure-fabric work
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CAPABILITIES = ("frames-v1", "catch-up", "bootstrap", "text-embedder")


_WRITE_STATUS = {
    "permission": grpc.StatusCode.PERMISSION_DENIED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "constraint": grpc.StatusCode.FAILED_PRECONDITION,
    "conflict": grpc.StatusCode.ABORTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "lagging": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unknown": grpc.StatusCode.UNAVAILABLE,
}


@dataclass
class WrapperState:
    cfg: WrapperConfig
    store: Store
    pipeline: Pipeline
    secret: bytes
    writes: WriteExecutor | None = None

    @property
    def tenant_id(self) -> str:
        return self.cfg.tenant_id

    _sealers: dict[tuple[int, int], Sealer] = field(default_factory=dict)

    def sealer(self, dim: int, epoch: int = KEY_EPOCH) -> Sealer:
        s = self._sealers.get((epoch, dim))
        if s is None:
            keys = derive_epoch_keys(self.secret, self.tenant_id, epoch)
            s = self._sealers[(epoch, dim)] = Sealer(keys, dim)
        return s

    def wait_for_head(self, position: int, timeout: float) -> bool:
        store = self.store
        with store.changed:
            return store.changed.wait_for(lambda: store.meta.head != position, timeout)


class WrapperServicer(pb_grpc.WrapperServiceServicer):
    def __init__(self, state: WrapperState) -> None:
        self.state = state

    def _check_tenant(self, tenant_id: str, context: grpc.ServicerContext) -> None:
        if tenant_id != self.state.tenant_id:
            log.warning("unknown tenant", extra={"tenant": tenant_id, "peer": context.peer()})
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown tenant {tenant_id!r}")

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloResponse:
        if request.protocol_version != PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {request.protocol_version} not supported; "
                f"this wrapper speaks {PROTOCOL_VERSION}",
            )
        self._check_tenant(request.tenant_id, context)
        if not 16 <= len(request.client_nonce) <= 64:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "client_nonce must be 16-64 bytes")
        st = self.state
        keys = derive_epoch_keys(st.secret, st.tenant_id, KEY_EPOCH)
        tables = []
        reader = StoreReader(st.store.path)
        try:
            with reader.snapshot() as meta:
                stored = reader.table_columns() if meta.snapshot_done else {}
        finally:
            reader.close()
        if not stored and len(st.pipeline.shapes) < len(st.cfg.tables):
            # A driver must not learn an empty schema and keep it.
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the wrapper is starting: its tables are not discovered yet",
            )
        for t in st.cfg.tables:
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
                    columns=[pb.Column(name=c, type_name=ty, is_key=c in keyc) for c, ty in cols],
                    key_columns=keyc,
                    has_vectors=t.has_vectors,
                    vector_source=source,
                    text_columns=list(t.repr_columns),
                    source_dim=st.cfg.source_dim(t) if t.has_vectors else 0,
                    vector_dim=st.cfg.table_dim(t),
                    writable=t.writable,
                    writable_columns=list(t.writable_columns),
                )
            )
        return pb.HelloResponse(
            protocol_version=PROTOCOL_VERSION,
            stream_id=meta.stream_id,
            tables=tables,
            vector_dim=int(st.cfg["vectors.dimension"]),
            key_epoch=KEY_EPOCH,
            key_proof=hello_proof(keys, request.client_nonce),
            capabilities=list(CAPABILITIES),
            head_position=meta.head,
            retention_floor=meta.retention_floor,
            text_embedder_dim=int(st.cfg["vectors.text_dim"]),
        )

    def Subscribe(
        self, request: pb.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Frame]:
        self._check_tenant(request.tenant_id, context)
        st = self.state
        reader = StoreReader(st.store.path)
        ctx = ServeContext(
            tenant_id=st.tenant_id,
            dims={t.name: st.cfg.table_dim(t) for t in st.cfg.tables},
            sealer=st.sealer,
            tables=tuple(t.name for t in st.cfg.tables),
        )
        log.info(
            "subscriber",
            extra={
                "peer": context.peer(),
                "from": request.from_position,
                "stream": request.stream_id,
            },
        )
        try:
            yield from subscription(
                ctx,
                reader,
                request.stream_id,
                request.from_position,
                request.max_frame_rows,
                st.wait_for_head,
                context.is_active,
            )
        finally:
            reader.close()

    def Write(self, request: pb.WriteRequest, context: grpc.ServicerContext) -> pb.WriteResponse:
        self._check_tenant(request.tenant_id, context)
        st = self.state
        try:
            if st.writes is None:
                raise WriteError("permission", "no table is writable for this tenant")
            return st.writes.execute(request)
        except WriteError as exc:
            level = logging.WARNING if exc.kind == "permission" else logging.INFO
            log.log(
                level,
                "write refused: %s",
                exc,
                extra={"peer": context.peer(), "kind": exc.kind, "sqlstate": exc.sqlstate},
            )
            md: tuple[tuple[str, str | bytes], ...] = (("prism-error", exc.kind),)
            if exc.sqlstate:
                md += (("prism-sqlstate", exc.sqlstate),)
            context.set_trailing_metadata(md)
            context.abort(_WRITE_STATUS.get(exc.kind, grpc.StatusCode.INTERNAL), str(exc))

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        from prism.wrapper.sources.walstream import lsn_to_str

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
        }
        for (table, reason), n in dict(st.pipeline.vectorizer.missing).items():
            counters[f"vector_missing:{table}:{reason}"] = n
        return pb.HealthResponse(
            status=state,
            counters=counters,
            head_position=meta.head,
            source_position=lsn_to_str(meta.source_position),
            stream_id=meta.stream_id,
            last_commit_time_us=meta.last_commit_us,
            detail=status.detail,
        )


def create_server(
    state: WrapperState, address: str, servicer: WrapperServicer | None = None
) -> tuple[grpc.Server, int]:
    """Build the server and bind `address` ("host:port", port 0 for any).
    Returns (server, bound port); call server.start()."""
    workers = int(os.environ.get("PRISM_GRPC_WORKERS", "64"))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_WrapperServiceServicer_to_server(servicer or WrapperServicer(state), server)
    port = server.add_insecure_port(address)
    if port == 0:
        from prism.wrapper.errors import ConfigError

        raise ConfigError(f"chorus.listen_port: cannot bind {address}")
    return server, port
