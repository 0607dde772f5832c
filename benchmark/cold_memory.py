"""What this machine charges for a page of new memory, gigabyte by gigabyte.

    python benchmark/cold_memory.py [--gb 16]

A bootstrapping driver's cost is partly the kernel's: every page the
replica holds is a page fault the first time it is written. On the
benchmark's VM that price depends on the page's history. Memory freed
recently is still backed by the host and costs about 1.5 µs a page; memory
the guest handed back to the host (virtio-balloon free page reporting)
costs several times that when it is touched again. A 2nd driver that
bootstraps right after the initial sync gets the latter; a 3rd, started as
the 2nd exits, gets the 2nd's freed pages.

This maps and faults in `--gb` gigabytes (MADV_POPULATE_WRITE, 4 kB pages,
one thread) and reports the kernel CPU per page for each gigabyte in turn:
the first ones are the pool of recently freed pages, the rest what the host
must supply again. Keep `--gb` below the free memory (`free -g`). Results go
to results/cold-memory.json; nothing else runs meanwhile, and the memory is
freed (and, in time, reported to the host again) at exit.
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import time
from pathlib import Path

from prism.fabric.libc import MADV_POPULATE_WRITE

HERE = Path(__file__).resolve().parent
GB = 1 << 30
CHUNK = 4 << 20
_MAP_NORESERVE = 0x4000  # Python's mmap module has no name for it (x86-64, arm64)
_MADV_NOHUGEPAGE = 15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=int, default=16, help="gigabytes to fault in (below free memory)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cold-memory.json")
    args = ap.parse_args()
    size = args.gb * GB
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
    try:
        mem = mmap.mmap(-1, size, flags=flags)
    except OSError as exc:
        raise SystemExit(f"cannot map {args.gb} GB: {exc}") from None
    mem.madvise(_MADV_NOHUGEPAGE)  # 4 kB pages, as the driver's slab and heap
    per_gb = []
    for g in range(args.gb):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for off in range(0, GB, CHUNK):
            try:
                mem.madvise(MADV_POPULATE_WRITE, g * GB + off, CHUNK)
            except OSError as exc:
                raise SystemExit(f"MADV_POPULATE_WRITE failed (Linux 5.14+): {exc}") from None
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        pages = GB // mmap.PAGESIZE
        per_gb.append(
            {
                "gb": g + 1,
                "system_us_per_page": round((r1.ru_stime - r0.ru_stime) * 1e6 / pages, 2),
                "wall_us_per_page": round((t1 - t0) * 1e6 / pages, 2),
            }
        )
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "gb": args.gb,
        "per_gb": per_gb,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "kernel CPU per 4 kB page, GB by GB: "
        + " ".join(f"{r['system_us_per_page']:.1f}" for r in per_gb)
        + " µs"
    )


if __name__ == "__main__":
    main()
