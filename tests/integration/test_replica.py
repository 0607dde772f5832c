"""End to end on real parts: PostgreSQL → prism-wrapper process → gRPC → PrismDriver."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from prism.driver import AuthenticationError, QueryError
from prism.fabric.keys import write_secret
from support.consistency import KEYS, SCHEMA, TABLES_CONFIG, db_rows, wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration


ALL_TYPES = """
CREATE TABLE typed (
    id bigint PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint,
    num numeric, num2 numeric(10, 3),
    t text, vc varchar(20),
    b boolean,
    j json, jb jsonb,
    ts timestamp, tstz timestamptz, d date,
    u uuid, by bytea,
    ia integer[], ta text[], fa real[],
    f4 real, f8 double precision,
    v vector(3)
);
"""


async def test_all_types_round_trip(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(ALL_TYPES)
    with db.connect() as c:
        c.execute(
            "INSERT INTO typed VALUES (1, -32768, 2147483647, -9223372036854775808, "
            "'123456789012345678901234567890.000000001', 1.5, 'tab\there ''q'' \\ é ☃', 'vc', "
            'true, \'{"a": [1, 2.5, null]}\', \'{"b": {"c": "d"}}\', '
            "'2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+05:30', '1999-12-31', "
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{1,NULL,3}', "
            "'{\"x\",\"y z\",NULL}', '{1.5,-2.25}', 3.25, 1e300, '[1,2,3]')"
        )
        c.execute("INSERT INTO typed (id) VALUES (2)")  # NULLs everywhere
        c.execute("INSERT INTO typed (id, num, f8) VALUES (3, 'NaN', '-Infinity')")
    proc = wrapper([{"name": "typed", "vector_column": "v", "vector_dim": 3}])
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        with db.connect() as c:
            await wait_consistent(driver, c, {"public.typed": ("id",)}, timeout=20)
            # The same values arriving through the stream rather than the snapshot.
            c.execute(
                "INSERT INTO typed SELECT id + 10, i2, i4, i8, num, num2, t, vc, b, j, jb, "
                "ts, tstz, d, u, by, ia, ta, fa, f4, f8, v FROM typed"
            )
            await wait_consistent(driver, c, {"public.typed": ("id",)}, timeout=20)
        row = driver.get("public.typed", 11)
        assert row is not None
        assert row["num"] == Decimal("123456789012345678901234567890.000000001")
        assert row["tstz"] == dt.datetime(2024, 2, 29, 7, 4, 56, 789012, tzinfo=dt.UTC)
        assert row["u"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        assert row["by"] == b"\x00\xff\x10"
        assert row["ia"] == [1, None, 3]
        assert row["jb"] == {"b": {"c": "d"}}
        assert row["v"].dtype == np.float32 and row["v"].tolist() == [1.0, 2.0, 3.0]
        nan_row = driver.get("public.typed", 13)
        assert nan_row is not None and nan_row["num"].is_nan()


async def test_sync_get_query_and_stream(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    with db.connect() as c:
        for i, v in enumerate(vecs):
            c.execute(
                "INSERT INTO items (id, title, embedding) VALUES (%s, %s, %s)",
                (i, f"item {i}", v.tolist()),
            )
        c.execute(
            "INSERT INTO pairs VALUES (1, 'red running shoes', 'light and fast'),"
            " (2, 'blue coffee mug', 'ceramic')"
        )
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        assert driver.stats()["rows"]["public.items"] == 50
        assert driver.get("public.items", 7)["title"] == "item 7"
        assert driver.get("public.items", 999) is None
        assert driver.get("items", 7)["title"] == "item 7"  # schema defaults to public

        # The nearest neighbour of a stored vector is itself, with score ~1.
        matches = await driver.query(embedding=vecs[7].tolist(), top_k=3, table="public.items")
        assert matches[0].row_id == 7 and matches[0].score == pytest.approx(1.0, abs=1e-5)
        assert matches[0].text_repr == "item 7"
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
        # Scores against numpy cosine (full dimension: projection is orthogonal),
        # up to the index's integer grid (prism.driver.index: about 1e-3 at most).
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        exact = unit @ unit[7]
        for m in matches:
            assert m.score == pytest.approx(float(exact[m.row_id]), abs=2e-3)
        # threshold is inclusive and exact
        cut = matches[1].score
        above = await driver.query(
            embedding=vecs[7].tolist(), top_k=50, threshold=cut, table="public.items"
        )
        assert [m.row_id for m in above] == [m.row_id for m in matches[:2]]

        text = await driver.query(text="running shoes", top_k=2)
        assert text[0].row_id == (1, "red running shoes")
        assert text[0].table == "public.pairs"

        pos = driver.position
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'changed' WHERE id = 7")
            c.execute("DELETE FROM items WHERE id = 8")
        await wait_consistent(driver, db.connect(), {"public.items": ("id",)}, timeout=20)
        assert driver.position > pos
        assert driver.get("public.items", 7)["title"] == "changed"
        assert all(
            m.row_id != 8
            for m in await driver.query(embedding=vecs[8].tolist(), top_k=50, table="public.items")
        )

        for bad in (
            dict(embedding=[1.0] * 5),
            dict(embedding=[float("nan")] * 8),
            dict(embedding=vecs[0].tolist(), top_k=0),
            dict(),
            dict(embedding=vecs[0].tolist(), threshold=2.0),
        ):
            with pytest.raises(QueryError):
                await driver.query(**bad)
        with pytest.raises(QueryError, match="unknown table"):
            driver.get("public.nope", 1)
        stats = driver.stats()
        assert stats["bootstraps"] == 1 and stats["frames_rejected"] == 0


async def test_wrong_secret_fails_clearly(db, wrapper, secret_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    other = tmp_path / "other.secret"
    write_secret(other)
    async with driver_for(proc, other) as driver:
        with pytest.raises(AuthenticationError, match="does not match the secret of tenant"):
            await driver.wait_ready(timeout=20)
        with pytest.raises(AuthenticationError):
            await driver.query(embedding=[1.0] * 8)


async def test_unknown_tenant_fails_clearly(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file, tenant="other") as driver:
        with pytest.raises(AuthenticationError, match="unknown tenant"):
            await driver.wait_ready(timeout=20)


async def test_bad_vectors_replicated_but_not_searchable(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute(
            "INSERT INTO items (id, title, embedding) VALUES (1, 'ok', %s), "
            "(2, 'null', NULL), (3, 'short', '{1,2}'), (4, 'nan', %s)",
            ([0.5] * 8, [float("nan")] * 8),
        )
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        assert {driver.get("items", i)["title"] for i in (1, 2, 3, 4)} == {
            "ok",
            "null",
            "short",
            "nan",
        }
        found = await driver.query(embedding=[0.5] * 8, top_k=10, threshold=-1.0, table="items")
        assert [m.row_id for m in found] == [1]
    counters = proc.health().counters
    assert counters["vector_missing:public.items:null"] == 1
    assert counters["vector_missing:public.items:wrong-dimension"] == 1
    assert counters["vector_missing:public.items:not-finite"] == 1


async def test_resume_after_kill9_without_bootstrap(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO items (id, title) SELECT g, 'a' FROM generate_series(1, 100) g")
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        stream = driver.stream_id
        proc.kill9()
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'b' WHERE id <= 50")
            c.execute("DELETE FROM items WHERE id > 90")
        proc.start()
        await wait_consistent(driver, db.connect(), KEYS, timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 1, stats  # caught up from the store, not re-copied
        assert stats["reconnects"] >= 1
        assert driver.stream_id == stream


async def test_new_store_means_rebootstrap(db, wrapper, secret_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO items (id, title) SELECT g, 'a' FROM generate_series(1, 20) g")
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        first = driver.stream_id
        proc.kill9()
        store = tmp_path / "store0.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(str(store) + suffix).unlink(missing_ok=True)
        with db.connect() as c:
            c.execute("INSERT INTO items (id, title) VALUES (21, 'new')")
        proc.start()
        await wait_consistent(driver, db.connect(), KEYS, timeout=30)
        assert driver.stream_id != first
        assert driver.stats()["bootstraps"] == 2


async def test_store_of_an_older_format_is_rebuilt(db, wrapper, secret_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A store written by an older layout is never read as the current one:
    the wrapper says so, copies the tables afresh under a new stream
    identity, and the driver re-bootstraps to the database's rows."""
    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO items (id, title) SELECT g, 'a' FROM generate_series(1, 20) g")
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        first = driver.stream_id
        proc.kill9()
        # Turn it into format 1: no recorded format.
        conn = sqlite3.connect(tmp_path / "store0.sqlite3")
        conn.execute("DELETE FROM meta WHERE k = 'format'")
        conn.commit()
        conn.close()
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'changed while away' WHERE id = 3")
        proc.start()
        await wait_consistent(driver, db.connect(), KEYS, timeout=30)
        assert driver.stream_id != first
        assert driver.stats()["bootstraps"] == 2
    log = proc.log_tail(100_000)
    assert "store format 1 found, this prism-wrapper writes format" in log
    assert "copying the tables afresh: the store had format 1" in log


async def test_idle_wrapper_confirms_slot(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA + "CREATE TABLE unrelated (x int);")
    wrapper(TABLES_CONFIG, database={"status_interval_s": 0.2})
    slot = f"prism_{db.name}_0"

    def confirmed() -> int:
        with db.connect() as c:
            (lsn,) = c.execute(
                "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()
            return int(lsn)

    before = confirmed()
    with db.connect() as c:
        c.execute("INSERT INTO unrelated SELECT generate_series(1, 20000)")
        (target,) = c.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()
    for _ in range(100):
        if confirmed() >= target:
            break
        await asyncio.sleep(0.1)
    assert confirmed() >= target > before


def test_sigterm_drains_and_exits_zero(db, wrapper) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    assert proc.terminate() == 0
    assert '"msg": "stopped"' in proc.log_tail()


def test_config_naming_unknown_table_is_rejected(db, wrapper) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper([{"name": "public.missing"}], start=False)
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.wait(30) == 1
    assert "table public.missing does not exist" in proc.log_tail()


def test_table_without_key_is_refused(db, wrapper) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE loose (a int, b text)")
    proc = wrapper([{"name": "loose"}], start=False)
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.wait(30) == 1
    assert "REPLICA IDENTITY FULL" in proc.log_tail()


def test_db_rows_helper_sees_vectors_as_lists(db) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE vv (id int primary key, v vector(2))")
    db.execute("INSERT INTO vv VALUES (1, '[1.5,2]')")
    with db.connect() as c:
        assert db_rows(c, "public.vv", ("id",)) == {"[1]": {"id": 1, "v": [1.5, 2.0]}}


async def test_slot_confirmed_only_after_store_commit(db, wrapper, secret_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The slot's confirmed_flush_lsn never passes the store's committed
    source position: PostgreSQL may only discard WAL that is durable here."""
    import sqlite3
    import threading

    from prism.wrapper.store import read_meta
    from support.consistency import Workload

    db.execute(SCHEMA)
    wrapper(TABLES_CONFIG, store={"commit_interval_ms": 50.0})
    slot = f"prism_{db.name}_0"
    done = threading.Event()

    def load() -> None:
        with db.connect() as c:
            Workload(seed=5).run(c, 600)
        done.set()

    threading.Thread(target=load).start()
    store = sqlite3.connect(f"file:{tmp_path / 'store0.sqlite3'}?mode=ro", uri=True)
    samples = advanced = 0
    first = None
    with db.connect() as c:
        while not done.is_set() or samples < 50:
            (confirmed,) = c.execute(
                "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            ).fetchone()
            stored = read_meta(store).source_position  # read after: can only be newer
            assert int(confirmed) <= stored, (int(confirmed), stored)
            first = first if first is not None else int(confirmed)
            advanced += int(confirmed) > first
            samples += 1
            await asyncio.sleep(0.002)
    assert advanced > 0  # the slot did move while we watched


async def test_driver_past_retention_rebootstraps(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A driver cut off longer than the tombstone retention cannot catch up
    (deletes it missed are forgotten): it must bootstrap in full, and end
    equal to the database."""
    from support.proxy import Proxy

    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO items (id, title) SELECT g, 'a' FROM generate_series(1, 30) g")
    proc = wrapper(TABLES_CONFIG, store={"retention_seconds": 0.5})
    proxy = Proxy(proc.port)
    async with driver_for(proxy.port, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        proxy.cut()
        with db.connect() as c:
            c.execute("DELETE FROM items WHERE id <= 10")
        # Wait until the wrapper purged those tombstones past the driver's position.
        for _ in range(100):
            floor = proc.hello(secret_file).hello.retention_floor
            if floor > driver.position:
                break
            with db.connect() as c:  # keep commits flowing so the wrapper wakes
                c.execute("UPDATE items SET title = 'b' WHERE id = 30")
            await asyncio.sleep(0.2)
        assert floor > driver.position
        assert driver.get("items", 1) is not None  # still the old replica
        proxy.restore()
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=30)
        assert driver.stats()["bootstraps"] == 2
    proxy.close()


async def test_reconnects_through_a_cut_link_and_catches_up(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    from support.proxy import Proxy

    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    proxy = Proxy(proc.port)
    async with driver_for(proxy.port, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for round_ in range(3):
            proxy.cut()
            with db.connect() as c:
                c.execute(
                    "INSERT INTO items (id, title) "
                    "SELECT g, %s FROM generate_series(%s::int, %s::int) g",
                    (f"r{round_}", round_ * 10, round_ * 10 + 9),
                )
            await asyncio.sleep(0.3)
            proxy.restore()
            with db.connect() as c:
                await wait_consistent(driver, c, KEYS, timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 1 and stats["reconnects"] >= 3
        assert proxy.connections >= 4
    proxy.close()


def test_check_command_reports_prerequisites(db, wrapper) -> None:  # type: ignore[no-untyped-def]

    db.execute(SCHEMA + "CREATE TABLE loose (a int);")
    ok = wrapper(TABLES_CONFIG, start=False)
    r = ok.check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   table public.items: key (id)" in r.stdout
    assert "ok   ready to replicate" in r.stdout
    assert "ok   the slot's restart point follows the stream" in r.stdout  # a superuser
    bad = wrapper([{"name": "loose"}, {"name": "items", "text_columns": ["nope"]}], start=False)
    r = bad.check()
    assert r.returncode == 1
    assert "FAIL table public.loose has no primary key" in r.stdout
    with db.connect() as c:
        c.execute("ALTER TABLE loose REPLICA IDENTITY FULL")
    r = bad.check()
    assert "FAIL tables.text_columns: table public.items has no column 'nope'" in r.stdout


async def test_column_without_binary_decoder_added_midstream(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A column whose type has no binary decoder (money) appears mid-stream:
    the wrapper reconnects in text mode instead of dying, and goes on."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        with db.connect() as c:
            c.execute("ALTER TABLE pairs ADD COLUMN price money")
            c.execute("INSERT INTO pairs (a, b, price) VALUES (1, 'x', 1.5)")
            c.execute("INSERT INTO pairs (a, b) VALUES (2, 'y')")
        for _ in range(200):
            row = driver.get("pairs", (2, "y"))
            if row is not None:
                break
            await asyncio.sleep(0.05)
        assert driver.get("pairs", (1, "x")) == {"a": 1, "b": "x", "note": None, "price": "$1.50"}
        assert row == {"a": 2, "b": "y", "note": None, "price": None}
    assert proc.health().status == "SERVING"
    assert "streaming in text mode" in proc.log_tail(20000)


async def test_driver_started_before_the_wrapper(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A driver that connects while the wrapper is still starting (or not yet
    listening) keeps retrying and ends with the right schema and rows."""
    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO pairs SELECT g, 'b' || g, 'n' FROM generate_series(1, 2000) g")
    proc = wrapper(TABLES_CONFIG, start=False)
    async with driver_for(proc, secret_file) as driver:
        await asyncio.sleep(0.2)
        proc.start(wait=False)
        await driver.wait_ready(timeout=60)
        assert driver.tables()["public.pairs"].key_columns == ("a", "b")
        assert driver.get("pairs", (7, "b7")) == {"a": 7, "b": "b7", "note": "n"}
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=30)


async def test_reconnect_after_ddl_keeps_the_replica_readable(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak: a driver that reconnects after a column was added
    learns a new table shape from Hello and bootstraps again. Readers must
    go on seeing the old replica, whole, until the new one is complete;
    the driver used to swap in an empty replica at Hello, so rows that
    exist vanished from get() until the bootstrap ended."""
    from support.proxy import Proxy

    db.execute(SCHEMA)
    with db.connect() as c:
        c.execute("INSERT INTO pairs SELECT g, 'b' || g, 'n' FROM generate_series(1, 3000) g")
    proc = wrapper(TABLES_CONFIG)
    proxy = Proxy(proc.port)
    async with driver_for(proxy.port, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        proxy.cut()
        with db.connect() as c:
            c.execute("ALTER TABLE pairs ADD COLUMN extra integer DEFAULT 5")
            c.execute("UPDATE pairs SET note = 'm' WHERE a = 1")
        await asyncio.sleep(0.3)
        bootstraps = driver.stats()["bootstraps"]
        proxy.restore()
        looks = 0
        while driver.stats()["bootstraps"] == bootstraps:
            # Every look between two applied batches: the old replica or the new, whole.
            assert len(driver._replica.tables["public.pairs"].rows) == 3000, driver.stats()
            assert driver.get("pairs", (7, "b7")) is not None
            looks += 1
            await asyncio.sleep(0)
        assert looks > 0
        assert driver.get("pairs", (7, "b7")) == {"a": 7, "b": "b7", "note": "n", "extra": 5}
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=30)
    proxy.close()


async def test_short_database_outages_with_progress_between_never_exhaust_retries(  # type: ignore[no-untyped-def]
    db, wrapper, secret_file
) -> None:
    """Found by the soak: the retry count and the backoff were reset only by
    a stream that had run 30 s, so short database outages minutes apart, with
    transactions streamed between them, added up: each recovery waited
    longer (up to 30 s) and the tenth made the wrapper give up and exit.
    Failed attempts in a row count; a stream that stored something ends the
    row."""
    from support.proxy import Proxy

    db.execute(SCHEMA)
    to_db = Proxy(db.pg.port)
    proc = wrapper(
        TABLES_CONFIG,
        database={
            "dsn": f"host=127.0.0.1 port={to_db.port} user=postgres dbname={db.name}",
            "retry_limit": 3,
        },
    )
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for n in range(6):
            to_db.cut()
            to_db.restore()
            db.execute("INSERT INTO items (id, title) VALUES (%s, 'after an outage')", (n,))
            for _ in range(300):
                if driver.get("items", n) is not None:
                    break
                await asyncio.sleep(0.05)
            assert driver.get("items", n) is not None, proc.log_tail()
            assert proc.proc.poll() is None, proc.log_tail()
    log = proc.log_tail(50000)
    assert log.count("attempt 1 of 3") >= 6 and "attempt 4" not in log
    to_db.close()


async def test_a_silent_database_link_is_noticed_and_replaced(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """Found by the soak: a replication connection that goes silent without
    closing (a stalled link, a partition) was never noticed. The wrapper
    waited, reporting SERVING, for as long as the silence lasted. It now
    gives up on a link that answered none of 6 status requests in a row,
    as PostgreSQL's own receivers do, and streams over a new one."""
    from support.proxy import Proxy

    db.execute(SCHEMA)
    to_db = Proxy(db.pg.port)
    proc = wrapper(
        TABLES_CONFIG,
        database={
            "dsn": f"host=127.0.0.1 port={to_db.port} user=postgres dbname={db.name}",
            "status_interval_s": 0.5,
        },
    )
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        to_db.stall()  # the open connections hang; new ones get through
        db.execute("INSERT INTO items (id, title) VALUES (1, 'while the link was silent')")
        for _ in range(400):
            if driver.get("items", 1) is not None:
                break
            await asyncio.sleep(0.05)
        assert driver.get("items", 1) is not None, proc.log_tail()
        assert "no message from PostgreSQL" in proc.log_tail(20000)
    to_db.close()


async def test_a_silent_wrapper_link_is_dropped_and_made_anew(  # type: ignore[no-untyped-def]
    db, wrapper, secret_file, caplog
) -> None:
    """A Subscribe call that brings nothing, not even the wrapper's heartbeat
    each second, hangs (a stalled peer, or a byte stream knocked out of step
    that gRPC waits on, as test_tamper's repeated bytes once did): the driver
    drops it after link_silence_s and subscribes anew, well before gRPC's
    keepalive (10 s + 5 s) would notice."""
    from support.proxy import Proxy

    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    proxy = Proxy(proc.port)
    async with driver_for(proxy.port, secret_file, link_silence_s=2) as driver:
        await driver.wait_ready(timeout=30)
        reconnects = driver.stats()["reconnects"]
        proxy.stall()  # the open connection hangs; a new one gets through
        db.execute("INSERT INTO items (id, title) VALUES (1, 'after the link went silent')")
        started = time.monotonic()
        while driver.get("items", 1) is None and time.monotonic() - started < 9:
            await asyncio.sleep(0.05)
        assert driver.get("items", 1) is not None, proc.log_tail()
        assert driver.stats()["reconnects"] > reconnects
        assert "no frame from the wrapper in 2s" in caplog.text
    proxy.close()
