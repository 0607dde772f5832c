"""The driver's figures for the app's own Prometheus registry.

The driver runs no HTTP server (the app has its own, or none): it offers a
collector the app registers, which reads `PrismDriver.stats()` at each
scrape, so nothing is counted twice and nothing goes stale.

    from prometheus_client import REGISTRY
    from prism.driver import DriverCollector
    REGISTRY.register(DriverCollector(driver))

Every family carries a `tenant` label, so one app may register the
collectors of several drivers. Lag: `prism_driver_lag_positions` is how many
wrapper positions the replica is behind the head the wrapper last
announced; `prism_driver_lag_seconds` is 0 when the replica shows that head,
else the age of the newest change it shows (so it rises while the driver
falls behind, and not while a quiet table simply has no changes).
"""

from __future__ import annotations

import itertools
import sys
from typing import TYPE_CHECKING, Any

from prism.driver.subscription import REJECTION_REASON_NAMES
from prism.fabric.metrics import Figure, Snapshot, SnapshotCollector

if TYPE_CHECKING:
    from prism.driver.api import PrismDriver

ROW_SAMPLE = 64  # rows sized per table and scrape to estimate the replica's bytes

_T = ("tenant",)
FIGURES = (
    Figure(
        "prism_driver_connected", "gauge", "1 while the driver is subscribed to the wrapper", _T
    ),
    Figure(
        "prism_driver_ready", "gauge", "1 once the initial sync is applied (and not failed)", _T
    ),
    Figure("prism_driver_position", "gauge", "The wrapper position the replica shows", _T),
    Figure("prism_driver_head_position", "gauge", "The wrapper's head, as last announced", _T),
    Figure("prism_driver_lag_positions", "gauge", "Wrapper positions the replica is behind", _T),
    Figure(
        "prism_driver_lag_seconds",
        "gauge",
        "0 when the replica shows the wrapper's head, else the age of its newest change",
        _T,
    ),
    Figure("prism_driver_reconnects_total", "counter", "Reconnections to the wrapper", _T),
    Figure("prism_driver_frames_total", "counter", "Frames received and accepted", _T),
    Figure(
        "prism_driver_frames_rejected_total",
        "counter",
        "Frames that failed verification and were dropped, by reason",
        (*_T, "reason"),
    ),
    Figure("prism_driver_changes_applied_total", "counter", "Row changes applied", _T),
    Figure("prism_driver_bootstraps_total", "counter", "Full bootstraps completed", _T),
    Figure(
        "prism_driver_bootstrap_rows",
        "gauge",
        "Rows built aside by the bootstrap in progress (0: none in progress)",
        _T,
    ),
    Figure("prism_driver_key_epoch", "gauge", "The key epoch of the latest frame", _T),
    Figure("prism_driver_key_rotations_total", "counter", "Key epochs followed", _T),
    Figure("prism_driver_replica_rows", "gauge", "Rows in the replica", (*_T, "table")),
    Figure(
        "prism_driver_replica_bytes",
        "gauge",
        "Memory of the replica: the index's exact bytes plus rows estimated from a sample",
        (*_T, "table"),
    ),
)


def _deep_size(value: Any) -> int:
    """Bytes of a decoded row value and what it holds (one level of
    containers: rows hold scalars, arrays, and JSON's lists and dicts)."""
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(sys.getsizeof(k) + _deep_size(v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        size += sum(_deep_size(v) for v in value)
    elif hasattr(value, "nbytes"):
        size += int(value.nbytes)
    return size


def rows_bytes(rows: dict[str, dict[str, Any]]) -> int:
    """An estimate of a table's rows in memory: the mean of up to ROW_SAMPLE
    rows (key and decoded values) times their count, plus the dict itself."""
    if not rows:
        return sys.getsizeof(rows)
    sample = list(itertools.islice(rows.items(), ROW_SAMPLE))
    mean = sum(sys.getsizeof(k) + _deep_size(r) for k, r in sample) / len(sample)
    return int(mean * len(rows)) + sys.getsizeof(rows)


class DriverCollector(SnapshotCollector):
    """Register with the app's registry: `REGISTRY.register(DriverCollector(driver))`."""

    def __init__(self, driver: PrismDriver) -> None:
        self.driver = driver
        super().__init__(FIGURES, self._fill)

    def _fill(self, s: Snapshot) -> None:
        d = self.driver
        tenant = d.config.tenant_id
        st = d.stats()
        s.set("prism_driver_connected", float(st["connected"]), tenant)
        s.set("prism_driver_ready", float(st["ready"]), tenant)
        s.set("prism_driver_position", st["position"], tenant)
        s.set("prism_driver_head_position", st["head"], tenant)
        s.set("prism_driver_lag_positions", st["lag_positions"], tenant)
        lag_s = 0.0
        if st["lag_positions"] and st["lag_ms"] is not None:
            lag_s = st["lag_ms"] / 1000.0
        s.set("prism_driver_lag_seconds", lag_s, tenant)
        s.set("prism_driver_reconnects_total", st["reconnects"], tenant)
        s.set("prism_driver_frames_total", st["frames"], tenant)
        rejected = st["frames_rejected_by_reason"]
        # Every reason from 0, so that increase() sees the first rejection.
        for reason in dict.fromkeys((*REJECTION_REASON_NAMES, *rejected)):
            s.set("prism_driver_frames_rejected_total", rejected.get(reason, 0), tenant, reason)
        s.set("prism_driver_changes_applied_total", st["changes_applied"], tenant)
        s.set("prism_driver_bootstraps_total", st["bootstraps"], tenant)
        s.set("prism_driver_bootstrap_rows", st["bootstrap_rows_built"], tenant)
        s.set("prism_driver_key_epoch", st["key_epoch"], tenant)
        s.set("prism_driver_key_rotations_total", st["key_rotations"], tenant)
        for name, t in d._replica.tables.items():
            s.set("prism_driver_replica_rows", len(t.rows), tenant, name)
            index = t.index.nbytes if t.index is not None else 0
            s.set("prism_driver_replica_bytes", index + rows_bytes(t.rows), tenant, name)
