"""Render benchmark results (JSON) as the markdown table in benchmark/README.md.

    python benchmark/report.py                         # results/rows-100000.json
    python benchmark/report.py results/quick.json --print

The table goes between the `<!-- results:start -->` and
`<!-- results:end -->` markers of README.md; the rest of the README is
left as written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
DEFAULT = HERE / "results" / "rows-100000.json"
START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _get(d: dict[str, Any], *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _n(v: Any, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _ratio(v: Any) -> str:
    if v is None:
        return "—"
    if v >= 1:
        return f"{v:.2f}×"
    return f"{v:.3f}× (baseline {1 / v:.1f}× as fast)"


def render(r: dict[str, Any], source: str) -> str:
    env = r.get("environment", {})
    ds = r.get("dataset", {})
    ra = r.get("ratios", {})
    rows: list[tuple[str, str, str, str]] = []

    def add(what: str, prism: str, baseline: str, ratio: str) -> None:
        rows.append((what, prism, baseline, ratio))

    sync = r.get("initial_sync", {})
    copy = r.get("copy", {})
    add(
        f"1. Initial sync, {_n(sync.get('rows'))} rows (rows/s)",
        f"{_n(sync.get('rows_per_s'))} ({_n(sync.get('seconds'), 1)} s)",
        f"COPY binary: {_n(copy.get('rows_per_s'))} ({_n(copy.get('seconds'), 2)} s)",
        _ratio(ra.get("initial_sync_vs_copy")),
    )
    ph = sync.get("phases", {})
    if ph:
        add(
            "  ↳ wrapper snapshot copy alone (rows/s)",
            f"{_n(sync['rows'] / ph['copy_seconds']) if ph.get('copy_seconds') else '—'}"
            f" ({_n(ph.get('copy_seconds'), 1)} s)",
            f"COPY + psycopg row decode: {_n(copy.get('decode_rows_per_s'))}",
            (
                f"the driver had {ph['frames_received_at_copy_done']:.0%} of its frames when "
                f"the copy ended; {_n(ph.get('serve_and_apply_s'), 1)} s more to ready"
                if "frames_received_at_copy_done" in ph
                else ""
            ),
        )
    cpu = sync.get("cpu", {})
    if cpu.get("wrapper_faults") or cpu.get("driver_faults"):
        # The VM's price of new memory moves these runs most (README, "Issue 12").
        add(
            "  ↳ the kernel's part: system CPU for page faults and file writes",
            f"wrapper {_n(cpu.get('wrapper_system_s'), 1)} s of {_n(cpu.get('wrapper_cpu_s'), 1)}"
            f", driver {_n(cpu.get('driver_system_s'), 1)} s of {_n(cpu.get('driver_cpu_s'), 1)}",
            "",
            f"{_n(cpu.get('wrapper_faults'))} and {_n(cpu.get('driver_faults'))} page faults, "
            f"{_n(cpu.get('wrapper_system_us_per_fault'), 1)} and "
            f"{_n(cpu.get('driver_system_us_per_fault'), 1)} µs of system CPU each",
        )
    live = r.get("cdc_live", {})
    recv = r.get("recvlogical", {})
    # The live ratio is against pg_recvlogical following the same writer live
    # (older results have only the backlog run).
    recv_live = r.get("recvlogical_live") or recv
    add(
        f"2. CDC live, {_n(live.get('changes'))} changes in txns of {live.get('txn_rows', '?')}"
        " (changes/s)",
        f"{_n(live.get('changes_per_s'))} ({_n(live.get('seconds'), 1)} s)",
        f"pg_recvlogical live: {_n(recv_live.get('changes_per_s'))}",
        _ratio(ra.get("cdc_live_vs_recvlogical")),
    )
    cpu = live.get("cpu", {})
    add(
        "  ↳ writer alone (changes/s committed); CPU used",
        _n(live.get("writer_changes_per_s")),
        "",
        f"driver lagged {_n(live.get('lag_after_writer_s'), 1)} s behind the last commit; "
        f"wrapper stored the last change at {_n(live.get('wrapper_stored_last_s'), 1)} s; "
        f"wrapper {_n(cpu.get('wrapper_cores'), 2)} cores, driver "
        f"{_n(cpu.get('driver_cores'), 2)} cores",
    )
    back = r.get("cdc_backlog", {})
    if back:
        add(
            f"2b. CDC backlog catch-up after wrapper restart, {_n(back.get('changes'))} changes",
            f"{_n(back.get('changes_per_s'))} ({_n(back.get('seconds'), 1)} s, of which "
            f"{_n(back.get('startup_s'), 1)} s start-up)",
            f"pg_recvlogical backlog: {_n(recv.get('changes_per_s'))}",
            _ratio(ra.get("cdc_backlog_vs_recvlogical")),
        )
    boot = r.get("bootstrap", {})
    add(
        f"3. Bootstrap of a 2nd driver from the store, {_n(boot.get('rows'))} rows (rows/s)",
        f"{_n(boot.get('rows_per_s'))} ({_n(boot.get('seconds'), 1)} s)",
        f"COPY binary: {_n(copy.get('rows_per_s'))}",
        _ratio(ra.get("bootstrap_vs_copy")),
    )
    rx = r.get("bootstrap_receive", {})
    if rx:
        add(
            "  ↳ the same frames only received (gRPC + TLS into one asyncio process), rows/s",
            f"{_n(rx.get('rows_per_s'))} ({_n(rx.get('seconds'), 1)} s, "
            f"{_n(rx.get('mb_per_s'))} MB/s)",
            "",
            f"the 2nd driver's bootstrap at {_n(ra.get('bootstrap_vs_receive'), 2)}× of it: "
            "the driver receives these frames on its event loop, then opens and applies them "
            "there",
        )
    again = r.get("bootstrap_cached", {})
    if again:
        add(
            "  ↳ a 3rd driver, rows/s",
            f"{_n(again.get('rows_per_s'))} ({_n(again.get('seconds'), 1)} s)",
            "",
            "both are sent the bootstrap the wrapper sealed once, in the background, "
            "after the first driver's initial copy (the wrapper's frame cache)",
        )
    lat = r.get("latency", {})
    if lat:
        add(
            f"4. Commit-to-visible latency at {_n(lat.get('achieved_rate'))} commits/s "
            f"(target {_n(lat.get('target_rate'))}), ms",
            f"p50 {_n(lat.get('p50'), 1)} / p99 {_n(lat.get('p99'), 1)} / "
            f"max {_n(lat.get('max'), 1)}",
            "",
            f"{lat.get('missing', 0)} of {lat.get('commits')} never seen",
        )
        s2 = lat.get("pg_commit_to_store_txn_ms", {})
        v2 = lat.get("store_txn_to_visible_ms", {})
        add(
            "  ↳ PG commit → wrapper store txn / store txn → driver visible, ms",
            f"p50 {_n(s2.get('p50'), 1)} / {_n(v2.get('p50'), 1)}; "
            f"p99 {_n(s2.get('p99'), 1)} / {_n(v2.get('p99'), 1)}",
            "",
            "",
        )
        dp = lat.get("disk_probe")
        if dp:
            add(
                f"  ↳ the disk beside it: 2 kB write + fdatasync {_n(dp.get('rate'))}/s, ms",
                f"p50 {_n(dp.get('p50_ms'), 2)} / p99 {_n(dp.get('p99_ms'), 2)} / "
                f"max {_n(dp.get('max_ms'), 1)}",
                "",
                f"{len(dp.get('stalls', []))} syncs over {_n(dp.get('stall_ms'))} ms; "
                f"{dp.get('late_commits_in_stalls')} of the {dp.get('late_commits')} commits "
                "over 50 ms waited through one (benchmark/diskprobe.py)",
            )
    sweep = r.get("latency_sweep", {})
    if sweep:
        steps = "; ".join(
            f"{_n(x.get('achieved_rate'))}/s: p99 {_n(x.get('p99'), 1)}"
            for x in sweep.get("steps", [])
        )
        best = sweep.get("best_rate")
        add(
            f"4b. Highest steady commit rate with p99 ≤ {_n(sweep.get('p99_limit_ms'))} ms",
            f"{_n(best)} commits/s" if best else "below the first step",
            "",
            f"rates from {_n(sweep['steps'][0].get('target_rate'))}, ×1.5 each: {steps} ms"
            if sweep.get("steps")
            else "",
        )
    g = r.get("get", {})
    add(
        "5. driver.get, µs per call",
        f"p50 {_n(g.get('p50'), 2)} / p99 {_n(g.get('p99'), 2)}",
        "",
        f"{_n(g.get('calls'))} calls, {_n(g.get('calls_per_s'))}/s",
    )
    q = r.get("query", {})
    add(
        f"5. driver.query top_k=10 over {_n(q.get('vectors'))} vectors, ms",
        f"p50 {_n(q.get('p50'), 2)} / p99 {_n(q.get('p99'), 2)}",
        "",
        f"{_n(q.get('queries'))} queries",
    )
    m = r.get("memory", {})
    if m:
        add(
            "6. Driver RSS per row (bytes)",
            f"{_n(m.get('rss_per_row'))} once the index settled "
            f"({_n(m.get('rss_before', 0) / 1e6)} → "
            f"{_n(m.get('rss_settled', m.get('rss_after', 0)) / 1e6)} MB; at ready "
            f"{_n(m.get('rss_per_row_ready', m.get('rss_per_row')))} B/row, "
            f"{_n(m.get('rss_after', 0) / 1e6)} MB; peak {_n(m.get('rss_peak_ready', 0) / 1e6)} MB "
            f"at ready, {_n(m.get('rss_peak', 0) / 1e6)} MB with the sizing after it)",
            "",
            f"row dict ≈ {_n(m.get('sample_row_bytes'))} B, of which embedding list "
            f"{_n(m.get('sample_embedding_list_bytes'))} B",
        )
        add(
            "6. Vector index bytes (per row)",
            f"{_n(m.get('index_bytes', 0) / 1e6, 1)} MB ({_n(m.get('index_bytes_per_row'))})",
            f"raw float32: {ds.get('dim', 384) * 4} B/row",
            "",
        )
    lines = [
        f"Measured {env.get('date', '?')} on {env.get('cpu_count', '?')} CPUs "
        f"({env.get('cpu_model', '?')}), Python {env.get('python', '?')}, numpy "
        f"{env.get('numpy', '?')}, PostgreSQL {env.get('postgres', '?')}, commit "
        f"`{env.get('git_commit', '?')}`; load average at start "
        f"{', '.join(f'{x:.1f}' for x in env.get('loadavg_start', []))}"
        f"{_fresh(env.get('fresh_memory_start'))}. "
        f"{_n(ds.get('rows'))} rows × {ds.get('dim', '?')}-d `real[]` "
        f"({_n(ds.get('table_bytes', 0) / 1e6)} MB in PostgreSQL). "
        f"Whole run: {_n(r.get('wall_seconds'))} s. Source: `{source}`.",
        "",
        "| measurement | prism | PostgreSQL baseline (same run) | ratio prism / baseline |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    errs = r.get("errors") or []
    if errs:
        lines += ["", "Failed phases: " + "; ".join(f"{e['phase']}: {e['error']}" for e in errs)]
    return "\n".join(lines) + "\n"


def _fresh(m: dict[str, Any] | None) -> str:
    """The machine's cost of new memory at the start (common.fresh_memory_cost)."""
    if not m:
        return ""
    return f"; new memory {m['us_per_page']} µs a 4 kB page ({_n(m['mb_per_s'])} MB/s)"


def write_readme(path: Path = DEFAULT, readme: Path = README) -> None:
    r = json.loads(Path(path).read_text())
    try:
        source = str(Path(path).resolve().relative_to(HERE.parent))
    except ValueError:
        source = str(path)
    table = render(r, source)
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", type=Path, default=DEFAULT)
    p.add_argument("--print", action="store_true", help="print the table, do not write README")
    a = p.parse_args()
    if not a.results.exists():
        print(f"no results at {a.results}: run python benchmark/run.py first", file=sys.stderr)
        return 1
    if a.print:
        print(render(json.loads(a.results.read_text()), str(a.results)))
    else:
        write_readme(a.results)
        print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
