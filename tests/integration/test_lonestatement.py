"""A lone write's statement on libpq directly (wrapper/lonestatement.py),
against a real PostgreSQL: the same values and errors as through psycopg,
one prepared statement per shape of parameters, and a lost connection seen
as psycopg sees it."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pytest

from prism.wrapper import lonestatement
from prism.wrapper.groupcommit import Connection
from prism.wrapper.lonestatement import numbered
from prism.wrapper.writeplan import Float4Array, register_adapters

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE t (id bigint PRIMARY KEY, body text, price numeric(10, 2),
                meta jsonb, v real[], n int UNIQUE);
"""
INSERT = b"INSERT INTO t (id, body, price, meta, v, n) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"


def connect(db: Any) -> Connection:
    """A write connection as the pool makes it."""
    conn = Connection.connect(db.dsn, autocommit=True, prepare_threshold=None)
    register_adapters(conn)
    return conn


def prepared(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute("SELECT name FROM pg_prepared_statements ORDER BY name").fetchall()
    return [r[0] for r in rows]


def test_numbered_placeholders() -> None:
    assert numbered(b"SELECT %s, '%%', %s") == b"SELECT $1, '%', $2"
    assert numbered(b"SELECT 1") == b"SELECT 1"


def test_values_round_trip_as_through_psycopg(db: Any) -> None:
    db.execute(SCHEMA)
    with connect(db) as conn:
        vec = np.array([0.5, -1.25, 3.0], dtype=np.float32)
        meta = psycopg.types.json.Jsonb({"a": [1, "x'y"]})
        row = conn.lone().run(
            INSERT, [1, "it's \\ a body", Decimal("9.50"), meta, Float4Array(vec), 7]
        )
        assert row == ("1",)
        got = conn.execute("SELECT body, price, meta, v, n FROM t WHERE id = 1").fetchone()
        assert got == ("it's \\ a body", Decimal("9.50"), {"a": [1, "x'y"]}, [0.5, -1.25, 3.0], 7)
        # Another shape of parameters (text and None, which psycopg sends
        # untyped) is prepared apart: a statement prepared for binary numeric,
        # jsonb and real[] parameters never gets text ones.
        assert conn.lone().run(INSERT, [2, None, None, None, None, None]) == ("2",)
        assert conn.lone().run(INSERT, [3, "b", "1.5", json.dumps({}), None, None]) == ("3",)
        assert conn.execute("SELECT price, meta FROM t WHERE id = 3").fetchone() == (
            Decimal("1.50"),
            {},
        )
        names = [n for n in prepared(conn) if n.startswith("prism_lone_")]
        assert len(names) == 2
        # The first shape again reuses its statement.
        conn.lone().run(INSERT, [4, "c", Decimal("2"), meta, Float4Array(vec), 8])
        assert len([n for n in prepared(conn) if n.startswith("prism_lone_")]) == 2
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_errors_are_psycopgs_and_leave_the_connection_usable(db: Any) -> None:
    db.execute(SCHEMA)
    with connect(db) as conn:
        lone = conn.lone()
        lone.run(INSERT, [1, "a", None, None, None, 5])
        with pytest.raises(psycopg.errors.UniqueViolation) as ei:
            lone.run(INSERT, [2, "b", None, None, None, 5])
        assert ei.value.sqlstate == "23505" and ei.value.diag.constraint_name == "t_n_key"
        with pytest.raises(psycopg.errors.UndefinedTable):
            lone.run(b"INSERT INTO nowhere VALUES (%s)", [1])
        with pytest.raises(psycopg.DataError):  # a NUL in text: psycopg's own refusal
            lone.run(INSERT, [3, "nul\x00", None, None, None, None])
        assert lone.run(INSERT, [3, "c", None, None, None, 6]) == ("3",)
        assert not conn.broken


def test_a_lost_connection_is_psycopgs_operational_error(db: Any) -> None:
    db.execute(SCHEMA)
    with connect(db) as conn:
        conn.lone().run(INSERT, [1, "a", None, None, None, None])
        with db.connect() as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            conn.lone().run(INSERT, [2, "b", None, None, None, None])
        assert conn.broken


def test_shapes_past_the_limit_start_over(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lonestatement, "_MAX_SHAPES", 3)
    db.execute(SCHEMA)
    with connect(db) as conn:
        for i in range(5):
            query = INSERT.replace(b"RETURNING id", b"RETURNING id + %d" % i)
            assert conn.lone().run(query, [i, "x", None, None, None, None]) == (str(i + i),)
        assert 1 <= len([n for n in prepared(conn) if n.startswith("prism_lone_")]) <= 3


def test_meanwhile_runs_while_the_statement_is_in_the_database(db: Any) -> None:
    """`meanwhile` runs once the statement is on its way and before its
    result is read: PostgreSQL is seen running it from another connection."""
    db.execute(SCHEMA)
    seen: list[str] = []
    with connect(db) as conn, db.connect() as other:
        pid = conn.info.backend_pid

        def meanwhile() -> None:
            for _ in range(200):
                row = other.execute(
                    "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                if row is not None and row[0] == "active":
                    seen.append(row[1])
                    return

        got = conn.lone().run(
            b"INSERT INTO t (id, body) SELECT %s, %s FROM pg_sleep(0.3) RETURNING id",
            [7, "slow"],
            meanwhile,
        )
        assert got == ("7",)
        assert len(seen) == 1 and "pg_sleep" in seen[0], seen
