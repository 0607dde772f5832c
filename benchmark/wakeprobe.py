"""The price of waking a sleeping thread on this machine: what each hand-off
of a write's path costs before any of its work (writes.py).

A sequential `driver.write(wait=True)` puts threads to sleep and wakes them
some 50 times across the driver, the wrapper and PostgreSQL (writes.py
counts them: "Context switches per call"). What one wake costs is the
machine's, not the code's: on a VM, waking a thread on a vCPU that has
halted (nothing to run, so it gave its physical CPU back to the host) takes
an interrupt through the hypervisor, where a vCPU still polling for work
takes it at once. Linux's cpuidle `haltpoll` driver polls for up to
`guest_halt_poll_ns` before it halts; this VM boots with it at 0.

Measured here: the round trip of one byte between two processes over pipes
(each side sleeps in read(), so each leg is one wake), with both processes
on one CPU and on two, back to back and with a 0.5 ms pause between round
trips (as between a write's steps, long enough for an idle vCPU to halt).
With `--halt-poll-ns N` (root; Linux's haltpoll), the same again with
`guest_halt_poll_ns` set to N, then set back to what it was.

    python benchmark/wakeprobe.py [--halt-poll-ns 200000]

Results go to results/wakeprobe.json and the "Wake-ups" section of README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentiles, replace_readme_section

HERE = Path(__file__).resolve().parent
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
CPUIDLE = Path("/sys/devices/system/cpu/cpuidle/current_driver")
START, END = "<!-- wakeprobe:start -->", "<!-- wakeprobe:end -->"
WARMUP = 100
T = TypeVar("T")


def roundtrip_us(cpu_a: int, cpu_b: int, pause_s: float, n: int) -> dict[str, float]:
    """p50/p99 µs of a one-byte round trip between this process (on cpu_a)
    and a child (on cpu_b), each blocked in read() until the other writes."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo each byte back until the parent's end closes
        try:
            os.close(from_parent)
            os.close(to_parent)
            os.sched_setaffinity(0, {cpu_b})
            while os.read(to_child, 1):
                os.write(from_child, b"x")
        finally:
            os._exit(0)
    os.close(to_child)
    os.close(from_child)
    before = os.sched_getaffinity(0)
    lat: list[float] = []
    try:
        os.sched_setaffinity(0, {cpu_a})
        for i in range(n + WARMUP):
            t = time.perf_counter_ns()
            os.write(from_parent, b"x")
            os.read(to_parent, 1)
            if i >= WARMUP:
                lat.append((time.perf_counter_ns() - t) / 1000)
            if pause_s:
                time.sleep(pause_s)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.sched_setaffinity(0, before)
        os.close(from_parent)  # the child reads end-of-file and leaves
        os.close(to_parent)
        os.waitpid(pid, 0)
    p = percentiles(lat)
    return {"p50": p["p50"], "p99": p["p99"]}


def probe(n: int) -> dict[str, dict[str, float]]:
    """Each placement and pause, as named in the report."""
    cpus = sorted(os.sched_getaffinity(0))
    cases = {"same CPU": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        cases["two CPUs"] = (cpus[0], cpus[1])
    out = {}
    for name, (a, b) in cases.items():
        for pause in (0.0, 0.0005):
            label = f"{name}, {'0.5 ms apart' if pause else 'back to back'}"
            out[label] = roundtrip_us(a, b, pause, n)
    return out


def read_setting(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def with_halt_poll(ns: int, original: str, measure: Callable[[], T]) -> T:
    """`measure()` with haltpoll's guest_halt_poll_ns at `ns`, the original
    value put back however it ends: an exception, Ctrl-C, SIGTERM or SIGHUP
    (turned into SystemExit meanwhile, so that the finally runs)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    print(
        f"guest_halt_poll_ns set to {ns} for the measurement; if this run is killed, "
        f"put it back: echo {original} > {HALT_POLL}",
        file=sys.stderr,
    )
    try:
        HALT_POLL.write_text(str(ns))
        return measure()
    finally:
        HALT_POLL.write_text(original)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def report(res: dict) -> str:  # type: ignore[type-arg]
    settings = list(res["runs"])
    cases = list(res["runs"][settings[0]])
    head = " | ".join(f"{s}: p50 / p99 µs" for s in settings)
    lines = [
        START,
        f"Run of {res['date']}: cpuidle driver `{res['cpuidle_driver']}`, "
        f"`guest_halt_poll_ns` {res['guest_halt_poll_ns']} as the machine runs; "
        f"{res['calls']} round trips a case (`python benchmark/wakeprobe.py"
        + (f" --halt-poll-ns {res['halt_poll_ns']}" if res.get("halt_poll_ns") else "")
        + "`).",
        "",
        f"| a one-byte round trip between two processes (two wakes) | {head} |",
        "| --- |" + " --- |" * len(settings),
    ]
    for case in cases:
        cells = " | ".join(
            f"{res['runs'][s][case]['p50']:.1f} / {res['runs'][s][case]['p99']:.1f}"
            for s in settings
        )
        lines.append(f"| {case} | {cells} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument(
        "--halt-poll-ns",
        type=int,
        default=None,
        help="also measure with haltpoll's guest_halt_poll_ns at this value (root; set back after)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "wakeprobe.json")
    args = ap.parse_args()
    original = read_setting(HALT_POLL)
    res: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "calls": args.calls,
        "cpuidle_driver": read_setting(CPUIDLE) or "unknown",
        "guest_halt_poll_ns": original if original is not None else "n/a",
    }
    if args.halt_poll_ns is not None:
        # Checked before any probe: a run that cannot set it measures nothing.
        if original is None:
            print(f"{HALT_POLL} is not there: no haltpoll to set", file=sys.stderr)
            return 2
        if not os.access(HALT_POLL, os.W_OK):
            print(f"cannot write {HALT_POLL}: run as root", file=sys.stderr)
            return 2
    runs = {f"as it runs ({original if original is not None else 'n/a'} ns)": probe(args.calls)}
    if args.halt_poll_ns is not None:
        assert original is not None
        runs[f"halt polling {args.halt_poll_ns} ns"] = with_halt_poll(
            args.halt_poll_ns, original, lambda: probe(args.calls)
        )
        res["halt_poll_ns"] = args.halt_poll_ns
    res["runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    table = report(res)
    replace_readme_section(START, END, "## Wake-ups (`python benchmark/wakeprobe.py`)", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
