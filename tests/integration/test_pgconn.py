"""ReplicationConnection against a real PostgreSQL 16 (PostgreSQL WAL →
**conn** → walstream → decoder → pipeline → store): a slot's exported
snapshot meets its stream exactly, and a confirmed flush position reaches
pg_replication_slots."""

from __future__ import annotations

import time

import psycopg
import pytest
from conftest import TestDB

from prism.wrapper.embedded_pg import free_port
from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import RowChange, SourceTransaction
from prism.wrapper.sources.postgres.conn import ReplicationConnection
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder
from prism.wrapper.sources.postgres.walstream import PrimaryKeepalive, XLogData, lsn_from_str

pytestmark = pytest.mark.integration


def _slot_flush_lsn(conn: psycopg.Connection, slot: str) -> int:
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    assert row is not None
    return lsn_from_str(row[0])


def _next_transaction(
    repl: ReplicationConnection, dec: PgOutputDecoder, timeout: float = 20.0
) -> SourceTransaction:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = repl.read(0.5)
        if isinstance(msg, XLogData):
            txn = dec.decode(msg.payload)
            if txn is not None:
                return txn
        elif isinstance(msg, PrimaryKeepalive) and msg.reply_requested:
            repl.send_status(0, 0, 0)
    raise AssertionError("no transaction arrived")


def test_snapshot_meets_stream_and_flush_is_confirmed(db: TestDB) -> None:
    slot, pub = "prism_it_slot", "prism_it_pub"
    with psycopg.connect(db.dsn, autocommit=True) as admin:
        admin.execute("CREATE TABLE items (id int8 PRIMARY KEY, name text)")
        admin.execute("INSERT INTO items VALUES (1, 'before slot')")
        admin.execute(f"CREATE PUBLICATION {pub} FOR TABLE items")

        repl = ReplicationConnection(db.dsn)
        try:
            system = repl.identify_system()
            assert system["dbname"] == db.name and system["timeline"] >= 1
            assert system["xlogpos"] > 0

            start_lsn, snapshot = repl.create_slot_with_snapshot(slot)
            assert start_lsn > 0 and snapshot

            # Committed after the slot's consistent point: in the stream,
            # not in the snapshot.
            admin.execute("INSERT INTO items VALUES (2, 'after slot')")

            # Import the snapshot before the replication connection issues
            # its next command, which would end the snapshot.
            with psycopg.connect(db.dsn) as copier:
                copier.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                copier.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                copied = copier.execute("SELECT id, name FROM items ORDER BY id").fetchall()
                copier.rollback()
            assert copied == [(1, "before slot")]

            repl.start_replication(slot, start_lsn, pub, binary=True)
            dec = PgOutputDecoder(binary=True)
            txn = _next_transaction(repl, dec)
            assert txn.changes == [
                RowChange("public.items", "insert", {"id": 2, "name": "after slot"})
            ]
            assert txn.end_lsn > start_lsn

            before = _slot_flush_lsn(admin, slot)
            assert before < txn.end_lsn
            repl.send_status(txn.end_lsn, txn.end_lsn, txn.end_lsn)
            deadline = time.monotonic() + 10
            while _slot_flush_lsn(admin, slot) < txn.end_lsn:
                assert time.monotonic() < deadline, "confirmed_flush_lsn did not advance"
                msg = repl.read(0.2)  # keep the stream moving while the server catches up
                if isinstance(msg, PrimaryKeepalive) and msg.reply_requested:
                    repl.send_status(txn.end_lsn, txn.end_lsn, txn.end_lsn)
            assert _slot_flush_lsn(admin, slot) == txn.end_lsn
        finally:
            repl.close()

        # A second connection resumes after what was confirmed: nothing replayed.
        admin.execute("INSERT INTO items VALUES (3, 'after confirm')")
        with ReplicationConnection(db.dsn) as again:
            assert again.slot_exists(slot)
            again.start_replication(slot, 0, pub, binary=False)
            txn = _next_transaction(again, PgOutputDecoder(binary=False))
            assert [c.new for c in txn.changes if isinstance(c, RowChange)] == [
                {"id": 3, "name": "after confirm"}
            ]
        with ReplicationConnection(db.dsn) as cleanup:
            cleanup.drop_slot(slot)
            assert not cleanup.slot_exists(slot)


def test_errors_say_whether_to_retry(db: TestDB) -> None:
    with ReplicationConnection(db.dsn) as repl:
        with pytest.raises(SourceError) as missing:
            repl.start_replication("no_such_slot", 0, "no_such_pub", binary=False)
        assert missing.value.retriable is False
        # The connection stays usable for commands after a failed start.
        assert repl.slot_exists("no_such_slot") is False
        with pytest.raises(SourceError, match="invalid replication slot name"):
            repl.create_slot_with_snapshot('bad"name')

    with pytest.raises(SourceError) as refused:
        ReplicationConnection(f"host=127.0.0.1 port={free_port()} user=postgres")
    assert refused.value.retriable is True

    with pytest.raises(SourceError) as no_db:
        ReplicationConnection(db.dsn.replace(f"dbname={db.name}", "dbname=no_such_db"))
    assert no_db.value.retriable is False


def test_lost_stream_is_retriable(db: TestDB) -> None:
    slot, pub = "prism_it_lost", "prism_it_lost_pub"
    with psycopg.connect(db.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE PUBLICATION {pub}")
        with ReplicationConnection(db.dsn) as repl:
            repl.create_slot_with_snapshot(slot)
            repl.start_replication(slot, 0, pub, binary=False)
            repl.read(0.2)  # let the walsender settle
            admin.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
            with pytest.raises(SourceError) as lost:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    repl.read(0.5)
            assert lost.value.retriable is True, lost.value
        admin.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
