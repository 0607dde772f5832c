"""Several runs of run.py, and the spread of each issue-12 figure across them.

On this shared 2-core machine one run's ratio moves by about ±0.05 with the
host (benchmark/README.md, "Issue 12"), so a target that sits near its
threshold passes or misses on a single run. This runs `run.py` N times, each
with its own PostgreSQL, wrapper and baselines, so every ratio is still taken
within one run. It then writes:

* `results/runs-<rows>.json`: each run's figures, and per target the minimum,
  median and maximum and how many runs met it;
* `results/rows-<rows>.json` and the results table: the run whose initial-sync
  ratio is the median (its other figures are that run's, not medians);
* the "Runs" table of README.md: per target, every run's figure.

    python benchmark/repeat.py [--runs 5] [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DIM, nested, replace_readme_section  # noqa: E402
from report import write_readme  # noqa: E402

START, END = "<!-- runs:start -->", "<!-- runs:end -->"


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: Callable[[dict[str, Any]], float | None]
    met: Callable[[float], bool] | None  # None: reported, no target
    fmt: str


def _rss_ratio(r: dict[str, Any]) -> float | None:
    """RSS per row over the row's payload plus its vector at stored precision
    (float32), the issue's formula."""
    m = r.get("memory") or {}
    rows = m.get("rows")
    if not rows or "rss_per_row" not in m or "payload_bytes" not in m:
        return None
    return float(m["rss_per_row"]) / (m["payload_bytes"] / rows + DIM * 4)


TARGETS = (
    Target(
        "initial sync / COPY binary",
        "≥ 0.5×",
        lambda r: nested(r, "ratios", "initial_sync_vs_copy"),
        lambda v: v >= 0.5,
        "{:.3f}×",
    ),
    Target(
        # The initial sync misses where this is high: the wrapper touches
        # ~130,000 pages of memory new to it at 100k rows (frames waiting
        # for the first driver, the copy's buffers), each at this price.
        "the wrapper's system CPU a page fault in the initial sync, µs (the VM's price of memory)",
        "report",
        lambda r: nested(r, "initial_sync", "cpu", "wrapper_system_us_per_fault"),
        None,
        "{:.1f}",
    ),
    Target(
        "CDC live / pg_recvlogical live",
        "≥ 0.5×",
        lambda r: nested(r, "ratios", "cdc_live_vs_recvlogical"),
        lambda v: v >= 0.5,
        "{:.3f}×",
    ),
    Target(
        "CDC backlog / pg_recvlogical",
        "≥ 0.5×",
        lambda r: nested(r, "ratios", "cdc_backlog_vs_recvlogical"),
        lambda v: v >= 0.5,
        "{:.3f}×",
    ),
    Target(
        "bootstrap of a 2nd driver, rows/s",
        "≥ 100,000",
        lambda r: nested(r, "bootstrap", "rows_per_s"),
        lambda v: v >= 100_000,
        "{:,.0f}",
    ),
    Target(
        "a 3rd driver, right after the 2nd, rows/s",
        "report",
        lambda r: nested(r, "bootstrap_cached", "rows_per_s"),
        None,
        "{:,.0f}",
    ),
    Target(
        "the 2nd driver's system CPU a page fault, µs (the VM's price of memory)",
        "report",
        lambda r: nested(r, "bootstrap", "bootstrap_cpu", "system_us_per_fault"),
        None,
        "{:.1f}",
    ),
    Target(
        "the same frames only received (gRPC + TLS), rows/s",
        "report",
        lambda r: nested(r, "bootstrap_receive", "rows_per_s"),
        None,
        "{:,.0f}",
    ),
    Target(
        "commit → visible at 500/s, p50 ms",
        "≤ 5",
        lambda r: nested(r, "latency", "p50"),
        lambda v: v <= 5.0,
        "{:.1f}",
    ),
    Target(
        "commit → visible at 500/s, p99 ms",
        "≤ 50",
        lambda r: nested(r, "latency", "p99"),
        lambda v: v <= 50.0,
        "{:.1f}",
    ),
    Target(
        "the host's steal during the initial sync, CPU s (of 2 a second)",
        "report",
        lambda r: nested(r, "initial_sync", "cpu", "steal_s"),
        None,
        "{:.2f}",
    ),
    Target(
        "the host's steal during the 500/s phase, CPU s (of 40)",
        "report",
        lambda r: nested(r, "latency", "cpu", "steal_s"),
        None,
        "{:.2f}",
    ),
    Target(
        "highest steady rate with p99 ≤ 50 ms, commits/s",
        "report",
        lambda r: nested(r, "latency_sweep", "best_rate"),
        None,
        "{:,.0f}",
    ),
    Target(
        "driver RSS / (row payload + vector)",
        "≤ 1.5×",
        _rss_ratio,
        lambda v: v <= 1.5,
        "{:.2f}×",
    ),
)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: every run's value (None where the run has none), and over
    the runs that have one the min, median, max and the count that met it."""
    out = []
    for t in TARGETS:
        values = [t.value(r) for r in runs]
        have = [float(v) for v in values if v is not None]
        row: dict[str, Any] = {"target": t.name, "goal": t.goal, "values": values}
        if have:
            row.update(min=min(have), median=statistics.median(have), max=max(have))
            if t.met is not None:
                row["met"] = sum(1 for v in have if t.met(v))
        row["runs"] = len(have)
        out.append(row)
    return out


def median_run(runs: list[dict[str, Any]]) -> int:
    """Index of the run whose initial-sync ratio is the median (the lower
    middle one for an even count)."""
    keyed = sorted(range(len(runs)), key=lambda i: TARGETS[0].value(runs[i]) or 0.0)
    return keyed[(len(keyed) - 1) // 2]


def spread(row: dict[str, Any], t: Target) -> str:
    """ "min / median / max" of a summary row, in its target's format."""
    if not row["runs"]:
        return "—"
    return " / ".join(t.fmt.format(row[k]) for k in ("min", "median", "max"))


def met(row: dict[str, Any]) -> str:
    return f"{row['met']} of {row['runs']}" if "met" in row else "reported"


def render(summary: list[dict[str, Any]], runs: list[dict[str, Any]], picked: int) -> str:
    dates = [str(nested(r, "environment", "date") or "?")[11:16] for r in runs]
    commit = nested(runs[0], "environment", "git_commit") or "?"
    lines = [
        START,
        f"{len(runs)} runs of `run.py` at commit `{commit}`, started at {', '.join(dates)} UTC "
        f"(`python benchmark/repeat.py`; `results/runs-*.json`). Each ratio is taken within its "
        f"own run; the results table above is the run of {dates[picked]}, whose initial-sync "
        "ratio is the median.",
        "",
        "| measure | target | " + " | ".join(dates) + " | min / median / max | met |",
        "| --- | --- | " + " | ".join("---" for _ in runs) + " | --- | --- |",
    ]
    for row, t in zip(summary, TARGETS, strict=True):
        cells = ["—" if v is None else t.fmt.format(v) for v in row["values"]]
        lines.append(
            f"| {row['target']} | {row['goal']} | "
            + " | ".join(cells)
            + f" | {spread(row, t)} | {met(row)} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="runs of run.py (default 5)")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    p.add_argument("--no-report", action="store_true", help="leave README.md as it is")
    a = p.parse_args(argv)
    if a.runs < 1:
        p.error(f"--runs must be at least 1, got {a.runs}")
    tmp = Path(tempfile.mkdtemp(prefix="prism-repeat-"))
    runs: list[dict[str, Any]] = []
    try:
        for i in range(a.runs):
            out = tmp / f"run-{i}.json"
            t0 = time.monotonic()
            print(f"[repeat] run {i + 1} of {a.runs}", flush=True)
            proc = subprocess.run(
                [
                    sys.executable,
                    str(HERE / "run.py"),
                    "--rows",
                    str(a.rows),
                    "--no-report",
                    "--out",
                    str(out),
                ],
                timeout=a.timeout,
            )
            if proc.returncode != 0 or not out.exists():
                print(
                    f"[repeat] run {i + 1} failed (exit {proc.returncode}); stopping",
                    file=sys.stderr,
                )
                return 1
            runs.append(json.loads(out.read_text()))
            ratios = runs[-1].get("ratios", {})
            print(
                f"[repeat] run {i + 1}: {time.monotonic() - t0:.0f} s; sync "
                f"{ratios.get('initial_sync_vs_copy', 0):.3f}×, live "
                f"{ratios.get('cdc_live_vs_recvlogical', 0):.3f}×, backlog "
                f"{ratios.get('cdc_backlog_vs_recvlogical', 0):.3f}×",
                flush=True,
            )
        summary = summarize(runs)
        picked = median_run(runs)
        results = HERE / "results"
        (results / f"runs-{a.rows}.json").write_text(
            json.dumps({"summary": summary, "picked": picked, "runs": runs}, indent=2, default=str)
            + "\n"
        )
        chosen = results / f"rows-{a.rows}.json"
        shutil.copyfile(tmp / f"run-{picked}.json", chosen)
        for row, t in zip(summary, TARGETS, strict=True):
            print(f"[repeat] {row['target']}: {spread(row, t)}; met {met(row)}")
        if not a.no_report:
            write_readme(chosen)
            replace_readme_section(
                START, END, "## Runs (`python benchmark/repeat.py`)", render(summary, runs, picked)
            )
            print("[repeat] updated benchmark/README.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
