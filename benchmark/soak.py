"""The fault soak (issue 11): thousands of transactions through the real
wrapper under kill -9, stalls, database crashes, partitions and a full disk,
with nothing lost, nothing doubled and no half transaction seen.

    python benchmark/soak.py --minutes 30 --seed 7               # PostgreSQL, then MariaDB
    python benchmark/soak.py --db postgres --minutes 5 --seed 3
    python benchmark/soak.py --db postgres --seed 3 --plan kill9,db_crash,disk_full   # replay

Runs tests/support/soak.py (the runner, its checker and injectors) once per
database, writes benchmark/results/soak-<db>.json, and puts the "Faults"
table into benchmark/README.md. Exits non-zero when a soak found a
problem; the problem, the seed, the faults that led to it and the command
that replays them are printed and kept in the JSON. Needs root for the
network namespace and the store's tmpfs (without, the soak says which
faults it left out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import replace_readme_section

from support.soak import FAULTS, SoakConfig, run_soak

RESULTS = Path(__file__).resolve().parent / "results"
START, END = "<!-- faults:start -->", "<!-- faults:end -->"
NAMES = {"postgres": "PostgreSQL", "mariadb": "MariaDB"}


def _n(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(reports: dict[str, dict[str, Any]]) -> str:
    """The Faults table: each figure beside its target, one column per database."""
    dbs = [d for d in ("postgres", "mariadb") if d in reports]

    def row(label: str, target: str, cell: Any) -> str:
        return f"| {label} | {target} | " + " | ".join(cell(reports[d]) for d in dbs) + " |"

    def fig(key: str) -> Any:
        return lambda r: _n(r["figures"][key])

    def faults(*kinds: str) -> Any:
        return lambda r: " / ".join(_n(r["faults"].get(k, 0)) for k in kinds)

    def writes(r: dict[str, Any]) -> str:
        w = r["writes"]
        if not w["requests"]:
            return "n/a (writes are PostgreSQL-only)"
        return (
            f"{_n(r['figures']['lost_or_doubled_writes'])} of {_n(w['requests'])} requests "
            f"({_n(w['unknown_outcomes'])} unknown outcomes, {_n(w['retried'])} retries, "
            f"{_n(w['replayed'])} replays)"
        )

    def slot(r: dict[str, Any]) -> str:
        s = r["slot"]
        if not s["samples"]:
            return "n/a (no slot)"
        return f"{len(s['violations'])} ({_n(s['checks'])} checks, {_n(s['samples'])} samples)"

    def noticed(r: dict[str, Any]) -> str:
        s = r.get("long_db_stalls", {"count": 0, "noticed": 0})
        return f"{_n(s['noticed'])} of {_n(s['count'])}"

    def half(r: dict[str, Any]) -> str:
        return f"{_n(r['figures']['half_transactions_seen'])} in {_n(r['observations'])} looks"

    def converge(r: dict[str, Any]) -> str:
        f = r["figures"]
        n = len(r["checkpoints"])
        return f"{_n(f['converge_s_p50'])} s / {_n(f['converge_s_max'])} s ({n} checkpoints)"

    def exits(r: dict[str, Any]) -> str:
        gave_up = sum(1 for x in r["wrapper_exits"] if "database.retry_limit" in x["log"])
        return f"{gave_up} / {len(r['wrapper_exits']) - gave_up}"

    def run(r: dict[str, Any]) -> str:
        ok = "**passed**" if r["ok"] else "**FAILED**"
        return f"{ok}: {r['seconds'] / 60:.0f} min, seed {r['seed']}, commit `{r['commit']}`"

    lines = [
        START,
        "| figure | target | " + " | ".join(NAMES[d] for d in dbs) + " |",
        "| --- | --- | " + " | ".join("---" for _ in dbs) + " |",
        row(
            "committed transactions (SQL + writes through the driver)",
            "≥ 10,000",
            fig("committed_transactions"),
        ),
        row(
            "wrapper kill -9s: plain / while a write is in flight",
            "≥ 10",
            faults("kill9", "kill9_write"),
        ),
        row("driver reconnects (attempts, all drivers)", "≥ 50", fig("driver_reconnects")),
        row(
            "database restarts: crash (immediate / SIGKILL) / clean",
            "≥ 3",
            faults("db_crash", "db_restart"),
        ),
        row(
            "partitions or stalls: driver link cut / stalled, database link cut / stalled, "
            "veth down, wrapper SIGSTOP",
            "≥ 5",
            faults("cut_app", "stall_app", "cut_db", "stall_db", "veth", "sigstop"),
        ),
        row("full disks: reported in Health, resumed by itself", "≥ 1", fig("full_disks")),
        row(
            "other faults: driver restarts / driver process stopped past retention / slow link",
            "",
            faults("driver_restart", "driver_stall", "slow_app"),
        ),
        row(
            "divergent rows (replica vs `SELECT *`, every driver, every checkpoint)",
            "0",
            fig("divergent_rows"),
        ),
        row("half transactions seen (group invariant, between every two batches)", "0", half),
        row("lost or doubled writes (audit trigger, per request id)", "0", writes),
        row("slot: WAL held by away drivers, or confirmed beyond the store", "0", slot),
        row(
            "database link stalled past the silence window (10 s / 15 s): noticed while stalled",
            "all",
            noticed,
        ),
        row("time to converge after the last fault, p50 / max", "bounded", converge),
        row(
            "wrapper exits by itself: after retry_limit (restarted, as systemd would) / other",
            "— / 0",
            exits,
        ),
        row("run", "", run),
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=["postgres", "mariadb", "both"], default="both")
    p.add_argument("--minutes", type=float, default=30.0, help="fault phase per database")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-transactions", type=int, default=10_000)
    p.add_argument("--plan", help="comma-separated fault kinds to run in order (a replay)")
    p.add_argument(
        "--rate", type=float, default=50.0, help="SQL transactions per second at most (0: no cap)"
    )
    p.add_argument("--no-netns", action="store_true", help="no veth; loopback only")
    p.add_argument("--work", type=Path, help="work directory (default: a new one in /var/tmp)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--render", action="store_true", help="only rewrite the README table from --out's JSON"
    )
    args = p.parse_args()
    if args.render:
        found = {d: args.out / f"soak-{d}.json" for d in ("postgres", "mariadb")}
        loaded = {d: json.loads(f.read_text()) for d, f in found.items() if f.exists()}
        replace_readme_section(START, END, "## Faults", render(loaded))
        print(render(loaded))
        return 0
    plan = args.plan.split(",") if args.plan else None
    for k in plan or []:
        if k not in FAULTS:
            p.error(f"unknown fault {k!r}; known: {', '.join(FAULTS)}")
    dbs = ["postgres", "mariadb"] if args.db == "both" else [args.db]
    work = args.work or Path(tempfile.mkdtemp(prefix="prism-soak-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    # The soak's own progress on stdout; everything (drivers' reconnects...) in a file.
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    everything = logging.FileHandler(work / "soak.log")
    everything.setFormatter(fmt)
    progress = logging.StreamHandler(sys.stdout)
    progress.setFormatter(fmt)
    progress.addFilter(lambda r: r.name.startswith("soak"))
    logging.basicConfig(level=logging.INFO, handlers=[everything, progress])
    print(f"work directory: {work}")
    reports: dict[str, dict[str, Any]] = {}
    for db in dbs:
        cfg = SoakConfig(
            flavor=db,
            seed=args.seed,
            work=work / db,
            minutes=args.minutes,
            min_transactions=0 if plan else args.min_transactions,
            plan=plan,
            netns=not args.no_netns,
            rate=args.rate,
            store_mb=1024,
        )
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report = asyncio.run(run_soak(cfg, interruptible=True))
        report["started"] = started
        report["machine"] = {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_at_end": os.getloadavg(),
        }
        reports[db] = report
        interrupted = any(f.startswith("interrupted") for f in report["failures"])
        # An interrupted soak's report stays in its work directory: it must
        # not replace the results of a whole one.
        out = (work / db if interrupted else args.out) / f"soak-{db}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"\n{db}: {'passed' if report['ok'] else 'FAILED'}; results in {out}")
        for f in report["failures"]:
            print(f)
        if interrupted:
            print(render(reports))
            return 130
    if not plan and not args.no_readme:
        merged = {}
        for db in ("postgres", "mariadb"):
            path = args.out / f"soak-{db}.json"
            if db in reports:
                merged[db] = reports[db]
            elif path.exists():
                merged[db] = json.loads(path.read_text())
        replace_readme_section(START, END, "## Faults", render(merged))
    print(render(reports))
    return 0 if all(r["ok"] for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
