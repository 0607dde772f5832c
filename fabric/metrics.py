"""Prometheus metrics, one way for every prism process: the wrapper's
/metrics endpoint, the driver's collector for the app's own registry, and
the cache's figures.

prometheus_client rather than hand-written text: it owns the exposition
format (escaping, counters' `_total`, histograms' buckets, OpenMetrics when
the scraper asks for it), thread-safe counters for the hot paths, and the
HTTP endpoint; a few dozen lines here would only get those wrong.

Two kinds of figures. Events (a frame sent, a write's latency) are counted
where they happen, with prometheus_client's Counter, Gauge and Histogram on
a process's own registry. State that already lives elsewhere (the
pipeline's counters, the store's size, the driver's stats()) is read at
scrape time by a SnapshotCollector from a list of declared Figures, so
nothing is counted twice and nothing goes stale between scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from prism.fabric.errors import FabricError

log = logging.getLogger("prism.metrics")

__all__ = [
    "CollectorRegistry",
    "Figure",
    "MetricsServer",
    "Snapshot",
    "SnapshotCollector",
    "render",
]


@dataclass(frozen=True)
class Figure:
    """One metric family read at scrape time: declared once, with its help
    text and label names."""

    name: str  # counters end in _total
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()

    def family(self) -> Metric:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=list(self.labels))
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))


class Snapshot:
    """The values of a collector's figures at one scrape. A figure nobody
    set is left out (no sample rather than a made-up 0)."""

    def __init__(self, figures: Sequence[Figure]) -> None:
        self._figures = {f.name: f for f in figures}
        self._families: dict[str, Metric] = {}

    def set(self, name: str, value: float | None, *labels: str) -> None:
        """A sample of figure `name`; None (unknown) is left out."""
        if value is None:
            return
        figure = self._figures[name]
        if len(labels) != len(figure.labels):
            raise FabricError(f"metric {name}: labels {figure.labels}, got {labels!r}")
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = figure.family()
        family.add_metric(list(labels), float(value))  # type: ignore[attr-defined]

    def families(self) -> list[Metric]:
        return list(self._families.values())


class SnapshotCollector:
    """A prometheus_client collector that fills declared figures from live
    state at each scrape: `fill(snapshot)` sets the values. A failing fill
    is logged and yields what it set so far, never a failed scrape."""

    def __init__(self, figures: Sequence[Figure], fill: Callable[[Snapshot], None]) -> None:
        self.figures = tuple(figures)
        self._fill = fill

    def describe(self) -> Iterable[Metric]:
        # Registration asks for the names; answering without filling keeps it
        # cheap and possible before the state exists.
        return [f.family() for f in self.figures]

    def collect(self) -> Iterable[Metric]:
        snapshot = Snapshot(self.figures)
        try:
            self._fill(snapshot)
        except Exception:
            log.exception("reading metrics failed")
        return snapshot.families()


class MetricsServer:
    """The /metrics HTTP endpoint of one registry, on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise FabricError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.host = host

    @property
    def port(self) -> int:
        return int(self._httpd.server_port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def render(registry: CollectorRegistry) -> str:
    """The text exposition of a registry, as a scrape would get it."""
    return generate_latest(registry).decode()
