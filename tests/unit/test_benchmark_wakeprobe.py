"""benchmark/wakeprobe.py and the context-switch count writes.py reports
(benchmark/common.py): both on this machine's real processes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmark"


def _load(name: str) -> Any:
    saved = list(sys.path)
    sys.path.insert(0, str(_BENCH))
    try:
        return __import__(name)
    finally:
        sys.path[:] = saved


common = _load("common")
wakeprobe = _load("wakeprobe")


def test_each_sleep_of_a_live_thread_is_counted() -> None:
    # A thread of this process sleeping 20 times, still alive when counted
    # (an exited thread's task, and its count, are gone): at least 20 more.
    slept, done = threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(20):
            time.sleep(0.001)
        slept.set()
        done.wait()

    before = common.context_switches(os.getpid())
    t = threading.Thread(target=sleeper)
    t.start()
    try:
        assert slept.wait(10)
        assert common.context_switches(os.getpid()) - before >= 20
    finally:
        done.set()
        t.join()


def test_a_process_that_is_gone_counts_nothing() -> None:
    # Beyond any pid the kernel hands out (pid_max is at most 2**22).
    assert common.context_switches(2**22 + 1) == 0


def test_tree_counts_include_children() -> None:
    pid = os.fork()
    if pid == 0:
        for _ in range(30):
            time.sleep(0.001)
        time.sleep(5)
        os._exit(0)
    try:
        time.sleep(0.5)  # the child's 30 sleeps are done
        assert pid in common.tree_pids(os.getpid())
        mine = common.context_switches(os.getpid())
        assert common.tree_context_switches(os.getpid()) - mine >= 30
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_round_trip_is_measured_between_two_real_processes() -> None:
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    p = wakeprobe.roundtrip_us(cpu, cpu, 0.0, 50)
    assert 0 < p["p50"] <= p["p99"]
    assert os.sched_getaffinity(0) == before  # put back as it was


def test_report_shows_every_case_under_each_setting() -> None:
    case = {"p50": 6.5, "p99": 12.0}
    res = {
        "date": "2026-12-06 12:00 UTC",
        "calls": 100,
        "cpuidle_driver": "haltpoll",
        "guest_halt_poll_ns": "0",
        "halt_poll_ns": 200000,
        "runs": {
            "as it runs (0 ns)": {"same CPU, back to back": case, "two CPUs, back to back": case},
            "halt polling 200000 ns": {
                "same CPU, back to back": case,
                "two CPUs, back to back": {"p50": 80.4, "p99": 891.9},
            },
        },
    }
    text = wakeprobe.report(res)
    assert text.startswith(wakeprobe.START) and text.endswith(wakeprobe.END)
    assert "| two CPUs, back to back | 6.5 / 12.0 | 80.4 / 891.9 |" in text
    assert "--halt-poll-ns 200000" in text


def _raise() -> None:
    raise RuntimeError("probe failed")


def _terminated() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises before this ends


@pytest.mark.parametrize(("measure", "error"), [(_raise, RuntimeError), (_terminated, SystemExit)])
def test_halt_poll_is_put_back_however_the_measurement_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measure: Any, error: type
) -> None:
    knob = tmp_path / "guest_halt_poll_ns"
    knob.write_text("0")
    monkeypatch.setattr(wakeprobe, "HALT_POLL", knob)
    seen: list[str] = []

    def run() -> None:
        seen.append(knob.read_text())  # set while measuring
        measure()

    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(error):
        wakeprobe.with_halt_poll(200000, "0", run)
    assert seen == ["200000"]
    assert knob.read_text() == "0"
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_round_trip_interrupted_leaves_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    # The parent fails after the fork: the child must be gone when it returns.
    calls = {"n": 0}
    real_read = os.read

    def failing_read(fd: int, n: int) -> bytes:
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real_read(fd, n)

    monkeypatch.setattr(wakeprobe.os, "read", failing_read)
    before = set(os.listdir("/proc"))
    with pytest.raises(KeyboardInterrupt):
        wakeprobe.roundtrip_us(0, 0, 0.0, 50)
    monkeypatch.undo()
    left = [
        pid
        for pid in set(os.listdir("/proc")) - before
        if pid.isdigit() and _parent(int(pid)) == os.getpid()
    ]
    assert left == []


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except OSError:
        return None
