"""benchmark/repeat.py's pure part: the spread of each target over runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def _load_repeat() -> Any:
    """Import benchmark/repeat.py without leaving benchmark/ on sys.path for
    the rest of the session (its module names, e.g. mysql, would shadow)."""
    saved = list(sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmark"))
    try:
        import repeat as module
    finally:
        sys.path[:] = saved
    return module


repeat = _load_repeat()


def _run(
    sync: float, live: float | None, boot: float, fault_us: float | None = None
) -> dict[str, Any]:
    ratios: dict[str, float] = {"initial_sync_vs_copy": sync}
    if live is not None:
        ratios["cdc_live_vs_recvlogical"] = live
    cpu = {} if fault_us is None else {"wrapper_system_us_per_fault": fault_us}
    return {
        "ratios": ratios,
        "initial_sync": {"cpu": cpu},
        "bootstrap": {"rows_per_s": boot},
        "memory": {"rows": 10, "rss_per_row": 4920.0, "payload_bytes": 17440},
        "environment": {"date": "2026-12-05T03:14:00+00:00", "git_commit": "abc"},
    }


def test_summary_counts_runs_that_meet_and_skips_missing_values() -> None:
    runs = [
        _run(0.49, 0.55, 90_000, 4.5),
        _run(0.53, None, 120_000),
        _run(0.51, 0.48, 130_000),
    ]
    rows = {r["target"]: r for r in repeat.summarize(runs)}
    sync = rows["initial sync / COPY binary"]
    assert (sync["min"], sync["median"], sync["max"], sync["met"]) == (0.49, 0.51, 0.53, 2)
    live = rows["CDC live / pg_recvlogical live"]
    assert live["values"] == [0.55, None, 0.48]
    assert (live["runs"], live["met"], live["median"]) == (2, 1, (0.55 + 0.48) / 2)
    boot = rows["bootstrap of a 2nd driver, rows/s"]
    assert boot["met"] == 2
    fault = rows[
        "the wrapper's system CPU a page fault in the initial sync, µs (the VM's price of memory)"
    ]
    assert fault["values"] == [4.5, None, None] and "met" not in fault
    rss = rows["driver RSS / (row payload + vector)"]
    assert abs(rss["median"] - 4920.0 / (1744 + 1536)) < 1e-9
    assert rows["CDC backlog / pg_recvlogical"]["runs"] == 0


def test_the_picked_run_is_the_median_sync_and_the_table_has_every_run() -> None:
    runs = [_run(0.55, 0.5, 1), _run(0.47, 0.5, 1), _run(0.51, 0.5, 1), _run(0.60, 0.5, 1)]
    assert repeat.median_run(runs) == 2  # 0.47, 0.51 | 0.55, 0.60: the lower middle
    table = repeat.render(repeat.summarize(runs), runs, 2)
    assert table.startswith(repeat.START) and table.endswith(repeat.END)
    sync_line = next(line for line in table.splitlines() if line.startswith("| initial sync"))
    assert "0.470× / 0.530× / 0.600×" in sync_line and "3 of 4" in sync_line
