"""The fault soak: a randomized workload against a real PostgreSQL or
MariaDB, through the real prism-wrapper process to real drivers, under
faults drawn from a seed, with a checker that holds the replicas to the
database. benchmark/soak.py runs it for minutes and publishes the figures;
tests/integration/test_soak.py runs a short, fixed plan in CI.

Not part of the data path. The world it runs in is support/soak_env.py; the
workload and its invariants support/soak_workload.py; the injectors
support/faults.py. One fault at a time: inject, hold, heal, then a gap
while the workload goes on. Every `checkpoint_every` faults, and at the
end, the soak quiesces (workload and writers paused, nothing faulted) and
checks:

- every table's replica in every driver equals `SELECT *` (rows compared
  column by column, as the consistency tests do);
- no reader saw half a transaction (the group invariant, watched between
  every two batches in every driver, in process and in the driver process);
- every answered write is in the database exactly once (the audit trigger);
- PostgreSQL: the slot's confirmed_flush_lsn reaches the WAL position of
  the pause, was never ahead of what the store holds, and kept advancing
  while the drivers were cut off;
- the store passes SQLite's integrity check.

The time from the last fault's heal to all of that being true is the
checkpoint's convergence time. A checkpoint that does not converge is a
divergence: the soak stops and prints the seed, the faults since the last
good checkpoint, the differences, and the command that replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prism.driver import PrismDriver
from prism.wrapper.store import StoreReader
from support.consistency import diff
from support.faults import ProcessFault
from support.soak_env import SoakEnv
from support.soak_workload import (
    SqlWorkload,
    WriteLedger,
    Writer,
    audit_problems,
    group_violations,
)

log = logging.getLogger("soak")

FAULTS = {
    "kill9": "kill -9 of the wrapper, restarted",
    "kill9_write": "kill -9 of the wrapper while a write is in flight",
    "sigstop": "SIGSTOP of the wrapper (a stalled process, its sockets open), then SIGCONT",
    "db_crash": "database crash (PostgreSQL immediate shutdown / mariadbd SIGKILL), restarted",
    "db_restart": "database clean restart (PostgreSQL fast shutdown / MariaDB shutdown)",
    "cut_app": "partition driver-wrapper: connections dropped, new ones refused (proxy)",
    "stall_app": "stall driver-wrapper: connections held open, nothing forwarded (proxy)",
    "slow_app": "slow link driver-wrapper: every chunk delayed (proxy)",
    "cut_db": "partition wrapper-database (proxy)",
    "stall_db": "stall wrapper-database (proxy)",
    "veth": "partition of the wrapper's node: its veth link down (kernel drops everything)",
    "driver_restart": "a driver closed and a new one started",
    "driver_stall": "a driver process stopped (SIGSTOP) for longer than the store's retention",
    "disk_full": "the store's file system full, until the wrapper reported it and a while more",
}
# How long a stalled database link may go unnoticed by the wrapper: its
# silence window (PostgreSQL: 6 status requests at the soak's 1 s interval;
# MariaDB: the binlog reader's 10 s read timeout) with a margin.
NOTICE_SILENCE_S = {"postgres": 10.0, "mariadb": 15.0}
KILLS = ("kill9", "kill9_write")
DB_RESTARTS = ("db_crash", "db_restart")
NETWORK = ("cut_app", "stall_app", "cut_db", "stall_db", "veth")

# The full soak's plan before it draws at random: the minimums
# (>= 10 kills, >= 3 database restarts, >= 5 partitions or stalls, >= 1
# full disk) with room to spare, shuffled by the seed.
BASE_PLAN = {
    "kill9": 8,
    "kill9_write": 4,
    "sigstop": 3,
    "db_crash": 3,
    "db_restart": 2,
    "cut_app": 3,
    "stall_app": 3,
    "slow_app": 2,
    "cut_db": 3,
    "stall_db": 3,
    "veth": 3,
    "driver_restart": 5,
    "driver_stall": 2,
    "disk_full": 2,
}


@dataclass
class SoakConfig:
    flavor: str  # postgres or mariadb
    seed: int
    work: Path
    minutes: float = 10.0  # the fault phase lasts at least this long
    min_transactions: int = 0  # ... and until this many committed
    plan: list[str] | None = None  # a fixed sequence (CI, replays) instead of the seed's draw
    checkpoint_every: int = 4
    retention_s: float = 20.0
    hold: tuple[float, float] = (1.0, 20.0)  # how long a fault lasts (each kind scales it)
    gap: tuple[float, float] = (1.0, 6.0)  # workload time between faults
    writers: int = 2  # PostgreSQL only
    initial_transactions: int = 300
    ddl_every: int = 150
    store_mb: int = 128
    netns: bool = True
    converge_timeout: float = 240.0
    full_detect_timeout: float = 120.0
    rate: float = 0.0  # the SQL workload's transactions per second (0: unbounded)


@dataclass
class FaultRecord:
    n: int
    kind: str
    at: float  # seconds since the soak started
    held: float = 0.0
    healed_at: float = 0.0
    detail: str = ""

    def line(self) -> str:
        text = f"#{self.n} t={self.at:.1f}s {self.kind} held {self.held:.1f}s {self.detail}"
        return text.rstrip()


class Divergence(AssertionError):
    pass


@dataclass
class Results:
    faults: list[FaultRecord] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    half_transactions: list[str] = field(default_factory=list)
    observations: int = 0
    slot_violations: list[str] = field(default_factory=list)
    slot_checks: int = 0
    slot_samples: int = 0
    wrapper_exits: list[dict[str, Any]] = field(default_factory=list)
    disk_full_reported: int = 0
    store_wal_max: int = 0  # bytes
    long_db_stalls: int = 0  # database link stalls past the wrapper's silence window
    long_db_stalls_noticed: int = 0
    divergent_rows: int = 0  # differences at the checkpoint that did not converge
    write_problems: list[str] = field(default_factory=list)
    process_half_transactions: list[str] = field(default_factory=list)
    served_while_full: int = 0
    sleeper_rebootstraps: int = 0


class Soak:
    def __init__(self, cfg: SoakConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.r = Results()
        self.t0 = time.monotonic()
        self.commit = _git_commit()  # what runs: taken at the start
        self.env: SoakEnv | None = None
        self.workload: SqlWorkload | None = None
        self.steady: PrismDriver | None = None
        self.flaky: PrismDriver | None = None
        self.writer_driver: PrismDriver | None = None
        self.sleeper: Any = None
        self.writers: list[Writer] = []
        self.ledger = WriteLedger()
        self.in_flight = asyncio.Event()
        self.writes_paused = False
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.closed_reconnects = 0
        self.driver_restarts = 0
        self.last_good = 0  # faults up to this index were followed by a good checkpoint
        self._expect_down = False
        self._monitor_stop = threading.Event()
        self._sleeper_bootstraps = 0
        self._sleeper_reconnects = 0
        self._sleeper_obs = 0
        self._looked = 0.0
        self.reconnects = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def e(self) -> SoakEnv:
        assert self.env is not None
        return self.env

    # -- set-up -------------------------------------------------------------
    async def setup(self) -> None:
        cfg = self.cfg
        self.env = await asyncio.to_thread(
            SoakEnv.create, cfg.flavor, cfg.work, cfg.retention_s, cfg.store_mb, cfg.netns
        )
        db = self.e.db
        wl = db.workload(cfg.seed)

        def initial() -> None:
            conn = db.connect()
            try:
                wl.run(conn, cfg.initial_transactions)
            finally:
                conn.close()

        await asyncio.to_thread(initial)
        await asyncio.to_thread(self.e.wrapper.start, True, 120.0)
        self.steady = self.e.driver()
        self.flaky = self.e.driver()
        drivers = [self.steady, self.flaky]
        if self.writes_enabled:
            self.writer_driver = self.e.driver()
            drivers.append(self.writer_driver)
        for d in drivers:
            await d.start()
        for d in drivers:
            await d.wait_ready(timeout=120)
        self.sleeper = self.e.sleeper()
        self.workload = SqlWorkload(wl, db.connect, db.flavor, cfg.seed, cfg.ddl_every, cfg.rate)
        self.workload.start()
        self.tasks.append(asyncio.create_task(self._observe(), name="observer"))
        self.tasks.append(asyncio.create_task(self._watch_wrapper(), name="watchdog"))
        if self.writes_enabled:
            assert self.writer_driver is not None
            for i in range(cfg.writers):
                w = Writer(
                    self.writer_driver,
                    i,
                    cfg.seed,
                    self.ledger,
                    self.in_flight,
                    lambda: self.writes_paused,
                )
                self.writers.append(w)
                self.tasks.append(asyncio.create_task(w.run(self.stop), name=f"writer{i}"))
        threading.Thread(target=self._monitor_store, daemon=True).start()

    @property
    def writes_enabled(self) -> bool:
        return self.cfg.flavor == "postgres" and self.cfg.writers > 0

    def available(self, kind: str) -> bool:
        e = self.e
        if kind == "veth":
            return e.veth is not None
        if kind == "disk_full":
            return e.disk.mounted
        if kind == "kill9_write":
            return self.writes_enabled
        return kind in FAULTS

    # -- background watchers --------------------------------------------------
    def _drivers(self) -> list[PrismDriver]:
        return [d for d in (self.steady, self.flaky, self.writer_driver) if d is not None]

    async def _observe(self) -> None:
        """The half-transaction check, between every two batches applied."""
        table = self.e.db.group_table
        while True:
            for d in self._drivers():
                t = d._replica.tables.get(table)
                if t is None or not d._sub.ready.is_set():
                    continue
                self.r.observations += 1
                problems = group_violations(t.rows)
                if problems and len(self.r.half_transactions) < 50:
                    self.r.half_transactions.append(
                        f"t={self.now():.1f}s driver at position {d.position}: {problems[:3]}"
                    )
            await asyncio.sleep(0.002)

    async def _watch_wrapper(self) -> None:
        """Restart the wrapper when it exits by itself (as systemd would), and
        record it: under these faults it should never have to."""
        w = self.e.wrapper
        while True:
            await asyncio.sleep(0.5)
            if self._expect_down or w.proc is None or w.proc.poll() is None:
                continue
            code = w.proc.returncode
            tail = w.log_tail(1500)
            self.r.wrapper_exits.append({"at": round(self.now(), 1), "code": code, "log": tail})
            log.warning("the wrapper exited by itself with %s; restarting it", code)
            await asyncio.to_thread(w.start, False)

    def _monitor_store(self) -> None:
        """Acknowledge only what is stored: PostgreSQL's slot confirmed_flush_lsn
        is never past the store's source position (same stream). And how
        large the store's SQLite WAL grows (a reader that holds a snapshot,
        a stalled subscriber, keeps it from being reset)."""
        db, path = self.e.db, self.e.store_path
        wal = path.with_name(path.name + "-wal")
        conn = reader = None
        while not self._monitor_stop.wait(0.25):
            with contextlib.suppress(OSError):
                self.r.store_wal_max = max(self.r.store_wal_max, wal.stat().st_size)
            if db.flavor != "postgres":
                continue
            try:
                if conn is None:
                    conn = db.connect()
                if reader is None:
                    reader = StoreReader(path)
                slot = db.slot_lsn(conn)
                with reader.snapshot() as meta:
                    pass
                if slot is None or not meta.snapshot_done:
                    continue
                self.r.slot_samples += 1
                if slot > meta.source_position and len(self.r.slot_violations) < 20:
                    self.r.slot_violations.append(
                        f"t={self.now():.1f}s: slot confirmed {slot:X}, store holds only up to "
                        f"{meta.source_position:X}"
                    )
            except Exception:
                with contextlib.suppress(Exception):
                    if conn is not None:
                        conn.close()
                conn = None
                if reader is not None:
                    with contextlib.suppress(Exception):
                        reader.close()
                reader = None
        if conn is not None:
            conn.close()

    # -- the plan -------------------------------------------------------------
    def plan(self) -> list[str]:
        if self.cfg.plan is not None:
            return [k for k in self.cfg.plan if self.available(k)]
        base = [k for k, n in BASE_PLAN.items() for _ in range(n) if self.available(k)]
        self.rng.shuffle(base)
        return base

    def draw(self) -> str:
        kinds = [k for k in BASE_PLAN if self.available(k)]
        weights = [BASE_PLAN[k] for k in kinds]
        return self.rng.choices(kinds, weights)[0]

    def hold(self, lo: float, hi: float) -> float:
        """A hold within the kind's range, scaled to the soak's."""
        top = min(hi, self.cfg.hold[1])
        bottom = min(max(lo, self.cfg.hold[0]), top)
        return self.rng.uniform(bottom, top)

    # -- main loop --------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        try:
            await self.setup()
            await self._loop()
        except Divergence as exc:
            self.r.failures.append(str(exc))
            log.error("%s", exc)
        except asyncio.CancelledError:
            # Interrupted (SIGINT, SIGTERM): tear down, report what was seen.
            self.r.failures.append(f"interrupted at t={self.now():.0f}s, not a full soak")
            log.warning("interrupted: tearing down")
        finally:
            await self.teardown()
        return self.report()

    def _done(self, planned_left: int) -> bool:
        if planned_left:
            return False
        if self.cfg.plan is not None:
            return True
        assert self.workload is not None
        return self.now() >= self.cfg.minutes * 60 and self.committed() >= self.cfg.min_transactions

    async def _loop(self) -> None:
        planned = self.plan()
        since = 0
        while not self._done(len(planned)):
            kind = planned.pop(0) if planned else self.draw()
            await asyncio.sleep(self.rng.uniform(*self.cfg.gap))
            rec = FaultRecord(len(self.r.faults) + 1, kind, round(self.now(), 2))
            self.r.faults.append(rec)
            await getattr(self, f"_fault_{kind}")(rec)
            rec.healed_at = round(self.now(), 2)
            log.info("fault %s", rec.line())
            since += 1
            if since >= self.cfg.checkpoint_every and not self._done(len(planned)):
                await self.checkpoint()
                since = 0
        await self.checkpoint(final=True)

    # -- faults ---------------------------------------------------------------
    async def _restart_wrapper(self, rec: FaultRecord, down_s: float) -> None:
        w = self.e.wrapper
        await asyncio.sleep(down_s)
        try:
            await asyncio.to_thread(w.start, True, 120.0)
        except AssertionError as exc:
            rec.detail += f" (restart: {str(exc)[:200]})"
        finally:
            self._expect_down = False

    async def _kill(self, rec: FaultRecord) -> None:
        w = self.e.wrapper
        assert w.proc is not None
        self._expect_down = True
        ProcessFault.kill9(w.proc.pid)
        await asyncio.to_thread(w.proc.wait)
        rec.held = round(self.rng.uniform(0.0, 1.5), 2)
        await self._restart_wrapper(rec, rec.held)

    async def _fault_kill9(self, rec: FaultRecord) -> None:
        await self._kill(rec)

    async def _fault_kill9_write(self, rec: FaultRecord) -> None:
        deadline = time.monotonic() + 10
        while not self.in_flight.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        await asyncio.sleep(self.rng.uniform(0.0, 0.02))
        rec.detail = "a write in flight" if any(w.busy for w in self.writers) else "no write"
        await self._kill(rec)

    async def _fault_sigstop(self, rec: FaultRecord) -> None:
        w = self.e.wrapper
        assert w.proc is not None
        rec.held = round(self.hold(1.0, 25.0), 2)
        ProcessFault.stop(w.proc.pid)
        try:
            await asyncio.sleep(rec.held)
        finally:
            ProcessFault.cont(w.proc.pid)

    async def _db_down(self, rec: FaultRecord, crash: bool) -> None:
        server = self.e.db.server
        rec.held = round(self.hold(0.5, 5.0), 2)
        await asyncio.to_thread(server.crash if crash else server.shutdown)
        await asyncio.sleep(rec.held)
        await asyncio.to_thread(server.start)

    async def _fault_db_crash(self, rec: FaultRecord) -> None:
        await self._db_down(rec, crash=True)

    async def _fault_db_restart(self, rec: FaultRecord) -> None:
        await self._db_down(rec, crash=False)

    async def _drivers_away(self, rec: FaultRecord, cut: Any, restore: Any) -> None:
        """Drivers cut off: PostgreSQL's slot must keep advancing meanwhile
        (a dead driver never holds WAL). Held at least until the slot
        confirmed the WAL position of the cut's start, or 60 s."""
        db = self.e.db
        rec.held = round(self.hold(1.0, 20.0), 2)
        start_lsn = None
        if db.flavor == "postgres":
            start_lsn = await asyncio.to_thread(self._wal_lsn)
        cut()
        started = time.monotonic()
        try:
            await asyncio.sleep(rec.held)
            if start_lsn is not None:
                self.r.slot_checks += 1
                deadline = time.monotonic() + 60
                while True:
                    slot = await asyncio.to_thread(self._slot_lsn)
                    if slot is not None and slot >= start_lsn:
                        rec.detail = "slot advanced while drivers were away"
                        break
                    if time.monotonic() > deadline:
                        self.r.slot_violations.append(
                            f"fault #{rec.n}: drivers away 60 s, slot still at "
                            f"{slot or 0:X} < {start_lsn:X} (WAL at the cut)"
                        )
                        break
                    await asyncio.sleep(0.2)
        finally:
            restore()
            rec.held = round(time.monotonic() - started, 2)

    def _wal_lsn(self) -> int | None:
        conn = self.e.db.connect()
        try:
            return self.e.db.wal_lsn(conn)
        finally:
            conn.close()

    def _slot_lsn(self) -> int | None:
        conn = self.e.db.connect()
        try:
            return self.e.db.slot_lsn(conn)
        finally:
            conn.close()

    async def _fault_cut_app(self, rec: FaultRecord) -> None:
        p = self.e.app_proxy
        await self._drivers_away(rec, p.cut, p.restore)

    async def _fault_stall_app(self, rec: FaultRecord) -> None:
        p = self.e.app_proxy
        await self._drivers_away(rec, p.stall, p.restore)

    async def _fault_slow_app(self, rec: FaultRecord) -> None:
        p = self.e.app_proxy
        rec.held = round(self.hold(2.0, 10.0), 2)
        delay = self.rng.uniform(0.01, 0.2)
        rec.detail = f"{delay * 1000:.0f} ms per chunk"
        p.delay(delay)
        try:
            await asyncio.sleep(rec.held)
        finally:
            p.restore()

    async def _link_fault(self, rec: FaultRecord, cut: Any, restore: Any, hi: float) -> None:
        rec.held = round(self.hold(1.0, hi), 2)
        cut()
        try:
            await asyncio.sleep(rec.held)
        finally:
            restore()

    async def _fault_cut_db(self, rec: FaultRecord) -> None:
        p = self.e.db_proxy
        await self._link_fault(rec, p.cut, p.restore, 10.0)

    async def _fault_stall_db(self, rec: FaultRecord) -> None:
        """A stalled database link never closes by itself: past its silence
        window the wrapper must notice it (and stream over a new connection,
        which the stalled proxy lets through)."""
        p = self.e.db_proxy
        log_path = self.e.wrapper.log_path
        seen = log_path.stat().st_size if log_path.exists() else 0
        await self._link_fault(rec, p.stall, p.restore, 20.0)
        if rec.held < NOTICE_SILENCE_S[self.cfg.flavor]:
            return
        with log_path.open("rb") as fh:
            fh.seek(seen)
            noticed = b"source error" in fh.read()
        rec.detail = "noticed by the wrapper" if noticed else "NOT noticed by the wrapper"
        self.r.long_db_stalls += 1
        self.r.long_db_stalls_noticed += noticed
        if not noticed and self.cfg.flavor == "postgres":
            self.r.failures.append(
                f"fault #{rec.n}: the database link was stalled {rec.held:.1f}s and the wrapper "
                "never noticed (no source error logged; Health said SERVING)"
            )
        # MySQL/MariaDB: the binlog connection notices (heartbeats, a 10 s read
        # timeout), but a catalog query on the source's admin connection, which
        # has no read timeout, can hold the pipeline until the stall ends: a
        # known gap, counted and published rather than failed.

    async def _fault_veth(self, rec: FaultRecord) -> None:
        v = self.e.veth
        assert v is not None
        await self._link_fault(rec, v.partition, v.heal, 20.0)

    async def _fault_driver_restart(self, rec: FaultRecord) -> None:
        if self.flaky is not None:
            self.closed_reconnects += int(self.flaky.stats()["reconnects"])
            await self.flaky.close()
        self.driver_restarts += 1
        self.flaky = self.e.driver()
        await self.flaky.start()

    async def _fault_driver_stall(self, rec: FaultRecord) -> None:
        before = await asyncio.to_thread(self.sleeper.dump)
        purge_every = min(60.0, self.cfg.retention_s / 4)
        rec.held = round(self.cfg.retention_s + 2 * purge_every + self.rng.uniform(1.0, 4.0), 2)
        rec.detail = f"retention {self.cfg.retention_s:g}s"
        self._sleeper_bootstraps = int(before["stats"]["bootstraps"])
        ProcessFault.stop(self.sleeper.proc.pid)
        try:
            await asyncio.sleep(rec.held)
        finally:
            ProcessFault.cont(self.sleeper.proc.pid)

    async def _fault_disk_full(self, rec: FaultRecord) -> None:
        """Fill the store's disk; hold until the wrapper says so in Health
        (the workload goes on meanwhile), check that it stays up and still
        serves a bootstrap, then free the space: it must resume by itself."""
        e = self.e
        log_path = e.wrapper.log_path
        seen = log_path.stat().st_size if log_path.exists() else 0
        filled = await asyncio.to_thread(e.disk.fill)
        rec.detail = f"filled {filled >> 20} MB"
        started = time.monotonic()
        reported = ""
        try:
            while time.monotonic() - started < self.cfg.full_detect_timeout:
                try:
                    h = await asyncio.to_thread(e.wrapper.health)
                    if "full" in h.detail.lower() and h.status != "SERVING":
                        reported = h.detail
                        break
                except Exception:
                    pass
                await asyncio.sleep(0.5)
            if not reported:
                rec.detail += f"; not reported in {self.cfg.full_detect_timeout:g}s"
                self.r.failures.append(
                    f"fault #{rec.n} (disk full): Health did not report it within "
                    f"{self.cfg.full_detect_timeout:g}s"
                )
                return
            self.r.disk_full_reported += 1
            rec.detail += f"; reported after {time.monotonic() - started:.1f}s: {reported[:120]}"
            fresh = e.driver()
            try:
                await fresh.start()
                await fresh.wait_ready(timeout=60)
                self.r.served_while_full += 1
            except Exception as exc:
                self.r.failures.append(f"fault #{rec.n} (disk full): no bootstrap served: {exc}")
            finally:
                await fresh.close()
            await asyncio.sleep(self.hold(1.0, 10.0))
        finally:
            e.disk.free()
            rec.held = round(time.monotonic() - started, 2)
        if reported:
            await self._resumed_once(rec, log_path, seen)

    async def _resumed_once(self, rec: FaultRecord, log_path: Path, seen: int) -> None:
        """After the space came back: the wrapper says so by itself, and
        told the episode once (no flapping between full and not)."""
        deadline = time.monotonic() + self.cfg.converge_timeout
        while True:
            with log_path.open("rb") as fh:
                fh.seek(seen)
                text = fh.read().decode("utf-8", "replace")
            if "store has room again" in text or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        full, room = text.count("store disk full: not acknowledging"), text.count("room again")
        if (full, room) != (1, 1):
            self.r.failures.append(
                f"fault #{rec.n} (disk full): the wrapper logged 'disk full' {full} times and "
                f"'room again' {room} times, not once each"
            )

    # -- checkpoints ----------------------------------------------------------
    def committed(self) -> int:
        sql = self.workload.counts.committed if self.workload else 0
        return sql + len(self.ledger.acked) + len(self.ledger.lagged)

    async def checkpoint(self, final: bool = False) -> None:
        """Quiesce and check; raise Divergence if the replicas do not come
        to equal the database in time."""
        assert self.workload is not None
        healed = self.now()
        await asyncio.to_thread(self.workload.pause)
        self.writes_paused = True
        deadline = time.monotonic() + self.cfg.converge_timeout
        while any(w.busy for w in self.writers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pause_lsn = (
            await asyncio.to_thread(self._wal_lsn) if self.e.db.flavor == "postgres" else None
        )
        caught_up = await self._caught_up(deadline)
        problems: list[str] = []
        first = True
        while True:
            problems = await self._compare()
            if not problems or time.monotonic() > deadline:
                break
            first = False
            await asyncio.sleep(0.5)
        # Converged when every driver reached the head that holds all the
        # database committed, if the comparison then agreed; else by the
        # look that found them equal.
        converged = caught_up if caught_up is not None and first else self._looked
        self.r.divergent_rows = len(problems)
        if not problems and pause_lsn is not None:
            problems += await self._slot_reaches(pause_lsn)
        self.r.write_problems = await asyncio.to_thread(self._audit)
        problems += self.r.write_problems
        problems += await asyncio.to_thread(self._integrity)
        half = self.r.half_transactions + self.r.process_half_transactions
        problems += [f"half transaction seen: {h}" for h in half]
        problems += [f"acknowledged beyond the store: {v}" for v in self.r.slot_violations]
        problems += self.ledger.ryw_violations
        cp = {
            "n": len(self.r.checkpoints) + 1,
            "at": round(healed, 1),
            "after_fault": len(self.r.faults),
            "converge_s": round(converged - healed, 2),
            "committed": self.committed(),
            "ok": not problems,
        }
        self.r.checkpoints.append(cp)
        log.info("checkpoint %s", cp)
        if problems:
            raise Divergence(self.describe_divergence(problems))
        self.last_good = len(self.r.faults)
        if not final:
            self.writes_paused = False
            self.workload.resume()

    async def _caught_up(self, deadline: float) -> float | None:
        """When the wrapper's store held everything the database committed
        before the pause and every driver showed the wrapper's head (None:
        not within a minute; the comparison then decides)."""
        db, wrapper = self.e.db, self.e.wrapper
        conn = await asyncio.to_thread(db.connect)
        try:
            mark = await asyncio.to_thread(db.source_mark, conn)
            until = min(deadline, time.monotonic() + 60)
            while time.monotonic() < until:
                try:
                    health = await asyncio.to_thread(wrapper.health)
                    if await asyncio.to_thread(db.wrapper_has, conn, mark, health):
                        # The head now holds all of it (read after the check).
                        head = (await asyncio.to_thread(wrapper.health)).head_position
                        at = [d.position for d in self._drivers()]
                        at.append(await asyncio.to_thread(self.sleeper.position))
                        if min(at) >= head:
                            return self.now()
                except Exception:
                    pass  # the wrapper still starting: look again
                await asyncio.sleep(0.1)
            return None
        finally:
            conn.close()

    async def _compare(self) -> list[str]:
        db = self.e.db
        conn = await asyncio.to_thread(db.connect)
        try:
            expected = {
                t: await asyncio.to_thread(db.rows_of, conn, t, k) for t, k in db.keys.items()
            }
        finally:
            conn.close()
        # The database is quiesced: what it holds now is what every replica must show.
        self._looked = self.now()
        problems = []
        named = [("steady", self.steady), ("flaky", self.flaky), ("writer", self.writer_driver)]
        for name, d in named:
            if d is None:
                continue
            for table, want in expected.items():
                got = d._replica.tables.get(table)
                if got is None:
                    problems.append(f"{name}: table {table} not in its replica")
                    continue
                problems += [f"{name}: {table}: {p}" for p in diff(want, dict(got.rows))]
        try:
            dump = await asyncio.to_thread(self.sleeper.dump, 30.0)
        except Exception as exc:
            return [*problems, f"driver process: no answer: {exc}"]
        self._sleeper_reconnects = int(dump["stats"]["reconnects"])
        if int(dump["stats"]["bootstraps"]) > self._sleeper_bootstraps > 0:
            self.r.sleeper_rebootstraps += 1
            self._sleeper_bootstraps = int(dump["stats"]["bootstraps"])
        self.r.process_half_transactions = [f"driver process: {v}" for v in dump["violations"]]
        self.r.observations += int(dump["observations"]) - self._sleeper_obs
        self._sleeper_obs = int(dump["observations"])
        for table, want in expected.items():
            got = dump["rows"].get(table)
            if got is None:
                problems.append(f"driver process: table {table} not in its replica")
                continue
            problems += [f"driver process: {table}: {p}" for p in diff(want, got)]
        return problems

    async def _slot_reaches(self, lsn: int, timeout: float = 60.0) -> list[str]:
        """The replicas are whole: the slot must confirm what was written
        before the pause (the wrapper confirms idle positions every second)."""
        self.r.slot_checks += 1
        deadline = time.monotonic() + timeout
        while True:
            slot = await asyncio.to_thread(self._slot_lsn)
            if slot is not None and slot >= lsn:
                return []
            if time.monotonic() > deadline:
                return [
                    f"slot confirmed {slot or 0:X} {timeout:g}s after the replicas converged, "
                    f"not the WAL position of the pause {lsn:X}"
                ]
            await asyncio.sleep(0.2)

    def _audit(self) -> list[str]:
        if not self.writes_enabled:
            return []
        conn = self.e.db.connect()
        try:
            return audit_problems(conn, self.ledger)
        finally:
            conn.close()

    def _integrity(self) -> list[str]:
        conn = sqlite3.connect(f"file:{self.e.store_path}?mode=ro", uri=True)
        try:
            (result,) = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
        return [] if result == "ok" else [f"store integrity: {result}"]

    def describe_divergence(self, problems: list[str]) -> str:
        since = self.r.faults[self.last_good :]
        replay = ",".join(f.kind for f in since)
        try:
            h = self.e.wrapper.health()
            health = f"{h.status} {h.detail[:300]}".strip()
        except Exception as exc:
            health = f"no answer ({type(exc).__name__})"
        lines = [
            f"DIVERGENCE in the {self.cfg.flavor} soak, seed {self.cfg.seed}, at checkpoint "
            f"{len(self.r.checkpoints)} (t={self.now():.1f}s)",
            f"the wrapper's Health: {health}",
            "faults since the last consistent checkpoint:",
            *(f"  {f.line()}" for f in since),
            f"{len(problems)} problems (first 20):",
            *(f"  {p}" for p in problems[:20]),
            f"replay: python benchmark/soak.py --db {self.cfg.flavor} --seed {self.cfg.seed} "
            f"--plan {replay}",
        ]
        return "\n".join(lines)

    # -- teardown and report ------------------------------------------------------
    async def teardown(self) -> None:
        self.stop.set()
        self._monitor_stop.set()
        if self.workload is not None:
            await asyncio.to_thread(self.workload.stop)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.reconnects = self.closed_reconnects + self._sleeper_reconnects
        for d in self._drivers():
            self.reconnects += int(d.stats()["reconnects"])
            with contextlib.suppress(Exception):
                await d.close()
        if self.sleeper is not None:
            await asyncio.to_thread(self.sleeper.close)
        if self.env is not None:
            await asyncio.to_thread(self.env.close)

    def failures(self) -> list[str]:
        """What fails the soak. A wrapper that exits by itself does, unless it
        gave up after database.retry_limit failed attempts in a row: that
        exit is the documented end of a long database outage (faults back to
        back can add up to one), for systemd, here the watchdog, to restart."""
        out = list(self.r.failures)
        out += [
            f"the wrapper exited by itself at t={x['at']}s with {x['code']}: {x['log'][-300:]}"
            for x in self.r.wrapper_exits
            if "database.retry_limit" not in x["log"]
        ]
        return out

    def report(self) -> dict[str, Any]:
        counts = Counter(f.kind for f in self.r.faults)
        conv = [c["converge_s"] for c in self.r.checkpoints if c["ok"]]
        wl = self.workload.counts if self.workload else None
        led = self.ledger
        figures = {
            "committed_transactions": self.committed(),
            "wrapper_kill9": sum(counts[k] for k in KILLS),
            "driver_reconnects": getattr(self, "reconnects", 0),
            "db_restarts": sum(counts[k] for k in DB_RESTARTS),
            "partitions_or_stalls": sum(counts[k] for k in NETWORK) + counts["sigstop"],
            "full_disks": self.r.disk_full_reported,
            "divergent_rows": self.r.divergent_rows,
            "half_transactions_seen": len(self.r.half_transactions)
            + len(self.r.process_half_transactions),
            "lost_or_doubled_writes": len(self.r.write_problems),
            "converge_s_p50": _percentile(conv, 50),
            "converge_s_max": max(conv) if conv else None,
        }
        return {
            "flavor": self.cfg.flavor,
            "seed": self.cfg.seed,
            "commit": self.commit,
            "seconds": round(self.now(), 1),
            "config": {k: v for k, v in asdict(self.cfg).items() if k != "work"},
            "ok": not self.failures(),
            "failures": self.failures(),
            "figures": figures,
            "faults": dict(sorted(counts.items())),
            "fault_log": [asdict(f) for f in self.r.faults],
            "checkpoints": self.r.checkpoints,
            "workload": asdict(wl) if wl else {},
            "writes": {
                "requests": len(led.ops),
                "acked": len(led.acked),
                "lagged": len(led.lagged),
                "failed": led.failed,
                "unknown_outcomes": led.unknown_outcomes,
                "retried": led.retried,
                "replayed": led.replayed,
                "read_your_writes_violations": led.ryw_violations,
            },
            "observations": self.r.observations,
            "half_transactions": self.r.half_transactions + self.r.process_half_transactions,
            "slot": {
                "samples": self.r.slot_samples,
                "checks": self.r.slot_checks,
                "violations": self.r.slot_violations,
            },
            "disk_full": {
                "reported": self.r.disk_full_reported,
                "bootstraps_served_while_full": self.r.served_while_full,
            },
            "store_wal_max_bytes": self.r.store_wal_max,
            "long_db_stalls": {
                "count": self.r.long_db_stalls,
                "noticed": self.r.long_db_stalls_noticed,
            },
            "driver_restarts": self.driver_restarts,
            "driver_process_rebootstraps": self.r.sleeper_rebootstraps,
            "wrapper_exits": self.r.wrapper_exits,
            "notes": self.e.notes if self.env else [],
        }


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 2)


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except OSError:
        return ""


async def run_soak(cfg: SoakConfig, interruptible: bool = False) -> dict[str, Any]:
    """Run one soak. With `interruptible`, SIGINT and SIGTERM end it early
    but cleanly (servers stopped, namespace and mount removed), with a report
    that says so."""
    soak = Soak(cfg)
    task = asyncio.current_task()
    if interruptible and task is not None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
    return await soak.run()
