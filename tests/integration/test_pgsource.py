"""PostgresSource against a real PostgreSQL 16: the initial copy values every
column exactly as the stream does (the store must not depend on which path
brought a row), with the vector column loaded straight into float32; and the
stream keeps its slot's restart point close behind what it confirmed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import TestDB

from prism.wrapper.sources.base import RowChange
from prism.wrapper.sources.postgres.source import MARK_APPLICATION_NAME, PostgresSource
from support.configs import offline_config

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE arr (id int8 PRIMARY KEY, emb real[], other real[], note text);
CREATE TABLE vec (id int8 PRIMARY KEY, v vector(3), other real[]);
"""
ROWS = """
INSERT INTO arr VALUES
    (1, '{0.1,-2.5,3}', '{0.1,0.2}', 'plain'),
    (2, NULL, NULL, 'null vector'),
    (3, '{1,NULL,3}', '{NULL}', 'null element'),
    (4, '{{1,2},{3,4}}', '{{1},{2}}', 'two dimensions'),
    (5, '{}', '{}', 'empty'),
    (6, '{1e-45,3.4028235e38,-0}', '{1e-45}', 'edges');
INSERT INTO vec VALUES (1, '[0.1,-2.5,3]', '{0.5}'), (2, NULL, NULL), (3, '[0,0,1e-3]', '{}');
"""


def _source(
    db: TestDB, binary: bool, dsn: str | None = None, restart_mark_bytes: int = 8 << 20
) -> PostgresSource:
    cfg = offline_config(
        [
            {"name": "public.arr", "vector_column": "emb", "vector_dim": 3},
            {"name": "public.vec", "vector_column": "v", "vector_dim": 3},
        ],
        {
            "dsn": dsn or db.dsn,
            "slot": f"prism_{db.name}_src",
            "publication": "prism_src",
            "binary": binary,
        },
    )
    return PostgresSource(cfg, restart_mark_bytes=restart_mark_bytes)


def _plain(v: Any) -> Any:
    """A value with its exact type spelled out, for comparing two decodings."""
    if isinstance(v, np.ndarray):
        return ("f32", str(v.dtype), v.tobytes())
    if isinstance(v, list):
        return ("list", [_plain(x) for x in v])
    return (type(v).__name__, v)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_copy_values_rows_as_the_stream_does(db: TestDB, binary: bool) -> None:
    db.execute(SCHEMA)
    db.execute(ROWS)
    src = _source(db, binary)
    try:
        assert not src.check_prerequisites()
        src.discover()
        assert src.binary is binary
        src.prepare()
        point = src.begin_snapshot()
        copied = {
            t: {r["id"]: r for r in chain.from_iterable(src.snapshot_rows(t, batch=2))}
            for t in ("public.arr", "public.vec")
        }
        src.end_snapshot()
        # The same rows again, after the snapshot: through the stream.
        db.execute(
            "INSERT INTO arr SELECT id + 100, emb, other, note FROM arr;"
            "INSERT INTO vec SELECT id + 100, v, other FROM vec;"
        )
        src.start_stream(point)
        streamed: dict[str, dict[int, dict[str, Any]]] = {"public.arr": {}, "public.vec": {}}
        deadline = time.monotonic() + 20
        for stx in src.transactions(0.2):
            assert time.monotonic() < deadline, "the stream did not bring the rows"
            for ch in stx.changes if stx is not None else ():
                assert isinstance(ch, RowChange) and ch.new is not None
                streamed[ch.table][ch.new["id"] - 100] = ch.new
            if sum(map(len, streamed.values())) == 9:
                break
    finally:
        src.close()
    for table, rows in copied.items():
        assert set(rows) == set(streamed[table])
        for i, row in rows.items():
            got = {k: _plain(v) for k, v in row.items() if k != "id"}
            want = {k: _plain(v) for k, v in streamed[table][i].items() if k != "id"}
            assert got == want, (table, i)
    if binary:
        # The vector column arrives as float32, exactly; other real[] as lists.
        emb = copied["public.arr"][1]["emb"]
        assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
        assert emb.tolist() == np.array([0.1, -2.5, 3], dtype=np.float32).tolist()
        assert isinstance(copied["public.arr"][1]["other"], list)
        assert isinstance(copied["public.vec"][1]["v"], np.ndarray)
        assert copied["public.arr"][3]["emb"][1] is None  # NULL element: the general path


def _slot_lsns(conn: psycopg.Connection[Any], slot: str) -> tuple[int, int]:
    """(restart_lsn, confirmed_flush_lsn) of `slot`, as integers."""
    row = conn.execute(
        "SELECT restart_lsn - '0/0'::pg_lsn, confirmed_flush_lsn - '0/0'::pg_lsn "
        "FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _follow(src: PostgresSource, until: Callable[[], bool], seconds: float) -> bool:
    """Stream as the pipeline does (confirm each transaction, and idle
    positions when quiet) until `until()` holds; False after `seconds`."""
    deadline = time.monotonic() + seconds
    for stx in src.transactions(0.02):
        if stx is not None:
            src.acknowledge(stx.end_lsn)
        elif (idle := src.idle_position()) is not None:
            src.acknowledge(idle.position)
        if until():
            return True
        if time.monotonic() > deadline:
            return False
    return False


def _burst(db: TestDB, base: int = 1000) -> int:
    """Twenty transactions on `arr` (ids from `base`); the WAL position after them."""
    with db.connect() as c:
        for i in range(20):
            c.execute(
                "INSERT INTO arr SELECT g, '{1,2,3}', NULL, repeat('x', 200) "
                "FROM generate_series(%s::int8, %s::int8) g",
                (base + 10 * i, base + 9 + 10 * i),
            )
        row = c.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def test_the_slots_restart_point_follows_the_stream_after_a_burst(db: TestDB) -> None:
    """Without a running-transactions record past a burst, restart_lsn stays
    before it for up to 15 s (the background writer's interval) and a restart
    decodes the burst again; the source logs one and confirms past it (with
    records switched off, restart_lsn stays before the burst here)."""
    db.execute(SCHEMA)
    src = _source(db, True, restart_mark_bytes=1024)
    try:
        assert src.restart_point_note() is None  # a superuser: `check` says ok
        src.discover()
        src.prepare()
        point = src.begin_snapshot()
        src.end_snapshot()
        with db.connect() as probe:
            before, _ = _slot_lsns(probe, src.slot)
            end = _burst(db)
            assert before < end
            src.start_stream(point)
            moved = _follow(src, lambda: _slot_lsns(probe, src.slot)[0] >= end, seconds=5.0)
            restart, confirmed = _slot_lsns(probe, src.slot)
    finally:
        src.close()
    assert src.restart_marks.made >= 1
    assert moved, f"restart_lsn {restart} stayed before the burst's end {end}"
    assert end <= restart <= confirmed


def test_a_restart_point_connection_lost_while_idle_is_opened_again(db: TestDB) -> None:
    """The records' connection sits idle between bursts, where a server's
    idle timeout or a firewall may end it: the next record goes out on a new
    connection at once, not after the retry wait."""
    db.execute(SCHEMA)
    src = _source(db, True, restart_mark_bytes=1024)
    try:
        src.discover()
        src.prepare()
        point = src.begin_snapshot()
        src.end_snapshot()
        with db.connect() as probe:
            src.start_stream(point)
            _burst(db)
            assert _follow(src, lambda: src.restart_marks.made >= 1, seconds=5.0)
            ended = probe.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (MARK_APPLICATION_NAME,),
            ).fetchone()
            assert ended == (1,)
            end = _burst(db, base=2000)
            moved = _follow(src, lambda: _slot_lsns(probe, src.slot)[0] >= end, seconds=5.0)
    finally:
        src.close()
    assert src.restart_marks.enabled
    assert moved, "no restart point after the connection was lost"
    assert src.restart_marks.made >= 2


def test_without_the_privilege_the_stream_goes_on_and_stops_asking(db: TestDB) -> None:
    """A role that may replicate but not call pg_log_standby_snapshot(): the
    stream carries on (its restart point then follows the server's own
    records), and the source does not ask again."""
    role = f"{db.name}_repl"
    dsn = f"host=127.0.0.1 port={db.pg.port} user={role} dbname={db.name}"
    src = _source(db, True, dsn=dsn, restart_mark_bytes=1024)
    try:
        with db.connect() as c:
            c.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
            c.execute(f"GRANT CREATE ON DATABASE {db.name} TO {role}")
            c.execute(SCHEMA)
            c.execute(f"ALTER TABLE arr OWNER TO {role}")
            c.execute(f"ALTER TABLE vec OWNER TO {role}")
        note = src.restart_point_note()  # what `prism-wrapper check` prints
        assert note is not None
        assert f"GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO {role}" in note
        src.discover()
        src.prepare()
        point = src.begin_snapshot()
        src.end_snapshot()
        end = _burst(db)
        src.start_stream(point)
        with db.connect() as probe:
            # Every transaction confirmed: the stream went on past the refusal.
            assert _follow(src, lambda: _slot_lsns(probe, src.slot)[1] >= end, 10.0)
    finally:
        src.close()
        with db.connect() as c:
            # The slot holds no grant (slots have no owner); the fixture drops it.
            c.execute(f"REASSIGN OWNED BY {role} TO postgres")
            c.execute(f"DROP OWNED BY {role}")
            c.execute(f"DROP ROLE IF EXISTS {role}")
    assert not src.restart_marks.enabled
    assert src.restart_marks.made == 0


def test_threads_asking_for_the_admin_connection_at_once_share_one(db: TestDB) -> None:
    """The pipeline's thread and the store writer's (missing_value) both open
    the admin connection lazily: asked at the same moment, one connection is
    opened and both get it (none is left open behind the source's back)."""
    src = _source(db, binary=True)
    start = threading.Barrier(8)
    got: list[Any] = []

    def take() -> None:
        start.wait()
        got.append(src.admin)

    threads = [threading.Thread(target=take) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == 8
        assert len({id(c) for c in got}) == 1, "each thread opened a connection of its own"
    finally:
        src.close()
    assert got[0].closed


def test_acknowledgments_are_held_back_then_sent_and_sent_at_close(db: TestDB) -> None:
    """A burst of commits confirmed one by one sends fewer status messages
    than commits (one per ACK_EVERY_S), yet the slot reaches the last one by
    the stream's idle ticks; one still held back at close goes out then."""
    db.execute(SCHEMA)
    src = _source(db, True)
    sent: list[int] = []
    try:
        src.discover()
        src.prepare()
        point = src.begin_snapshot()
        src.end_snapshot()
        src.start_stream(point)
        assert src._repl is not None
        real_send = src._repl.send_status

        def counting(write: int, flush: int, apply: int, reply: bool = False) -> None:
            sent.append(flush)
            real_send(write, flush, apply, reply)

        src._repl.send_status = counting  # type: ignore[method-assign]
        with db.connect() as probe:
            _burst(db, base=5000)
            ends: list[int] = []
            deadline = time.monotonic() + 10
            for stx in src.transactions(0.005):
                if stx is not None:
                    src.acknowledge(stx.end_lsn)
                    ends.append(stx.end_lsn)
                if len(ends) == 20:
                    break
                assert time.monotonic() < deadline, f"{len(ends)} of the burst's 20 arrived"
            assert len([f for f in sent if f > point.position]) < 20
            assert _follow(src, lambda: _slot_lsns(probe, src.slot)[1] >= ends[-1], 5.0), (
                "the held-back acknowledgment never went out"
            )
            # (an idle position past the burst may have gone out instead)
            assert sent[-1] >= ends[-1]
            # One more, held back (the last status went out just now), then close.
            _burst(db, base=6000)
            last = 0
            deadline = time.monotonic() + 10
            for stx in src.transactions(0.005):
                if stx is not None:
                    last = stx.end_lsn
                    break
                assert time.monotonic() < deadline, "the second burst never arrived"
            src._last_status = time.monotonic()  # as if a status had just gone out
            src.acknowledge(last)
            assert sent[-1] < last
            src.close()
            assert sent[-1] == last
            deadline = time.monotonic() + 5
            while _slot_lsns(probe, src.slot)[1] < last:
                assert time.monotonic() < deadline, "the acknowledgment at close was lost"
                time.sleep(0.05)
    finally:
        src.close()
