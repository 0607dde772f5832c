"""The soak's workload (tests/support/soak.py): what it does to the database.

Not part of the data path. Three parts, each with the invariant the checker
holds it to:

- `SqlWorkload`, a thread on its own connection: the consistency Workload's
  random transactions (inserts, updates, key changes, deletes, rollbacks,
  TOAST, NULLs, multi-row; PostgreSQL or MariaDB) mixed with *group
  transactions* and DDL. It survives database crashes, restarts and cut
  links: a failed transaction is abandoned, the connection made anew and
  the workload's view of which keys exist read back from the database
  (the lost COMMIT's outcome is unknown).
- Group transactions, the per-transaction invariant: table `grp` holds
  GROUPS groups of GROUP_ROWS rows. A transaction rewrites every row of
  1-3 groups with its own number `txn` and the list of groups it touched
  (`peers`), and moves amounts between those rows so that the sum of `v`
  never changes. A reader that sees half a transaction sees a group whose
  rows disagree, a peer group still older than the transaction, or another
  sum: `group_violations` finds each.
- `Writer` (PostgreSQL only; writes through the wrapper are PostgreSQL-only):
  `driver.write_many` with a request id, retried with the same id after
  every retriable error (WriteOutcomeUnknownError above all) until it has
  an answer. A trigger logs every row a write applies into `wrt_audit`, in
  the write's own transaction, so "exactly once" is checked in the database
  itself: each request's rows appear there once, never twice, never not.
- DDL: table `evolve` gets a column added and an older one dropped, in a
  transaction that also changes one of its rows (PostgreSQL describes a
  table to a logical subscriber only with its next change), and now and
  then a TRUNCATE and refill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prism.driver import (
    DriverError,
    PrismDriver,
    ReplicaLagError,
    WriteOp,
    WriteOutcomeUnknownError,
)
from support.consistency import Workload

log = logging.getLogger("soak.workload")

GROUPS = 40
GROUP_ROWS = 4
GROUP_START = 1000  # each row's v at the start: the sum never changes
GROUP_SUM = GROUPS * GROUP_ROWS * GROUP_START
EVOLVE_ROWS = 30
ITEMS_CAP, TRIM_ROWS = 8000, 400

PG_EXTRA_SCHEMA = f"""
CREATE TABLE grp (
    g integer, k integer, txn bigint NOT NULL, peers text NOT NULL, v bigint NOT NULL,
    PRIMARY KEY (g, k)
);
INSERT INTO grp SELECT g, k, 0, g::text, {GROUP_START}
    FROM generate_series(0, {GROUPS - 1}) g, generate_series(0, {GROUP_ROWS - 1}) k;
CREATE TABLE evolve (id integer PRIMARY KEY, v integer NOT NULL);
INSERT INTO evolve SELECT g, 0 FROM generate_series(1, {EVOLVE_ROWS}) g;
CREATE TABLE wrt (id bigint PRIMARY KEY, val bigint, rid text);
CREATE TABLE wrt_audit (rid text NOT NULL, id bigint NOT NULL, val bigint);
CREATE FUNCTION wrt_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wrt_audit VALUES (NEW.rid, NEW.id, NEW.val);
    RETURN NEW;
END $$;
CREATE TRIGGER wrt_audit AFTER INSERT OR UPDATE ON wrt
    FOR EACH ROW EXECUTE FUNCTION wrt_audit();
"""

MYSQL_EXTRA_SCHEMA = """
CREATE TABLE grp (
    g INT, k INT, txn BIGINT NOT NULL, peers VARCHAR(100) NOT NULL, v BIGINT NOT NULL,
    PRIMARY KEY (g, k)
) ENGINE = InnoDB;
CREATE TABLE evolve (id INT PRIMARY KEY, v INT NOT NULL) ENGINE = InnoDB
"""


def mysql_extra_rows(cur: Any) -> None:
    cur.executemany(
        "INSERT INTO grp VALUES (%s, %s, 0, %s, %s)",
        [(g, k, str(g), GROUP_START) for g in range(GROUPS) for k in range(GROUP_ROWS)],
    )
    cur.executemany("INSERT INTO evolve VALUES (%s, 0)", [(i,) for i in range(1, EVOLVE_ROWS + 1)])


EXTRA_TABLES = [{"name": "grp"}, {"name": "evolve"}]
WRITE_TABLE = {
    "name": "wrt",
    "writable": True,
    "writable_columns": ["val", "rid"],
}


def group_violations(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What in one view of `grp` shows half a transaction (empty: none)."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    total = 0
    for r in rows.values():
        groups.setdefault(int(r["g"]), []).append(r)
        total += int(r["v"])
    problems = []
    if total != GROUP_SUM:
        problems.append(f"sum of v is {total}, not {GROUP_SUM}")
    if len(groups) != GROUPS:
        problems.append(f"{len(groups)} groups, not {GROUPS}")
    txn_of: dict[int, int] = {}
    for g, members in sorted(groups.items()):
        txns = {int(m["txn"]) for m in members}
        peers = {str(m["peers"]) for m in members}
        if len(members) != GROUP_ROWS or len(txns) != 1 or len(peers) != 1:
            problems.append(
                f"group {g}: {len(members)} rows with txn {sorted(txns)}, peers {sorted(peers)}"
            )
            continue
        txn_of[g] = txns.pop()
    for g, txn in txn_of.items():
        if txn == 0:
            continue
        peers = groups[g][0]["peers"]
        for p in (int(x) for x in str(peers).split(",")):
            if p in txn_of and txn_of[p] < txn:
                problems.append(f"txn {txn} shows in group {g} but not in its peer group {p}")
    return problems


@dataclass
class WorkloadCounts:
    committed: int = 0  # COMMIT answered
    rolled_back: int = 0
    unknown: int = 0  # the connection failed during the transaction
    group_txns: int = 0
    ddl: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)


class SqlWorkload(threading.Thread):
    """The database side of the workload, on its own thread and connection.
    `pause()` returns once no transaction is open; `resume()` goes on."""

    def __init__(
        self,
        wl: Workload,
        connect: Callable[[], Any],
        flavor: str,
        seed: int,
        ddl_every: int,
        rate: float = 0.0,
    ) -> None:
        super().__init__(name="soak-workload", daemon=True)
        self.wl = wl
        self.connect = connect
        self.flavor = flavor
        self.rng = random.Random(seed)
        self.ddl_every = ddl_every
        self.rate = rate  # transactions per second at most (0: as fast as it goes)
        self.counts = WorkloadCounts()
        self._txn = 0
        self._column = 0
        self._halt = threading.Event()
        self._run_ok = threading.Event()
        self._run_ok.set()
        self._idle = threading.Event()
        self._conn: Any = None

    # -- control ------------------------------------------------------------
    def pause(self, timeout: float = 120.0) -> None:
        self._run_ok.clear()
        if self.is_alive() and not self._idle.wait(timeout):
            raise AssertionError(f"the workload did not pause within {timeout}s")

    def resume(self) -> None:
        self._run_ok.set()

    def stop(self) -> None:
        self._halt.set()
        self._run_ok.set()
        self.join(60)

    # -- the loop -----------------------------------------------------------
    def run(self) -> None:
        n = 0
        started = time.monotonic()
        while not self._halt.is_set():
            if not self._run_ok.is_set():
                self._idle.set()
                self._run_ok.wait()
                self._idle.clear()
                continue
            if self.rate and n > self.rate * (time.monotonic() - started):
                time.sleep(0.005)
                continue
            try:
                if self._conn is None:
                    self._conn = self.connect()
                    self.wl.resync(self._conn)
                    self._resync_extra(self._conn)
                self._one(n)
                n += 1
            except Exception as exc:  # a crashed, restarted or cut-off database
                self.counts.unknown += 1
                self.counts.reconnects += 1
                if len(self.counts.errors) < 50:
                    self.counts.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
                time.sleep(0.2)
        self._idle.set()
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()

    def _one(self, n: int) -> None:
        if self.ddl_every and n % self.ddl_every == self.ddl_every - 1:
            self._ddl()
            return
        if len(self.wl.items) > ITEMS_CAP:
            self._trim()
            return
        r = self.rng.random()
        if r < 0.25:
            self._group_txn()
        elif r < 0.3:
            self._evolve_txn()
        elif self.wl.transaction(self._conn):
            self.counts.committed += 1
        else:
            self.counts.rolled_back += 1

    def _resync_extra(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT max(txn) FROM grp")
            row = cur.fetchone()
            self._txn = max(self._txn, int(row[0] or 0))

    def _trim(self) -> None:
        """Keep the items table to ITEMS_CAP rows, so that a long soak's
        checks stay fast: its oldest rows go, in one multi-row DELETE."""
        oldest = sorted(self.wl.items)[:TRIM_ROWS]
        with self._conn.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(
                f"DELETE FROM items WHERE id IN ({', '.join(['%s'] * len(oldest))})", oldest
            )
            cur.execute("COMMIT")
        self.wl.items -= set(oldest)
        self.counts.committed += 1

    def _group_txn(self) -> None:
        rng = self.rng
        self._txn += 1
        txn = self._txn
        gs = sorted(rng.sample(range(GROUPS), rng.randint(1, 3)))
        peers = ",".join(map(str, gs))
        deltas = [rng.randint(-50, 50) for _ in range(len(gs) * GROUP_ROWS - 1)]
        deltas.append(-sum(deltas))
        rollback = rng.random() < 0.1
        with self._conn.cursor() as cur:
            cur.execute("BEGIN")
            for j, g in enumerate(gs):
                d = deltas[j * GROUP_ROWS : (j + 1) * GROUP_ROWS]
                cur.execute(
                    "UPDATE grp SET txn = %s, peers = %s, v = v + CASE k "
                    "WHEN 0 THEN %s WHEN 1 THEN %s WHEN 2 THEN %s ELSE %s END WHERE g = %s",
                    (txn, peers, *d, g),
                )
            cur.execute("ROLLBACK" if rollback else "COMMIT")
        if rollback:
            self.counts.rolled_back += 1
        else:
            self.counts.committed += 1
            self.counts.group_txns += 1

    def _evolve_txn(self) -> None:
        rng = self.rng
        i = rng.randint(1, EVOLVE_ROWS)
        with self._conn.cursor() as cur:
            cur.execute("BEGIN")
            if rng.random() < 0.3:
                cur.execute("DELETE FROM evolve WHERE id = %s", (i,))
                cur.execute("INSERT INTO evolve (id, v) VALUES (%s, %s)", (i, rng.randint(0, 99)))
            else:
                cur.execute("UPDATE evolve SET v = v + 1 WHERE id = %s", (i,))
            cur.execute("COMMIT")
        self.counts.committed += 1

    def _ddl(self) -> None:
        """A column added and an older one dropped (with a row changed in the
        same transaction on PostgreSQL), or a TRUNCATE and refill; the
        items table's own ALTER once."""
        rng = self.rng
        self.counts.ddl += 1
        if not self.wl.altered and rng.random() < 0.5:
            if self.flavor == "postgres":
                # One transaction, with a row change that carries the new
                # shape to the stream (the wrapper backfills the others).
                self._conn.execute("BEGIN")
                self.wl.alter(self._conn)
                self._conn.execute(
                    "UPDATE items SET title = title WHERE id = (SELECT min(id) FROM items)"
                )
                self._conn.execute("COMMIT")
                self.counts.committed += 1
            else:
                self.wl.alter(self._conn)  # each ALTER commits by itself
                self.counts.committed += 2
            return
        truncate = rng.random() < 0.2
        self._column += 1
        col, old = f"c{self._column}", f"c{self._column - 2}"
        refill = "INSERT INTO evolve (id, v) VALUES " + ", ".join(
            f"({i}, 0)" for i in range(1, EVOLVE_ROWS + 1)
        )
        with self._conn.cursor() as cur:
            if self.flavor == "postgres":
                cur.execute("BEGIN")
                if truncate:
                    cur.execute("TRUNCATE evolve")
                    cur.execute(refill)
                else:
                    cur.execute(
                        f"ALTER TABLE evolve ADD COLUMN {col} integer DEFAULT {self._column}"
                    )
                    if self._column > 2:
                        cur.execute(f"ALTER TABLE evolve DROP COLUMN IF EXISTS {old}")
                    cur.execute(
                        "UPDATE evolve SET v = v + 1 WHERE id = %s", (rng.randint(1, EVOLVE_ROWS),)
                    )
                cur.execute("COMMIT")
                self.counts.committed += 1
            elif truncate:
                cur.execute("TRUNCATE evolve")
                cur.execute(refill)
                self.counts.committed += 2
            else:
                drop = f", DROP COLUMN IF EXISTS {old}" if self._column > 2 else ""
                cur.execute(f"ALTER TABLE evolve ADD COLUMN {col} INT DEFAULT {self._column}{drop}")
                cur.execute(
                    "UPDATE evolve SET v = v + 1 WHERE id = %s", (rng.randint(1, EVOLVE_ROWS),)
                )
                self.counts.committed += 2


# -- writes through the driver (PostgreSQL) -----------------------------------------


@dataclass
class WriteLedger:
    """Every request the writers sent, by request id: what it wrote and how
    it ended."""

    ops: dict[str, int] = field(default_factory=dict)  # request id -> rows it writes
    acked: set[str] = field(default_factory=set)
    lagged: set[str] = field(default_factory=set)  # committed, replica not there in time
    failed: dict[str, str] = field(default_factory=dict)  # refused for good: why
    unknown_outcomes: int = 0  # WriteOutcomeUnknownError answers, each retried
    retried: int = 0  # every retry with the same request id
    replayed: int = 0  # acks that said "this request id had already committed"
    ryw_violations: list[str] = field(default_factory=list)  # acked, own replica did not show it


class Writer:
    """Sequential requests from one writer: request i upserts the writer's
    own row (id = writer) with val = i and a new row (id = base + i), and
    sometimes deletes an older new row. Each is retried with its request id
    until answered."""

    def __init__(
        self,
        driver: PrismDriver,
        index: int,
        seed: int,
        ledger: WriteLedger,
        in_flight: asyncio.Event,
        paused: Callable[[], bool],
    ) -> None:
        self.driver = driver
        self.index = index
        self.seed = seed
        self.ledger = ledger
        self.in_flight = in_flight
        self.paused = paused
        self.rng = random.Random(seed * 1000 + index)
        self.i = 0
        self.busy = False

    def _ops(self, i: int, rid: str) -> list[WriteOp]:
        base = (self.index + 1) * 10_000_000
        ops = [
            WriteOp("upsert", self.index, {"val": i, "rid": rid}, table="wrt"),
            WriteOp("upsert", base + i, {"val": i, "rid": rid}, table="wrt"),
        ]
        if i > 5 and self.rng.random() < 0.3:
            ops.append(WriteOp("delete", base + i - 5, table="wrt"))
        return ops

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.paused():
                await asyncio.sleep(0.05)
                continue
            self.i += 1
            i = self.i
            rid = f"soak-{self.seed}-{self.index}-{i}"
            ops = self._ops(i, rid)
            self.ledger.ops[rid] = sum(1 for o in ops if o.op == "upsert")
            self.busy = True
            try:
                await self._until_answered(rid, ops, i, stop)
            finally:
                self.busy = False

    async def _until_answered(
        self, rid: str, ops: list[WriteOp], i: int, stop: asyncio.Event
    ) -> None:
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self.ledger.retried += 1
            self.in_flight.set()
            try:
                ack = await self.driver.write_many(ops, request_id=rid, wait=True, timeout=30)
            except WriteOutcomeUnknownError:
                self.ledger.unknown_outcomes += 1
            except ReplicaLagError:
                # The commit happened; the replica shows it later. Exactly
                # once is checked in the database, where it matters.
                self.ledger.lagged.add(rid)
                return
            except DriverError as exc:
                if not exc.retriable:
                    self.ledger.failed[rid] = f"{type(exc).__name__}: {exc}"
                    return
            else:
                self.ledger.acked.add(rid)
                if ack.replayed:
                    self.ledger.replayed += 1
                row = self.driver.get("public.wrt", self.index)
                if row is None or row.get("val") != i:
                    self.ledger.ryw_violations.append(
                        f"{rid}: acked at position {ack.position}, own replica at "
                        f"{self.driver.position} shows {row}"
                    )
                return
            finally:
                self.in_flight.clear()
            if stop.is_set() and attempt > 200:
                self.ledger.failed[rid] = "gave up: the soak ended before an answer came"
                return
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)


def audit_problems(conn: Any, ledger: WriteLedger) -> list[str]:
    """Exactly once, checked in the database: each answered request's rows
    are in `wrt_audit` once per row it writes (0: lost; twice: applied
    again)."""
    with conn.cursor() as cur:
        cur.execute("SELECT rid, count(*) FROM wrt_audit GROUP BY rid")
        counts = {str(r): int(n) for r, n in cur.fetchall()}
    problems = []
    for rid in sorted(ledger.acked | ledger.lagged):
        n, want = counts.get(rid, 0), ledger.ops[rid]
        if n != want:
            what = "lost" if n == 0 else "applied more than once" if n > want else "partial"
            problems.append(f"write {rid}: {n} audited rows, expected {want} ({what})")
    for rid, n in sorted(counts.items()):
        want = ledger.ops.get(rid)
        if want is None:
            problems.append(f"write {rid}: in the audit but never sent")
        elif rid not in ledger.acked | ledger.lagged and n not in (0, want):
            problems.append(f"write {rid}: {n} audited rows, expected 0 or {want}")
    return problems
