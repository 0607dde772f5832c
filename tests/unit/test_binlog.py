"""Unit tests of the MySQL/MariaDB binlog source's pure parts, no server:
the decoder over binlog events recorded from a real MariaDB 10.11 by
tests/fixtures/capture_binlog.py (replayed through the library's packet
parsing), applying them to the store, positions, DDL parsing, value
normalization, prerequisite checks, the DSN and the config."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysql
import pytest

from prism.fabric.payload import decode_row, encode_key
from prism.wrapper.apply import Applier
from prism.wrapper.config import config_from_mapping
from prism.wrapper.errors import ConfigError, SourceError, map_pymysql_error
from prism.wrapper.sources.base import RowChange, SourceTransaction, TruncateChange
from prism.wrapper.sources.mysql.binlog import BinlogDecoder, ddl_targets
from prism.wrapper.sources.mysql.check import grant_problems, replica_id_problems, variable_problems
from prism.wrapper.sources.mysql.columns import ColumnKind, catalog_type_name
from prism.wrapper.sources.mysql.dsn import parse_mysql_dsn
from prism.wrapper.sources.mysql.positions import binlog_file_seq, pack_position, unpack_position
from prism.wrapper.sources.mysql.replay import BinlogReplaySource, read_recording, spec_from_json
from prism.wrapper.store import Store
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer, as_float32
from support.configs import offline_config

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "binlog" / "mariadb.bin"


def replay() -> tuple[BinlogReplaySource, list[SourceTransaction]]:
    src = BinlogReplaySource.from_file(FIXTURE)
    return src, [t for t in src.transactions() if t is not None]


def rows(t: SourceTransaction) -> list[RowChange]:
    return [c for c in t.changes if isinstance(c, RowChange)]


ROW1 = {
    "id": 18446744073709551615,
    "i8": -128,
    "u8": 255,
    "i16": -32768,
    "u24": 16777215,
    "i32": -2147483648,
    "u32": 4294967295,
    "i64": -9223372036854775808,
    "dec1": Decimal("-12345678901234567890.0123456789"),
    "dec2": Decimal("-0.12345"),
    "f": 0.12345670163631439,  # the float32 nearest 0.1234567, exactly
    "d": 0.1,
    "vc": "héllo ✓",
    "tx": "some text",
    "bl": b"\x00\xff\x10",
    "vb": b"",
    "bn": b"\x01\x02\x00\x00",  # BINARY(4): the binlog drops the NUL padding
    "ch": "ab",
    "js": {"a": [1, 2.5, None, "s"], "b": {"c": True}},
    "en": "b",
    "st": "x,z",  # definition order, as MySQL shows it
    "bt": 513,
    "dt6": dt.datetime(2024, 2, 29, 13, 14, 15, 123456),
    "dt0": dt.datetime(2024, 2, 29, 13, 14, 15),
    "ts3": dt.datetime(2024, 2, 29, 13, 14, 15, 120000),
    "da": dt.date(2024, 2, 29),
    "tm": -dt.timedelta(hours=12, minutes=34, seconds=56, microseconds=500000),
    "yr": 2024,
}


def test_recorded_transactions_decode_whole_and_typed() -> None:
    src, txns = replay()
    # T1, T2, T4, ALTER, ALTER, insert, TRUNCATE: the rollback, the savepoint's
    # undone row and the other table's transaction are not there.
    assert len(txns) == 7
    t1 = rows(txns[0])
    assert [c.op for c in t1] == ["insert", "insert"]
    new = t1[0].new
    assert new == ROW1
    for k, v in ROW1.items():
        assert type(new[k]) is type(v), k
    assert t1[1].new is not None and t1[1].new["st"] == "" and t1[1].new["bn"] is None
    assert set(t1[1].new) == set(ROW1)

    t2 = rows(txns[1])
    assert [c.new["id"] for c in t2 if c.new] == [1, 2, 3]  # one statement, three rows
    ids = {c.new["id"] for t in txns for c in rows(t) if c.new}
    assert 98 not in ids and 99 not in ids

    t4 = rows(txns[2])
    assert [(c.op, c.table) for c in t4] == [
        ("update", "fx.docs"),
        ("update", "fx.docs"),
        ("update", "fx.docs"),
        ("delete", "fx.types_t"),
    ]
    assert t4[2].old == {"id": 3, "body": "three", "n": 3} and t4[2].new is not None
    assert t4[2].new["id"] == 4
    assert t4[3].old is not None and t4[3].old["id"] == 2

    # No relation change until the ALTERs: stream and catalog agree on types.
    assert all(not t.relations for t in txns[:3])
    alters = txns[3:5]
    assert all(not t.changes for t in alters)
    after = txns[5]
    assert list(after.relations) == ["fx.docs"]
    assert [(c.name, c.type_name) for c in after.relations["fx.docs"].columns] == [
        ("id", "int"),
        ("n", "int"),
        ("extra", "int"),
    ]
    assert rows(after)[0].new == {"id": 5, "n": 5, "extra": 7}
    assert txns[6].changes == [TruncateChange(("fx.docs",))]
    assert src.decoder.last_gtid.startswith("0-1-")


def test_positions_are_transaction_boundaries_and_grow() -> None:
    header, _ = read_recording(FIXTURE)
    _, txns = replay()
    ends = [t.end_lsn for t in txns]
    assert ends == sorted(set(ends))
    assert ends[0] > pack_position(header["file"], header["offset"])
    assert all(t.commit_lsn == t.end_lsn for t in txns)
    assert all(t.commit_time_us > 1_600_000_000 * 10**6 for t in txns)


def test_ddl_asks_for_a_catalog_refresh() -> None:
    src = BinlogReplaySource.from_file(FIXTURE)
    refreshes = []
    for t in src.transactions():
        refreshes.append((len(t.changes), sorted(src.decoder.take_refresh())) if t else None)
    assert refreshes[3] == (0, ["fx.docs"]) and refreshes[4] == (0, ["fx.docs"])
    assert refreshes[2][1] == [] and refreshes[6][1] == []


def test_resuming_at_a_stored_boundary_neither_skips_nor_repeats() -> None:
    """A restart resumes at the stored end of a transaction. The server sends
    from there; a reconnect that replays older events yields nothing twice."""
    header, packets = read_recording(FIXTURE)
    _, txns = replay()
    for k in range(len(txns)):
        src = BinlogReplaySource(header, packets)
        resumed = src.decoder.boundary = txns[k].end_lsn
        again = [t for t in src.transactions() if t is not None]
        assert [t.end_lsn for t in again] == [t.end_lsn for t in txns[k + 1 :]]
        assert all(t.end_lsn > resumed for t in again)


def test_a_rows_event_without_column_names_is_refused() -> None:
    class Col:
        name = None
        type = 3
        unsigned = False
        character_set_name = None

    header, _ = read_recording(FIXTURE)
    dec = BinlogDecoder(
        [spec_from_json(t) for t in header["tables"]],
        pack_position("binlog.000001", 4),
        "binlog.000001",
    )
    spec = dec.tables["fx.docs"]
    with pytest.raises(SourceError, match="binlog_row_metadata = FULL"):
        dec._relation(spec, [Col()])


def test_applied_to_the_store(tmp_path: Path) -> None:
    cfg = offline_config(
        [{"name": "types_t"}, {"name": "docs"}], {"flavor": "mysql", "dsn": "mysql://u@h/fx"}
    )
    header, _ = read_recording(FIXTURE)
    shapes = {}
    for t in header["tables"]:
        spec = spec_from_json(t)
        shapes[spec.qualified] = TableShape(
            spec.qualified,
            tuple((c.name, c.type_name) for c in spec.columns),
            spec.key_columns,
            cfg.table(spec.qualified),
        )
    applier = Applier(shapes, Vectorizer(cfg, {"t": b"k" * 32}), lambda t, c: 7)
    store = Store(tmp_path / "s.sqlite3", "normal")
    _, txns = replay()
    with store.transaction() as txn:
        applier.apply_group(txn, txns[:3])
        image = txn.get("fx.types_t", encode_key([ROW1["id"]]))
        assert image is not None and decode_row(image[0]) == ROW1
        assert sorted(txn.live_keys("fx.docs")) == [encode_key([i]) for i in (1, 2, 4)]
        assert txn.live_keys("fx.types_t") and len(txn.live_keys("fx.types_t")) == 1
    with store.transaction() as txn:
        applier.apply_group(txn, txns[3:6])
        docs = {k: decode_row(image.payload) for k, image in txn.live_rows("fx.docs")}
        # body dropped, extra filled with the default
        assert docs[encode_key([1])] == {"id": 1, "n": 10, "extra": 7}
        assert docs[encode_key([5])] == {"id": 5, "n": 5, "extra": 7}
    with store.transaction() as txn:
        applier.apply_group(txn, txns[6:])
        assert txn.live_keys("fx.docs") == []
    store.close()


# -- pure helpers -----------------------------------------------------------------


def test_positions_pack_file_and_offset() -> None:
    p = pack_position("mysql-bin.000042", 1234)
    assert unpack_position(p) == (42, 1234)
    assert pack_position("binlog.000001", 4) < pack_position("binlog.000001", 5) < p
    assert pack_position("binlog.000002", 4) > pack_position("binlog.000001", 2**32 - 1)
    assert binlog_file_seq("host-bin.1000000") == 1_000_000
    with pytest.raises(SourceError, match="no numeric extension"):
        binlog_file_seq("binlog")
    with pytest.raises(SourceError, match="out of range"):
        pack_position("binlog.000001", 2**32)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("TRUNCATE TABLE docs", ("truncate", ["fx.docs"])),
        ("truncate `other`.`t``x`", ("truncate", ["other.t`x"])),
        ("/* c */ ALTER TABLE docs ADD COLUMN x INT", ("alter", ["fx.docs"])),
        ("ALTER ONLINE IGNORE TABLE s.t DROP c", ("alter", ["s.t"])),
        ("DROP TABLE IF EXISTS a, `b`.c /* generated by server */", ("drop", ["fx.a", "b.c"])),
        ("RENAME TABLE a TO b, c TO d", ("rename", ["fx.a", "fx.b", "fx.c", "fx.d"])),
        ("CREATE TABLE IF NOT EXISTS n (id int)", ("create", ["fx.n"])),
        ("CREATE OR REPLACE TABLE n (id int)", ("create", ["fx.n"])),
        ("GRANT SELECT ON *.* TO x", None),
        ("CREATE INDEX i ON docs (n)", None),
    ],
)
def test_ddl_targets(query: str, expected: Any) -> None:
    assert ddl_targets(query, "fx") == expected


def test_values_from_mysql_binary_json_and_select() -> None:
    js = ColumnKind("j", "json")
    # python-mysql-replication gives MySQL's binary JSON with bytes strings/keys.
    assert js.from_stream({b"a": [b"x", 1, None, {b"k": True}]}) == {
        "a": ["x", 1, None, {"k": True}]
    }
    assert js.from_stream('{"a": 1}') == {"a": 1}  # MariaDB: JSON is text
    assert js.from_select('[1, "x"]') == [1, "x"]
    with pytest.raises(SourceError, match="invalid JSON"):
        js.from_select("{nope")
    st = ColumnKind("s", "set", set_members=("x", "y", "z"))
    assert st.from_stream({"z", "x"}) == "x,z" and st.from_stream(None, "empty set") == ""
    assert st.from_stream(None, "null") is None and st.from_select("x,z") == "x,z"
    bit = ColumnKind("b", "bit")
    assert bit.from_stream("1000000001") == 513 == bit.from_select(b"\x02\x01")
    assert ColumnKind("f", "float").select_expr("`f`") == "(`f` + 0e0)"
    assert ColumnKind("v", "varbinary").from_stream("") == b""
    assert ColumnKind("b", "binary", binary_length=3).from_stream(b"a") == b"a\0\0"


def test_catalog_type_names() -> None:
    assert catalog_type_name("int", "int(10) unsigned") == "int unsigned"
    assert catalog_type_name("longtext", "longtext", json_column=True) == "json"
    assert catalog_type_name("mediumblob", "mediumblob") == "blob"
    assert catalog_type_name("point", "point") == "geometry"


def test_packed_float32_blob_is_a_vector() -> None:
    v = as_float32(b"\x00\x00\x80\x3f\x00\x00\x00\x40")
    assert v.dtype.name == "float32" and v.tolist() == [1.0, 2.0]
    assert as_float32(b"\x00\x01\x02") == b"\x00\x01\x02"  # not a float32 multiple


GOOD_VARS = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
    "server_id": "1",
}


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        ({"log_bin": "OFF"}, "add log_bin = mysql-bin under [mysqld]"),
        ({"binlog_format": "MIXED"}, "SET GLOBAL binlog_format = 'ROW'"),
        ({"binlog_row_image": "MINIMAL"}, "SET GLOBAL binlog_row_image = 'FULL'"),
        ({"binlog_row_metadata": "MINIMAL"}, "SET GLOBAL binlog_row_metadata = 'FULL'"),
        ({"server_id": "0"}, "set server_id = 1"),
        ({"binlog_row_value_options": "PARTIAL_JSON"}, "binlog_row_value_options = ''"),
        ({"server_id": "77"}, "database.server_id = 77 is the server's own server_id"),
    ],
)
def test_variable_problems_name_the_setting(change: dict[str, str], fix: str) -> None:
    problems = variable_problems(GOOD_VARS | change, 77, True)
    assert len(problems) == 1 and fix in problems[0], problems


def test_variable_problems_accept_a_good_server_and_old_ones() -> None:
    assert variable_problems(GOOD_VARS, 1000, False) == []
    old = {k: v for k, v in GOOD_VARS.items() if k != "binlog_row_metadata"}
    assert variable_problems(old, 1000, False) == []


def test_grant_problems() -> None:
    acct = "'prism'@'%'"
    tables = {"shop": ["items", "orders"]}
    ok_maria = [
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `prism`@`%`",
        "GRANT SELECT ON `shop`.* TO `prism`@`%`",
    ]
    assert grant_problems(ok_maria, acct, tables, is_mariadb=True) == []
    # MySQL also needs RELOAD (the brief lock) and calls it REPLICATION CLIENT.
    mysql = grant_problems(ok_maria, acct, tables, is_mariadb=False)
    assert mysql == [
        f"{acct} lacks RELOAD, needed for the brief FLUSH TABLES WITH READ LOCK that reads the "
        f"initial copy's binlog position: GRANT RELOAD ON *.* TO {acct}"
    ]
    ok_mysql = [
        "GRANT RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `prism`@`%`",
        "GRANT SELECT ON `shop`.`items` TO `prism`@`%`",
    ]
    problems = grant_problems(ok_mysql, acct, tables, is_mariadb=False)
    assert problems == [
        f"{acct} lacks SELECT on shop.orders: GRANT SELECT ON `shop`.`orders` TO {acct}"
    ]
    none = grant_problems(["GRANT USAGE ON *.* TO `prism`@`%`"], acct, tables, is_mariadb=False)
    assert f"GRANT REPLICATION SLAVE ON *.* TO {acct}" in none[0]
    assert f"GRANT REPLICATION CLIENT ON *.* TO {acct}" in none[1]
    assert len(none) == 5
    assert (
        grant_problems(["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"], acct, tables, False)
        == []
    )


def test_replica_id_problems() -> None:
    assert replica_id_problems([(5, "h", 3306), (6, "", 0)], 7) == []
    (p,) = replica_id_problems([(5, "h", 3306), (7, "other", 3307)], 7)
    assert "other:3307" in p and "database.server_id" in p


def test_dsn() -> None:
    d = parse_mysql_dsn("mysql://us%40er:p%3Ass@db.example:3307/shop?connect_timeout=3")
    assert (d.user, d.password, d.host, d.port, d.database) == (
        "us@er",
        "p:ss",
        "db.example",
        3307,
        "shop",
    )
    assert d.connect_args()["connect_timeout"] == 3.0 and "p:ss" not in d.redacted()
    assert parse_mysql_dsn("mariadb://u@h/db").port == 3306
    for bad, match in [
        ("host=db user=x", "scheme"),
        ("mysql://h/db", "no user"),
        ("mysql://u@h", "no database"),
        ("mysql://u@h/db?sslmode=x", "unknown parameter"),
        ("mysql://u@h:99999/db", "database.dsn"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_mysql_dsn(bad)


def _cfg(**tables: Any) -> Any:
    return config_from_mapping(
        {
            "database": {"flavor": "mysql", "dsn": "mysql://u@h/shop", "server_id": 9},
            "server": {"tenant_id": "t", "secret_file": "/s", "insecure": True},
            "tables": [{"name": "items"} | tables, {"name": "other.t"}],
        },
        env={},
    )


def test_config_for_mysql() -> None:
    cfg = _cfg()
    assert cfg.flavor == "mysql" and [t.name for t in cfg.tables] == ["shop.items", "other.t"]
    assert cfg.database.server_id == 9 and cfg.database.retry_limit == 10
    with pytest.raises(ConfigError, match=r"tables\[0\].writable \(shop.items\).*mysql"):
        _cfg(writable=True)
    with pytest.raises(ConfigError, match=r"database\.dsn"):
        config_from_mapping(
            {
                "database": {"flavor": "mysql", "dsn": "host=db"},
                "server": {"tenant_id": "t", "secret_file": "/s", "insecure": True},
                "tables": [{"name": "items"}],
            },
            env={},
        )


def test_pymysql_errors_are_mapped() -> None:
    auth = map_pymysql_error(pymysql.err.OperationalError(1045, "Access denied"), "connecting")
    assert not auth.retriable and "check the dsn's user and password" in str(auth)
    lost = map_pymysql_error(pymysql.err.OperationalError(2013, "Lost connection"), "reading")
    assert lost.retriable and "(2013)" in str(lost)
    purged = map_pymysql_error(pymysql.err.OperationalError(1236, "Could not find first log"), "r")
    assert purged.retriable
    assert map_pymysql_error(ConnectionResetError(), "x").retriable
    assert not map_pymysql_error(pymysql.err.ProgrammingError(1064, "syntax"), "x").retriable
