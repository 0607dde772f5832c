"""benchmark/diskprobe.py: its stalls, the overlap of late commits with the
disk's stalls, and the probe itself on a real file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parents[2] / "benchmark"


def _load() -> Any:
    saved = list(sys.path)
    sys.path.insert(0, str(_BENCH))
    try:
        import diskprobe as module
    finally:
        sys.path[:] = saved
    return module


diskprobe = _load()
MS = 1_000_000


def test_only_syncs_over_the_stall_bound_are_stalls() -> None:
    samples = [(i * 5 * MS, 0.2) for i in range(97)]
    samples += [(490 * MS, 20.0), (500 * MS, 21.0), (600 * MS, 180.0)]
    assert diskprobe.stalls(samples) == [(500 * MS, 21.0), (600 * MS, 180.0)]
    assert diskprobe.stalls([]) == []


def test_a_late_commit_counts_when_it_waited_through_a_stall() -> None:
    stalls = [(1000 * MS, 200.0)]  # the disk stalled from 1.0 s to 1.2 s
    late = [
        (900 * MS, 1150 * MS),  # committed before, visible during it
        (1100 * MS, 1250 * MS),  # committed during it
        (1300 * MS, 1400 * MS),  # after it: late for another reason
        (700 * MS, 990 * MS),  # visible 10 ms before it began: beyond the 5 ms slack
    ]
    assert diskprobe.overlapping(late, stalls) == 2
    assert diskprobe.overlapping(late, stalls, slack_ms=15.0) == 3
    assert diskprobe.overlapping(late, []) == 0


def test_the_probe_syncs_a_real_file_at_its_rate_and_removes_it(tmp_path: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    samples = diskprobe.probe(tmp_path, 100.0, 512, stop)
    timer.join()
    assert 1 <= len(samples) <= 40  # 0.3 s at 100/s at most, on however slow a disk
    assert all(ms >= 0 for _, ms in samples)
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
    assert list(tmp_path.iterdir()) == []


def test_the_command_reports_one_json_line_when_told_to_stop(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, str(_BENCH / "diskprobe.py"), "--dir", str(tmp_path), "--rate", "100"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdin is not None
    assert json.loads(p.stdout.readline()) == {"ready": True}
    out, _ = p.communicate("stop\n", timeout=30)
    r = json.loads(out)
    assert p.returncode == 0
    assert r["rate"] == 100.0 and len(r["samples"]) >= 1
    starts = [t for t, _ in r["samples"]]
    assert starts == sorted(starts) and all(ms >= 0 for _, ms in r["samples"])


def test_the_command_fails_before_ready_when_it_cannot_probe(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    p = subprocess.run(
        [sys.executable, str(_BENCH / "diskprobe.py"), "--dir", str(missing)],
        input="stop\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    assert p.stdout == ""  # never said ready, so run.py's phase fails instead of waiting
    assert "No such file or directory" in p.stderr
