"""deploy/: the example Prometheus alert rules read as Prometheus rules and
name only metrics that exist, each alert the issue asks for is there."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from prism.cache.metrics import FIGURES as CACHE_FIGURES
from prism.driver.metrics import FIGURES as DRIVER_FIGURES
from prism.wrapper.metrics import FIGURES as WRAPPER_FIGURES
from prism.wrapper.metrics import WrapperMetrics

RULES = Path(__file__).parents[2] / "deploy" / "prometheus-alerts.yml"


def exposed_names() -> set[str]:
    """Every sample name the wrapper and the driver can expose."""
    names = {f.name for f in (*WRAPPER_FIGURES, *DRIVER_FIGURES, *CACHE_FIGURES)}
    for metric in WrapperMetrics().registry.collect():
        names.update(s.name for s in metric.samples)
        names.add(metric.name + ("_total" if metric.type == "counter" else ""))
    return names


def test_alert_rules_are_well_formed_and_name_existing_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert rules
    known = exposed_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\bprism_[a-z_]+", rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)
    alerts = {r["alert"] for r in rules}
    # What the issue asks for: replication lag, retained WAL, a driver
    # falling behind, rejected frames.
    assert {
        "PrismReplicationLagBytes",
        "PrismRetainedWal",
        "PrismDriverFallingBehind",
        "PrismDriverRejectedFrames",
    } <= alerts
    # Issue 14: the cache's hit rate and its shared tier's lag and writes.
    assert {
        "PrismCacheHitRateLow",
        "PrismCacheSharedLag",
        "PrismCacheSharedWritesFailing",
    } <= alerts
