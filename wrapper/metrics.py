"""The wrapper's Prometheus metrics (`[metrics] listen_port`, opt-in).

Beside the pipeline, not in it: the serve and write paths count their
events (subscribers, frames sent, refusals, write latency) on WrapperMetrics'
own registry; everything else is read at scrape time from where it already
lives (the pipeline's status, the store's meta and files, the keyring), and
the source's lag from a probe with a connection of its own
(prism.wrapper.sources.flavor.make_probe), asked at most once a second.

What the figures mean, for alerts (deploy/prometheus-alerts.yml):
- source lag, bytes: the database's log written after the position the
  store holds (PostgreSQL: pg_current_wal_lsn() minus the stored LSN;
  MySQL: binlog bytes after the stored file and offset). An idle stream
  confirms its position every database.status_interval_s, so a few kB of
  other databases' WAL may show between confirmations.
- source lag, seconds: how long after its commit in the database the newest
  stored transaction was stored (Debezium's "milliseconds behind source").
  It rises while the wrapper works off a backlog and falls once it is
  caught up; during a full stall it keeps its last value, while the lag in
  bytes grows.
- retained WAL: what PostgreSQL keeps for the slot (pg_current_wal_lsn()
  minus the slot's restart_lsn): disk the database cannot reclaim.
- frames rejected: only a driver can reject a frame (prism.driver.metrics
  counts them); the wrapper counts the calls it refused, by kind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from prism.fabric.metrics import Figure, MetricsServer, Snapshot, SnapshotCollector
from prism.wrapper.errors import WrapperError
from prism.wrapper.sources.base import SourceFigures, SourceProbe
from prism.wrapper.store import free_bytes

if TYPE_CHECKING:
    from prism.wrapper.config import WrapperConfig
    from prism.wrapper.keyring import Keyring
    from prism.wrapper.pipeline import Pipeline
    from prism.wrapper.store import Store

log = logging.getLogger("prism.wrapper.metrics")

PROBE_EVERY_S = 1.0  # scrapes closer together than this share one probe
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = ("STARTING", "SNAPSHOT", "STREAMING", "RETRYING", "FAILED", "STOPPED")

FIGURES = (
    Figure("prism_wrapper_state", "gauge", "1 for the pipeline's current state", ("state",)),
    Figure(
        "prism_wrapper_source_up",
        "gauge",
        "1 when the metrics probe reached the database at this scrape, else 0",
    ),
    Figure(
        "prism_wrapper_source_lag_bytes",
        "gauge",
        "Bytes of the database's log (WAL, binlog) after the position the store holds",
    ),
    Figure(
        "prism_wrapper_source_lag_seconds",
        "gauge",
        "Seconds between the newest stored transaction's commit in the database and its store",
    ),
    Figure(
        "prism_wrapper_last_source_commit_timestamp_seconds",
        "gauge",
        "Unix time of the database commit of the newest stored change",
    ),
    Figure(
        "prism_wrapper_slot_retained_wal_bytes",
        "gauge",
        "WAL PostgreSQL keeps for the replication slot (current LSN minus restart_lsn)",
    ),
    Figure("prism_wrapper_changes_stored_total", "counter", "Row changes stored since start"),
    Figure(
        "prism_wrapper_transactions_stored_total",
        "counter",
        "Source transactions stored since start",
    ),
    Figure(
        "prism_wrapper_snapshot_rows_total", "counter", "Rows copied by initial copies since start"
    ),
    Figure("prism_wrapper_head_position", "gauge", "The store's newest position"),
    Figure(
        "prism_wrapper_store_bytes", "gauge", "Size of the store's files (database, WAL, row log)"
    ),
    Figure(
        "prism_wrapper_store_disk_free_bytes",
        "gauge",
        "Free bytes on the store's file system (for the wrapper's user)",
    ),
    Figure(
        "prism_wrapper_store_full_total",
        "counter",
        "Times the store's disk filled up (replication pauses until there is room)",
    ),
    Figure(
        "prism_wrapper_database_retries_total",
        "counter",
        "Attempts to reach the database or restart the stream after an error",
    ),
    Figure("prism_wrapper_key_epoch", "gauge", "Each tenant's current key epoch", ("tenant",)),
    Figure(
        "prism_wrapper_rows_without_vector_total",
        "counter",
        "Rows replicated without a vector (left out of similarity search), by reason",
        ("table", "reason"),
    ),
)


@dataclass
class _Probed:
    at: float = 0.0
    figures: SourceFigures | None = None


class WrapperMetrics:
    """The wrapper's registry: event counters bumped by the server, and
    (after `watch`) the figures read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.subscribers = Gauge(
            "prism_wrapper_subscribers", "Open Subscribe streams", ["tenant"], registry=r
        )
        self.frames_sent = Counter(
            "prism_wrapper_frames_sent", "Frames sent to drivers", ["tenant"], registry=r
        )
        self.refusals = Counter(
            "prism_wrapper_refusals",
            "Calls the wrapper refused, by call and kind (wrapper.proto's ErrorKind)",
            ["call", "kind"],
            registry=r,
        )
        self.write_seconds = Histogram(
            "prism_wrapper_write_seconds",
            "Write calls from arrival to answer, by outcome (ok, or the refusal kind)",
            ["outcome"],
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.reader: StateReader | None = None  # set by watch()
        self._lock = threading.Lock()
        self._subscribed = 0
        self._sent = 0

    # -- events (called by the server) ------------------------------------------
    def subscribed(self, tenant: str) -> Callable[[], None]:
        """A Subscribe stream opened; call the result when it ends."""
        gauge = self.subscribers.labels(tenant)
        gauge.inc()
        with self._lock:
            self._subscribed += 1

        def ended() -> None:
            gauge.dec()
            with self._lock:
                self._subscribed -= 1

        return ended

    def sender(self, tenant: str) -> Callable[[], None]:
        """The per-frame counter of one stream (looked up once per call)."""
        child = self.frames_sent.labels(tenant)

        def sent() -> None:
            child.inc()
            self._sent += 1  # a racy read for Health is fine; the Counter is exact

        return sent

    def refused(self, call: str, kind: str) -> None:
        self.refusals.labels(call, kind).inc()

    @property
    def subscriber_count(self) -> int:
        return self._subscribed

    @property
    def frames_sent_count(self) -> int:
        return self._sent

    # -- scrape-time figures -------------------------------------------------
    def watch(
        self,
        cfg: WrapperConfig,
        pipeline: Pipeline,
        store: Store,
        keyring: Keyring,
        probe: SourceProbe | None,
    ) -> None:
        """Read the pipeline, store, keyring and source at every scrape."""
        reader = StateReader(cfg, pipeline, store, keyring, probe)
        self.registry.register(SnapshotCollector(FIGURES, reader.fill))
        self.reader = reader

    def serve(self, host: str, port: int) -> MetricsServer:
        server = MetricsServer(self.registry, host, port)
        log.info("metrics listening", extra={"host": host, "port": server.port})
        return server


def store_bytes(path: Path) -> int:
    """The store's size on disk: its database file, its WAL and its row log
    (wrapper/rowlog.py: one file, two while a compaction writes the next)."""
    total = 0
    files = [path, path.with_name(path.name + "-wal")]
    files += path.parent.glob(path.name + "-rows.*")
    for p in files:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


class StateReader:
    """Fills FIGURES from the wrapper's live state."""

    def __init__(
        self,
        cfg: WrapperConfig,
        pipeline: Pipeline,
        store: Store,
        keyring: Keyring,
        probe: SourceProbe | None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.store = store
        self.keyring = keyring
        self.probe = probe
        self._probe_lock = threading.Lock()
        self._probed = _Probed()
        self._probe_failing = False

    def source_figures(self) -> SourceFigures | None:
        """The probe's figures, at most PROBE_EVERY_S old; None when the
        database cannot be asked."""
        if self.probe is None:
            return None
        with self._probe_lock:
            now = time.monotonic()
            if now - self._probed.at < PROBE_EVERY_S:
                return self._probed.figures
            try:
                figures: SourceFigures | None = self.probe.figures(self.store.meta.source_position)
                if self._probe_failing:
                    log.info("metrics: the database answers again")
                self._probe_failing = False
            except WrapperError as exc:
                if not self._probe_failing:
                    log.warning("metrics: cannot ask the database for its position: %s", exc)
                self._probe_failing = True
                figures = None
            self._probed = _Probed(time.monotonic(), figures)
            return figures

    def fill(self, s: Snapshot) -> None:
        status = self.pipeline.status
        for state in STATES:
            s.set("prism_wrapper_state", 1.0 if status.state == state else 0.0, state)
        meta = self.store.meta
        if meta.snapshot_done:
            figures = self.source_figures()
            s.set("prism_wrapper_source_up", 0.0 if figures is None else 1.0)
            if figures is not None:
                s.set("prism_wrapper_source_lag_bytes", figures.lag_bytes)
                s.set("prism_wrapper_slot_retained_wal_bytes", figures.retained_bytes)
        s.set("prism_wrapper_source_lag_seconds", status.lag_s)
        if meta.last_commit_us:
            s.set("prism_wrapper_last_source_commit_timestamp_seconds", meta.last_commit_us / 1e6)
        s.set("prism_wrapper_changes_stored_total", status.changes)
        s.set("prism_wrapper_transactions_stored_total", status.transactions)
        s.set("prism_wrapper_snapshot_rows_total", status.snapshot_rows)
        s.set("prism_wrapper_head_position", meta.head)
        s.set("prism_wrapper_store_bytes", store_bytes(self.store.path))
        s.set("prism_wrapper_store_disk_free_bytes", free_bytes(self.store.path))
        s.set("prism_wrapper_store_full_total", status.store_full)
        s.set("prism_wrapper_database_retries_total", status.retries)
        for t in self.cfg.tenants:
            s.set("prism_wrapper_key_epoch", self.keyring.epoch(t.id), t.id)
        for (table, reason), n in dict(self.pipeline.vectorizer.missing).items():
            s.set("prism_wrapper_rows_without_vector_total", n, table, reason)
