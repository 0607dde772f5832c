"""Group commit of writes (wrapper/groupcommit.py) against a real PostgreSQL:
one transaction for many requests, a savepoint each, so that one request's
failure (a constraint, bad input, an update of no row, a failing COMMIT)
never fails the others; request ids apply once, also within one group."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errorkinds import ErrorKind
from prism.wrapper.groupcommit import (
    Connection,
    ConnectionPool,
    GroupCommit,
    MarkerSQL,
    Outcome,
    Request,
    run_group,
)
from prism.wrapper.writeplan import Planned, WriteError, register_adapters

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE prism_writes (event_id uuid PRIMARY KEY, request_id text UNIQUE,
                           created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE items (id int PRIMARY KEY, sku text UNIQUE, qty int CHECK (qty >= 0), v real[]);
CREATE TABLE parents (id int PRIMARY KEY);
CREATE TABLE children (id int PRIMARY KEY, parent int REFERENCES parents (id)
                       DEFERRABLE INITIALLY DEFERRED);
"""
MARKER = MarkerSQL.of("public.prism_writes")
UPSERT = sql.SQL(
    "INSERT INTO items (id, sku, qty) VALUES (%s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET sku = EXCLUDED.sku, qty = EXCLUDED.qty"
)
UPDATE = sql.SQL("UPDATE items SET qty = %s WHERE id = %s")


def upsert(i: int, sku: str | None = None, qty: int = 1) -> Planned:
    return Planned(pb.UPSERT, "public.items", UPSERT, [i, sku, qty])


def update(i: int, qty: int) -> Planned:
    return Planned(pb.UPDATE, "public.items", UPDATE, [qty, i])


def child(i: int, parent: int) -> Planned:
    return Planned(
        pb.UPSERT,
        "public.children",
        sql.SQL("INSERT INTO children (id, parent) VALUES (%s, %s)"),
        [i, parent],
    )


def req(*planned: Planned, request_id: str | None = None) -> Request:
    return Request(planned, request_id, str(uuid.uuid4()))


def connect(db: Any) -> Connection:
    """A write connection as the pool makes it."""
    conn = Connection.connect(db.dsn, autocommit=True, prepare_threshold=None)
    register_adapters(conn)
    return conn


def ids(c: psycopg.Connection[Any], table: str = "items") -> list[int]:
    return [r[0] for r in c.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def markers(c: psycopg.Connection[Any]) -> set[str]:
    return {str(r[0]) for r in c.execute("SELECT event_id FROM prism_writes").fetchall()}


def test_one_failing_request_does_not_fail_the_others(db) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA + "INSERT INTO items VALUES (100, 'taken', 1);")
    requests = [
        req(upsert(1)),
        req(upsert(2, sku="taken")),  # unique violation
        req(upsert(3), upsert(4)),
        req(upsert(5, qty=-1)),  # check violation
        req(update(100, 7), upsert(6)),
        req(update(99, 1)),  # no such row
        req(upsert(7, sku="nul\x00")),  # refused before it is sent
        req(upsert(8)),
    ]
    with connect(db) as conn:
        results = run_group(conn, MARKER, requests)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    errors = {i: r for i, r in enumerate(results) if isinstance(r, WriteError)}
    assert sorted(errors) == [1, 3, 5, 6]
    assert (errors[1].kind, errors[1].sqlstate) == (ErrorKind.CONSTRAINT, "23505")
    assert (errors[3].kind, errors[3].sqlstate) == (ErrorKind.CONSTRAINT, "23514")
    assert errors[5].kind == ErrorKind.NOT_FOUND and "no row" in str(errors[5])
    assert errors[6].kind == ErrorKind.INVALID and "NUL" in str(errors[6])
    ok = [r for r in results if isinstance(r, Outcome)]
    assert [r.affected for r in ok] == [(1,), (1, 1), (1, 1), (1,)]
    assert not any(r.replayed for r in ok)
    with db.connect() as c:
        assert ids(c) == [1, 3, 4, 6, 8, 100]
        assert c.execute("SELECT qty FROM items WHERE id = 100").fetchone() == (7,)
        # one marker per committed request, none for the failed ones
        assert markers(c) == {r.event_id for r in ok}


def test_request_ids_apply_once_within_and_across_groups(db) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    with connect(db) as conn:
        first = run_group(conn, MARKER, [req(upsert(1, qty=1), request_id="r1")])[0]
        assert isinstance(first, Outcome) and not first.replayed
        db.execute("UPDATE items SET qty = 50 WHERE id = 1")  # changed elsewhere since
        results = run_group(
            conn,
            MARKER,
            [
                req(upsert(2), request_id="r2"),
                req(upsert(1, qty=2), request_id="r1"),  # committed before: not again
                req(upsert(3), request_id="r3"),
                req(upsert(3, qty=9), request_id="r3"),  # the same id twice in one group
                req(upsert(4, qty=-1), request_id="r4"),  # fails: its id stays free
            ],
        )
        r2, r1, r3, r3again, r4 = results
        assert isinstance(r2, Outcome) and not r2.replayed
        assert isinstance(r1, Outcome) and r1.replayed and r1.event_id == first.event_id
        assert isinstance(r3, Outcome) and not r3.replayed
        assert isinstance(r3again, Outcome) and r3again.replayed
        assert r3again.event_id == r3.event_id
        assert isinstance(r4, WriteError) and r4.kind == ErrorKind.CONSTRAINT
        again = run_group(conn, MARKER, [req(upsert(4, qty=4), request_id="r4")])[0]
        assert isinstance(again, Outcome) and not again.replayed  # a failed id is free
    with db.connect() as c:
        assert c.execute("SELECT id, qty FROM items ORDER BY id").fetchall() == [
            (1, 50),
            (2, 1),
            (3, 1),
            (4, 4),
        ]
        assert c.execute("SELECT count(*) FROM prism_writes").fetchone() == (4,)


def test_a_failing_commit_is_placed_by_running_requests_alone(db) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA + "INSERT INTO parents VALUES (1);")
    with connect(db) as conn:
        results = run_group(
            conn,
            MARKER,
            [req(child(1, 1)), req(child(2, 404)), req(child(3, 1))],  # 404: deferred FK
        )
        lone = run_group(conn, MARKER, [req(child(4, 404))])
    assert isinstance(results[0], Outcome) and isinstance(results[2], Outcome)
    assert isinstance(results[1], WriteError) and results[1].sqlstate == "23503"
    assert isinstance(lone[0], WriteError) and lone[0].kind == ErrorKind.CONSTRAINT
    with db.connect() as c:
        assert ids(c, "children") == [1, 3]
        assert markers(c) == {results[0].event_id, results[2].event_id}


def delete(i: int) -> Planned:
    return Planned(pb.DELETE, "public.items", sql.SQL("DELETE FROM items WHERE id = %s"), [i])


def test_a_lone_upsert_or_delete_runs_as_one_statement_with_the_same_outcomes(db) -> None:  # type: ignore[no-untyped-def]
    """One request of one upsert or delete goes as a single statement with
    its marker (no pipeline): committed with its marker, replayed for a
    taken request id (even when the write itself would now fail: the
    marker goes in first, as in a group), failed whole (no marker, its id
    still free) by the row's own constraint, refused before sending without
    harm to the connection, run as a group on a table with rules; a lost
    connection leaves the outcome unknown."""
    db.execute(
        SCHEMA
        + "INSERT INTO items VALUES (100, 'taken', 1);"
        + "CREATE TABLE audit (id int);"
        + "CREATE RULE audited AS ON DELETE TO items DO ALSO INSERT INTO audit VALUES (OLD.id);"
    )
    # Lone statements go to libpq directly: every statement sent is
    # counted, on either path.
    with connect(db) as conn:
        statements: list[Any] = []
        execute, lone = conn.execute, conn.lone()
        run = lone.run

        def counted(query: Any, params: Any = None, **kw: Any) -> Any:
            statements.append(query)
            return execute(query, params, **kw)

        def counted_lone(query: bytes, params: Any, meanwhile: Any = None) -> Any:
            statements.append(query)
            return run(query, params, meanwhile)

        conn.execute = counted  # type: ignore[method-assign]
        lone.run = counted_lone  # type: ignore[method-assign]
        first = run_group(conn, MARKER, [req(upsert(1, qty=3), request_id="a")])[0]
        assert isinstance(first, Outcome) and first.affected == (1,) and not first.replayed
        assert len(statements) == 1 and statements[0].startswith(b"WITH prism_row AS (")
        conn.execute = execute  # type: ignore[method-assign]
        del lone.run
        again = run_group(conn, MARKER, [req(upsert(1, qty=9), request_id="a")])[0]
        assert isinstance(again, Outcome) and again.replayed
        assert again.event_id == first.event_id
        # A retry whose write would now fail its CHECK is still the replay.
        checked = run_group(conn, MARKER, [req(upsert(1, qty=-1), request_id="a")])[0]
        assert isinstance(checked, Outcome) and checked.replayed
        assert checked.event_id == first.event_id
        clash = run_group(conn, MARKER, [req(upsert(2, sku="taken"), request_id="b")])[0]
        assert isinstance(clash, WriteError)
        assert (clash.kind, clash.sqlstate) == (ErrorKind.CONSTRAINT, "23505")
        free = run_group(conn, MARKER, [req(upsert(2, sku="own"), request_id="b")])[0]
        assert isinstance(free, Outcome) and not free.replayed  # the failed id stayed free
        # items has a DO ALSO rule on delete, which PostgreSQL refuses in a
        # WITH: these deletes run as a group's statements, with the same outcome.
        gone = run_group(conn, MARKER, [req(delete(404))])[0]
        assert isinstance(gone, Outcome) and gone.affected == (0,)  # as a group's delete
        made, removed = run_group(conn, MARKER, [req(upsert(5)), req(delete(5))])
        assert isinstance(made, Outcome) and isinstance(removed, Outcome)
        alone = run_group(conn, MARKER, [req(upsert(6))])[0]
        dropped = run_group(conn, MARKER, [req(delete(6))])[0]
        assert isinstance(alone, Outcome) and isinstance(dropped, Outcome)
        assert dropped.affected == removed.affected
        nul = run_group(conn, MARKER, [req(upsert(3, sku="nul\x00"))])[0]
        assert isinstance(nul, WriteError) and nul.kind == ErrorKind.INVALID
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with db.connect() as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        lost = run_group(conn, MARKER, [req(upsert(4))])[0]
        assert isinstance(lost, WriteError) and lost.kind == ErrorKind.UNKNOWN
        assert conn.closed
    with db.connect() as c:
        assert c.execute("SELECT id, sku, qty FROM items ORDER BY id").fetchall() == [
            (1, None, 3),
            (2, "own", 1),
            (100, "taken", 1),
        ]
        assert c.execute("SELECT id FROM audit ORDER BY id").fetchall() == [(5,), (6,)]
        assert markers(c) == {
            first.event_id,
            free.event_id,
            gone.event_id,
            made.event_id,
            removed.event_id,
            alone.event_id,
            dropped.event_id,
        }


def test_vectors_are_sent_exactly_in_binary(db) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from prism.wrapper.writeplan import _bind

    db.execute(SCHEMA)
    vec = np.array([0.1, -2.5, 3.4028235e38, 1e-45], dtype=np.float32)
    stmt = sql.SQL("INSERT INTO items (id, v) VALUES (%s, %s)")
    requests = [
        req(Planned(pb.UPSERT, "public.items", stmt, [1, _bind(vec, "_float4")])),
        req(Planned(pb.UPSERT, "public.items", stmt, [2, _bind([1, 2.5], "_float4")])),
        req(Planned(pb.UPSERT, "public.items", stmt, [3, _bind([1e39], "_float4")])),
    ]
    with connect(db) as conn:
        results = run_group(conn, MARKER, requests)
    assert isinstance(results[0], Outcome) and isinstance(results[1], Outcome)
    assert isinstance(results[2], WriteError) and results[2].sqlstate == "22003"  # overflow
    with db.connect() as c:
        got = dict(c.execute("SELECT id, v FROM items").fetchall())
    assert np.array_equal(np.asarray(got[1], dtype=np.float32), vec)
    assert got[2] == [1.0, 2.5]


def test_concurrent_callers_share_groups_and_each_gets_its_own_answer(db) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA + "INSERT INTO items VALUES (1000, 'taken', 1);")
    pool = ConnectionPool(db.dsn, 1)
    groups = GroupCommit(pool, MARKER, leaders=1)
    results: dict[int, Any] = {}
    # Hold the row the first request updates, so that the others queue up
    # behind its group and go out together once it is released.
    blocker = db.connect()
    blocker.execute("BEGIN")
    blocker.execute("SELECT * FROM items WHERE id = 1000 FOR UPDATE")

    def call(i: int, request: Request) -> None:
        results[i] = groups.submit(request)

    first = threading.Thread(target=call, args=(0, req(update(1000, 5))))
    first.start()
    with db.connect() as c:
        for _ in range(200):
            waiting = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                (db.name,),
            ).fetchone()
            if waiting == (1,):
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the first write never waited for the row lock")
    threads = [
        threading.Thread(target=call, args=(i, req(upsert(i, sku="taken" if i == 7 else None))))
        for i in range(1, 16)
    ]
    for t in threads:
        t.start()
    threading.Event().wait(0.5)  # let them all queue
    blocker.execute("COMMIT")
    blocker.close()
    for t in [first, *threads]:
        t.join(30)
    pool.close()
    assert sorted(results) == list(range(16))
    failed = {i for i, r in results.items() if isinstance(r, WriteError)}
    assert failed == {7} and results[7].kind == ErrorKind.CONSTRAINT
    with db.connect() as c:
        assert ids(c) == [i for i in range(1, 16) if i != 7] + [1000]
        # the writes that queued behind the first went out together: one
        # transaction, one now() (savepoints give each row its own xmin)
        commits = c.execute("SELECT count(DISTINCT created_at) FROM prism_writes").fetchone()
    assert commits is not None and commits[0] <= 3


def test_statements_skipped_after_a_failure_are_never_taken_as_prepared(db) -> None:  # type: ignore[no-untyped-def]
    # psycopg prepares a statement on its 6th execution. In a pipeline,
    # PostgreSQL skips everything after a failing statement up to the next
    # Sync, the Parse of that preparation too; psycopg still counts the
    # statement as prepared, and every later execution of it failed with
    # 'prepared statement "_pg3_N" does not exist' (seen on the shared
    # cache table after a clear()). The pool's connections prepare nothing.
    db.execute(SCHEMA + "INSERT INTO items VALUES (100, 'taken', 1);")
    pool = ConnectionPool(db.dsn, 1)
    try:
        for i in range(12):
            with pool.connection() as conn:
                results = run_group(
                    conn,
                    MARKER,
                    [
                        req(upsert(2 * i + 1)),
                        req(upsert(1000 + i, sku="taken")),
                        req(upsert(2 * i + 2)),
                    ],
                )
            assert isinstance(results[0], Outcome), (i, results[0])
            assert isinstance(results[1], WriteError) and results[1].sqlstate == "23505"
            assert isinstance(results[2], Outcome), (i, results[2])
    finally:
        pool.close()
    with db.connect() as c:
        assert ids(c) == [*range(1, 25), 100]


def test_submit_many_from_one_thread_shares_groups_with_other_callers(db) -> None:  # type: ignore[no-untyped-def]
    """A WriteBatch call's requests are submitted together from one thread:
    they share transactions (up to MAX_GROUP each), each keeps its own
    result, and a caller submitting alone meanwhile is served too, with two
    leaders for the three of them."""
    db.execute(SCHEMA + "INSERT INTO items VALUES (1000, 'taken', 1);")
    pool = ConnectionPool(db.dsn, 2)
    groups = GroupCommit(pool, MARKER, leaders=2)
    batch = [req(upsert(i, sku="taken" if i == 5 else None)) for i in range(1, 41)]
    results: dict[str, Any] = {}

    def many() -> None:
        results["many"] = groups.submit_many(batch)

    def one() -> None:
        results["one"] = groups.submit(req(upsert(500)))

    threads = [threading.Thread(target=many), threading.Thread(target=one)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    pool.close()
    got = results["many"]
    assert len(got) == 40
    failed = [i for i, r in enumerate(got, 1) if isinstance(r, WriteError)]
    assert failed == [5] and got[4].kind == ErrorKind.CONSTRAINT
    assert isinstance(results["one"], Outcome)
    assert groups.requests == 41
    assert groups.groups <= 4  # 40 requests in groups of up to 32, plus the lone one
    with db.connect() as c:
        assert ids(c) == [i for i in range(1, 41) if i != 5] + [500, 1000]
        assert markers(c) == {r.event_id for r in (*got, results["one"]) if isinstance(r, Outcome)}
