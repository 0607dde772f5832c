"""prism.fabric.metrics: declared figures filled at scrape time, exposed in
Prometheus' text format by prometheus_client (parsed back by its parser)."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from prism.fabric.errors import FabricError
from prism.fabric.metrics import Figure, MetricsServer, Snapshot, SnapshotCollector, render
from prism.wrapper.metrics import FIGURES as WRAPPER_FIGURES
from prism.wrapper.metrics import WrapperMetrics
from support.servers import parse_metrics, sample

FIGS = (
    Figure("demo_rows", "gauge", "Rows", ("table",)),
    Figure("demo_done_total", "counter", "Done"),
    Figure("demo_unknown", "gauge", "Never set"),
)


def test_a_snapshot_collector_reads_live_values_at_each_scrape() -> None:
    state = {"rows": 3}

    def fill(s: Snapshot) -> None:
        s.set("demo_rows", state["rows"], "public.items")
        s.set("demo_done_total", 7)
        s.set("demo_unknown", None)  # unknown: no sample, not a made-up 0

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(FIGS, fill))
    m = parse_metrics(render(registry))
    assert sample(m, "demo_rows", table="public.items") == 3.0
    assert sample(m, "demo_done_total") == 7.0
    assert not [k for k in m if k[0] == "demo_unknown"]
    state["rows"] = 5
    assert sample(parse_metrics(render(registry)), "demo_rows", table="public.items") == 5.0


def test_wrong_labels_are_refused_and_a_failing_fill_never_fails_the_scrape() -> None:
    with pytest.raises(FabricError, match=r"demo_rows: labels \('table',\)"):
        Snapshot(FIGS).set("demo_rows", 1)

    def broken(s: Snapshot) -> None:
        s.set("demo_done_total", 1)
        raise RuntimeError("boom")

    registry = CollectorRegistry()
    registry.register(SnapshotCollector(FIGS, broken))
    assert sample(parse_metrics(render(registry)), "demo_done_total") == 1.0


def test_the_endpoint_serves_the_registry_and_refuses_a_taken_port() -> None:
    metrics = WrapperMetrics()
    metrics.refused("hello", "bad-proof")
    ended = metrics.subscribed("acme")
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as r:
            m = parse_metrics(r.read().decode())
        assert sample(m, "prism_wrapper_refusals_total", call="hello", kind="bad-proof") == 1.0
        assert sample(m, "prism_wrapper_subscribers", tenant="acme") == 1.0
        with pytest.raises(FabricError, match=r"cannot serve metrics on 127\.0\.0\.1"):
            MetricsServer(metrics.registry, "127.0.0.1", server.port)
    finally:
        server.close()
    ended()
    assert metrics.subscriber_count == 0


def test_metric_names_follow_prometheus_conventions() -> None:
    names = [f.name for f in WRAPPER_FIGURES]
    assert len(set(names)) == len(names)
    for f in WRAPPER_FIGURES:
        assert f.name.startswith("prism_wrapper_")
        assert f.name.endswith("_total") == (f.kind == "counter"), f.name
