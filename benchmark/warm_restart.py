"""Warm restart against a cold bootstrap, on the real parts.

    flock /work/coord/bench.lock python benchmark/warm_restart.py --rows 100000

PostgreSQL (pgserver) with the benchmark's table (benchmark/common.py), the
real prism-wrapper process over TLS, and drivers in processes of their own
(benchmark/driver_proc.py, each a fresh interpreter as a restarted app is),
all with the same DriverConfig(snapshot_dir=...):

1. cold: no snapshot yet, so a full bootstrap; close() writes the snapshot.
2. warm: a new process resumes from that snapshot; nothing changed in
   between, so it is ready once the snapshot is loaded and Hello agrees.
3. warm after changes: `--changes` rows are updated while no driver runs;
   the restarted driver loads the snapshot and catches up from the
   wrapper's store.

"to ready" is from constructing PrismDriver to `wait_ready()` returning
(imports are done by then; the process's import time is reported apart).
Results go to benchmark/results/warm-restart-<rows>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Wrapper, dev_certs, load_table, write_wrapper_config  # noqa: E402

from prism.fabric.keys import write_secret  # noqa: E402
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp  # noqa: E402

RESULTS = HERE / "results"


def log(msg: str) -> None:
    print(f"[warm-restart] {msg}", file=sys.stderr, flush=True)


def run_driver(wrapper: Wrapper, secret: Path, snaps: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "driver_proc.py"),
            "--port",
            str(wrapper.port),
            "--secret",
            str(secret),
            "--ca",
            str(wrapper.ca_file),
            "--snapshot-dir",
            str(snaps),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_seconds"] = time.perf_counter() - t0
    r["index_kind"] = r.pop("index", {}).get("kind")
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--changes", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    base = shared_tmp("prism-warm-")
    pg = EmbeddedPostgres(base / "pg", settings={"max_wal_size": "4GB"})
    pg.start()
    wrapper: Wrapper | None = None
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=bench"
        secret = base / "tenant.secret"
        write_secret(secret)
        port = free_port()
        certs = dev_certs(base)
        cfg = write_wrapper_config(
            base / "wrapper.toml", dsn, port, secret, base / "store.sqlite3", certs=certs
        )
        load_table(dsn, args.rows, args.seed)
        wrapper = Wrapper(cfg, port, base / "wrapper.log", certs.ca_cert)
        wrapper.start(wait=True, timeout=600)
        snaps = base / "snapshots"
        res: dict[str, Any] = {"rows": args.rows, "changes": args.changes}
        res["cold"] = run_driver(wrapper, secret, snaps)
        cold = res["cold"]
        log(f"cold: {cold['seconds']:.2f}s to ready, close {cold['close_seconds']:.2f}s")
        res["warm"] = run_driver(wrapper, secret, snaps)
        log(f"warm: {res['warm']['seconds']:.2f}s to ready")
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("UPDATE items SET rev = rev + 1 WHERE id < %s", (args.changes,))
        res["warm_after_changes"] = run_driver(wrapper, secret, snaps)
        log(f"warm after {args.changes} changes: {res['warm_after_changes']['seconds']:.2f}s")
        for k in ("warm", "warm_after_changes"):
            if res[k]["bootstraps"] != 0 or res[k]["warm_restarts"] != 1:
                raise AssertionError(f"{k}: not a warm restart: {res[k]}")
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"warm-restart-{args.rows}.json"
        out.write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {out}")
    finally:
        if wrapper is not None:
            wrapper.stop()
        pg.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
