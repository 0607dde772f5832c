"""DriverConfig: the typed, validated arguments of a PrismDriver.

The app node needs no database credentials: only where the wrapper is, the
tenant, the tenant's secret file (shared with the wrapper) and how to trust
the wrapper's TLS certificate. TLS is the default; `insecure=True` speaks
plaintext gRPC, for development only. `snapshot_dir` opts in to warm
restarts (prism.driver.warmstart).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from prism.driver.errors import DriverConfigError
from prism.driver.index import IndexParams
from prism.fabric.tablenames import qualify


@dataclass(frozen=True)
class DriverConfig:
    wrapper_host: str = "127.0.0.1"
    wrapper_port: int = 50051
    tenant_id: str = ""
    secret_file: str | Path = ""
    # Reconnect backoff: first delay, doubled up to the cap.
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    connect_timeout_s: float = 10.0
    # A Subscribe call that brings no frame for this long is dropped and
    # made anew: the wrapper sends a heartbeat every second when idle, so
    # silence means a hung link (a stalled peer, or a byte stream knocked out
    # of step that gRPC waits on), which keepalive does not always catch.
    link_silence_s: float = 15.0
    # Rows per frame the wrapper may send (bounded by the wrapper).
    max_frame_rows: int = 1024
    # Deadline of one Write call to the wrapper (the database commit and the
    # wrapper seeing it); waiting for the local replica is bounded separately.
    write_timeout_s: float = 60.0
    # TLS: the CA that signed the wrapper's certificate (None: the system's
    # roots), the name to check it against when it differs from wrapper_host,
    # and a client certificate and key for mutual TLS.
    tls_ca_file: str | Path | None = None
    tls_server_name: str | None = None
    tls_cert_file: str | Path | None = None
    tls_key_file: str | Path | None = None
    insecure: bool = False
    # How the local vector index searches: exact below index.exact_limit
    # vectors per table, partitioned ("ivf") above; see prism.driver.index.
    index: IndexParams = field(default_factory=IndexParams)
    # Warm restart (opt-in): a directory where the driver keeps a sealed
    # snapshot of its replica (one file per tenant, mode 0600), written after
    # each bootstrap, every snapshot_interval_s while the replica moves, and
    # on close; a restarted driver resumes from it instead of bootstrapping
    # when the wrapper still serves its stream and position
    # (prism.driver.warmstart).
    snapshot_dir: str | Path | None = None
    snapshot_interval_s: float = 300.0
    # Equality indexes kept exact with the rows, for `find` and filtered
    # `query`: table -> columns, e.g. {"public.orders": ["customer_id"]}.
    # Table names without a schema mean "public." (normalized here).
    indexes: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The change feed (driver.changes): how many of the latest changes the
    # driver keeps so a consumer can start from an earlier position, and how
    # many changes one consumer may have waiting before it gets
    # ChangeFeedOverflowError.
    change_retention: int = 10_000
    change_buffer: int = 10_000
    # During a bootstrap, have glibc's heap grow in large steps and fault
    # them in on a helper thread, ahead of the event loop (it sets malloc's
    # top pad, mmap and trim thresholds; see prism.driver.heapahead). Off:
    # the process's malloc settings are left as they are.
    heap_ahead: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.wrapper_host, str) or not self.wrapper_host:
            raise DriverConfigError("wrapper_host: required, e.g. '127.0.0.1'")
        if (
            not isinstance(self.wrapper_port, int)
            or isinstance(self.wrapper_port, bool)
            or not 1 <= self.wrapper_port <= 65535
        ):
            raise DriverConfigError(
                f"wrapper_port: {self.wrapper_port!r} is not a TCP port (1-65535)"
            )
        if not isinstance(self.tenant_id, str) or not self.tenant_id:
            raise DriverConfigError("tenant_id: required, the tenant the wrapper serves")
        if not self.secret_file:
            raise DriverConfigError(
                "secret_file: required, the tenant secret shared with the wrapper"
            )
        for name in (
            "reconnect_min_s",
            "reconnect_max_s",
            "connect_timeout_s",
            "write_timeout_s",
            "snapshot_interval_s",
        ):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise DriverConfigError(f"{name}: {v!r} must be a positive number of seconds")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise DriverConfigError("reconnect_max_s must be >= reconnect_min_s")
        silence = self.link_silence_s
        if not isinstance(silence, int | float) or not math.isfinite(silence) or silence < 2:
            raise DriverConfigError(
                f"link_silence_s: {silence!r} must be at least 2 seconds "
                "(the wrapper heartbeats every second)"
            )
        for flag in ("insecure", "heap_ahead"):
            if not isinstance(getattr(self, flag), bool):
                raise DriverConfigError(f"{flag}: {getattr(self, flag)!r} must be True or False")
        tls = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
        if self.insecure and any(getattr(self, n) for n in tls):
            raise DriverConfigError(
                "insecure=True speaks plaintext: drop it to use the tls_* settings"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise DriverConfigError(
                "tls_cert_file and tls_key_file: give both for mutual TLS, or neither"
            )
        if not isinstance(self.index, IndexParams):
            raise DriverConfigError(f"index: {self.index!r} must be an IndexParams")
        if not isinstance(self.max_frame_rows, int) or not 1 <= self.max_frame_rows <= 16384:
            raise DriverConfigError(f"max_frame_rows: {self.max_frame_rows!r} not in 1..16384")
        object.__setattr__(self, "indexes", _indexes(self.indexes))
        for name, least in (("change_retention", 0), ("change_buffer", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise DriverConfigError(f"{name}: {v!r} must be an integer >= {least}")
        if self.snapshot_dir is not None:
            d = self.snapshot_dir
            if not isinstance(d, str | Path) or not str(d):
                raise DriverConfigError(
                    f"snapshot_dir: {d!r} must be a directory path (or None: no warm restart)"
                )
            if Path(d).exists() and not Path(d).is_dir():
                raise DriverConfigError(f"snapshot_dir: {d} exists and is not a directory")

    @property
    def target(self) -> str:
        return f"{self.wrapper_host}:{self.wrapper_port}"

    def _read(self, name: str) -> bytes | None:
        path = getattr(self, name)
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise DriverConfigError(f"{name}: cannot read {path} ({exc.strerror})") from None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for the channel to the wrapper; None when insecure."""
        if self.insecure:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self._read("tls_ca_file"),
            private_key=self._read("tls_key_file"),
            certificate_chain=self._read("tls_cert_file"),
        )


def _indexes(declared: object) -> dict[str, tuple[str, ...]]:
    """DriverConfig.indexes checked and normalized: qualified table names,
    column tuples without repeats."""
    if not isinstance(declared, Mapping):
        raise DriverConfigError(f"indexes: {declared!r} must map table names to column lists")
    out: dict[str, tuple[str, ...]] = {}
    for table, cols in declared.items():
        if not isinstance(table, str) or not table:
            raise DriverConfigError(f"indexes: table name {table!r} must be a non-empty string")
        if isinstance(cols, str) or not isinstance(cols, Sequence) or not cols:
            raise DriverConfigError(
                f"indexes[{table!r}]: {cols!r} must be a non-empty list of column names"
            )
        for c in cols:
            if not isinstance(c, str) or not c:
                raise DriverConfigError(f"indexes[{table!r}]: column {c!r} must be a string")
        out[qualify(table)] = tuple(dict.fromkeys(cols))
    return out
