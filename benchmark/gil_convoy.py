"""The store's writes and reads beside a thread running Python: the GIL convoy.

Python's sqlite3 releases the GIL around every sqlite3_step and must win it
back afterwards. While another thread runs Python (the wrapper's pipeline
in a busy stream or copy), each re-acquisition waits up to the interpreter's
switch interval (5 ms by default). This script measures what that costs the
store, in one process, on a temporary store of `--rows` rows of ~3.3 kB (a
1.7 kB payload and a 1.5 kB vector, as in run.py):

1. writes: 100-row transactions of random updates, as the store writes them
   (StoreTxn.write_batch: appended to the row log, wrapper/rowlog.py; until
   format 5 these were multi-row SQLite upserts, and before `c606c7d`
   executemany with a one-row upsert);
2. reads: every row after position 0 through StoreReader.chunks (a scan of
   the row log);

each alone, then beside a thread that only runs Python. Figures are µs of
wall time and of this process's CPU per row.

    python benchmark/gil_convoy.py [--rows 50000] [--rounds 100]

Writes benchmark/results/gil_convoy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from prism.wrapper.store import Store, StoreReader

HERE = Path(__file__).resolve().parent
TABLE = "public.items"


class Spinner:
    """A thread that only runs Python, as a busy pipeline thread does."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(1000):
                x += i * i

    def __enter__(self) -> Spinner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(rows: int, fn: Callable[[], None]) -> dict[str, float]:
    """µs of wall time and of the calling thread's CPU per row."""
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return {
        "wall_us_per_row": (time.perf_counter() - t0) / rows * 1e6,
        "cpu_us_per_row": (time.thread_time() - c0) / rows * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=100, help="100-row transactions per figure")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gil_convoy.json")
    args = ap.parse_args()
    rng = random.Random(7)
    payload, vector = os.urandom(1744), os.urandom(1536)
    with tempfile.TemporaryDirectory(prefix="prism-convoy-") as tmp:
        store = Store(Path(tmp) / "store.sqlite3", "full")
        store.reset("convoy")
        keys = [f"[{i}]" for i in range(args.rows)]
        with store.transaction(durable=False) as txn:
            n = len(keys)
            txn.write_batch(TABLE, keys, [payload] * n, [vector] * n, [None] * n, 1)
            txn.mark_snapshot_done()

        def store_writes() -> None:
            for _ in range(args.rounds):
                batch = rng.sample(keys, 100)
                with store.transaction() as txn:
                    txn.write_batch(TABLE, batch, [payload] * 100, [vector] * 100, [None] * 100, 2)

        reader = StoreReader(store.path)

        def reads() -> None:
            with reader.snapshot():
                for _ in reader.chunks(TABLE, 0, 1000):
                    pass

        written = args.rounds * 100
        cases: list[tuple[str, int, Callable[[], None]]] = [
            ("writes: StoreTxn.write_batch (the row log)", written, store_writes),
            ("reads: StoreReader.chunks (a scan of the row log)", args.rows, reads),
        ]
        results: dict[str, dict[str, dict[str, float]]] = {}
        for name, rows, fn in cases:
            alone = timed(rows, fn)
            with Spinner():
                beside = timed(rows, fn)
            results[name] = {"alone": alone, "beside_python_thread": beside}
            print(
                f"{name}: alone {alone['wall_us_per_row']:.1f} µs/row "
                f"({alone['cpu_us_per_row']:.1f} CPU); beside a thread running Python "
                f"{beside['wall_us_per_row']:.1f} µs/row ({beside['cpu_us_per_row']:.1f} CPU)",
                flush=True,
            )
        reader.close()
        store.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "rows": args.rows,
                "rounds": args.rounds,
                "results": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
