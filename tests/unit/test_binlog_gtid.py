"""Unit tests of GTID tracking in the binlog decoder, no server: a binlog
streamed *by GTID* from a real MariaDB 10.11 (tests/fixtures/capture_binlog.py
recorded it, with the state the server reports at every transaction
boundary), positions on a server that numbers its binlog otherwise, the
server resending what the state holds, transactions without a GTID, MySQL
GTID events (hand-built to MySQL's documented layout: no MySQL server runs
here), the check of the GTID settings, the config key and the store."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from prism.wrapper.config import config_from_mapping
from prism.wrapper.errors import ConfigError
from prism.wrapper.sources.base import ResumePoint, RowChange, SourceTransaction
from prism.wrapper.sources.flavor import describe_point
from prism.wrapper.sources.mysql.binlog import BinlogDecoder
from prism.wrapper.sources.mysql.check import gtid_problems, gtid_summary, server_has_gtids
from prism.wrapper.sources.mysql.gtid import MariaPosition, MySQLGtidSet, decode_state
from prism.wrapper.sources.mysql.positions import pack_position, position_epoch, unpack_position
from prism.wrapper.sources.mysql.replay import (
    BinlogPacketParser,
    BinlogReplaySource,
    read_recording,
    spec_from_json,
)
from prism.wrapper.store import Store
from support.configs import UNUSED_SERVER

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binlog"
GTID_FIXTURE = FIXTURES / "mariadb-gtid.bin"
POSITION_FIXTURE = FIXTURES / "mariadb.bin"


def gtid_replay(**header: Any) -> BinlogReplaySource:
    h, packets = read_recording(GTID_FIXTURE)
    return BinlogReplaySource(h | header, packets)


def boundary_state(h: dict[str, Any], position: int) -> MariaPosition:
    """The state the server reported at a boundary (BINLOG_GTID_POS)."""
    seq, offset = unpack_position(position)
    return MariaPosition.parse(h["boundary_states"][f"binlog.{seq:06d}:{offset}"])


@pytest.mark.parametrize("by_gtid", [True, False])
def test_tracked_state_equals_the_servers_at_every_boundary(by_gtid: bool) -> None:
    """Fed event by event, the decoder's GTID state at each transaction
    boundary is the one MariaDB itself reports there, across two domains,
    two server ids, another table's transaction, DDL and a rollback."""
    h, _ = read_recording(GTID_FIXTURE)
    src = gtid_replay(by_gtid=by_gtid)
    dec = src.decoder
    start = pack_position(h["file"], h["offset"])
    seen = {}
    txns: list[SourceTransaction] = []
    for ev in src.events():
        stx = dec.feed(ev)
        if stx is not None:
            txns.append(stx)
            assert decode_state(stx.gtid_state) == boundary_state(h, stx.end_lsn)
        if not dec.in_transaction and dec.boundary > start:
            seen[dec.boundary] = decode_state(dec.gtid_state())
    assert len(seen) == len(h["boundary_states"]) == 8
    for position, state in seen.items():
        assert state == boundary_state(h, position)
    # Ours: G1, G2, G3 (two rows), the ALTER, G7; not the other table's, not
    # the rolled-back mix, not the marker.
    assert [len(t.changes) for t in txns] == [1, 1, 2, 0, 1]
    assert [c.new["id"] for c in txns[2].changes if isinstance(c, RowChange) and c.new] == [4, 1]
    assert str(decode_state(txns[2].gtid_state)) == "0-7-8,1-1-1"  # written as server 7
    assert str(decode_state(dec.gtid_state())) == "0-1-12,1-1-2"
    assert dec.known_skipped == 0 and not dec.lost_gtid_tracking
    assert all(position_epoch(t.end_lsn) == 0 for t in txns)


def test_by_gtid_on_a_server_numbering_lower_starts_a_new_epoch() -> None:
    """The stored position is another server's (binlog #000009): streamed by
    GTID from this one (#000001), every position is still greater than the
    stored one, so the pipeline skips nothing; file and offset are this
    server's."""
    stored = pack_position("binlog.000009", 999_999)
    h, packets = read_recording(GTID_FIXTURE)
    src = gtid_replay()
    src.decoder = BinlogDecoder(
        [spec_from_json(t) for t in h["tables"]],
        stored,
        None,
        gtids=decode_state(h["gtid_state"]),
        by_gtid=True,
    )
    txns = [t for t in src.transactions() if t is not None]
    assert len(txns) == 5
    assert all(t.end_lsn > stored and position_epoch(t.end_lsn) == 1 for t in txns)
    assert unpack_position(txns[0].end_lsn) == (1, 1658)
    # Resumed again after G1 from this server, which sends its Rotate and then
    # what follows G1: the epoch stays, positions go on growing.
    parser = BinlogPacketParser(True, "mariadb")
    events = [e for e in (parser.parse(p) for p in packets) if e is not None]
    g1_end = next(i for i, e in enumerate(events) if type(e).__name__ == "XidEvent")
    again = BinlogDecoder(
        [spec_from_json(t) for t in h["tables"]],
        txns[0].end_lsn,
        None,
        gtids=decode_state(txns[0].gtid_state),
        by_gtid=True,
    )
    resumed = [again.feed(e) for e in [events[0], *events[g1_end + 1 :]]]
    assert [t.end_lsn for t in resumed if t is not None] == [t.end_lsn for t in txns[1:]]
    assert position_epoch(again.boundary) == 1 and again.known_skipped == 0


def test_by_gtid_on_the_same_server_keeps_the_epoch() -> None:
    src = gtid_replay()
    txns = [t for t in src.transactions() if t is not None]
    start = pack_position(src.header["file"], src.header["offset"])
    assert all(position_epoch(t.end_lsn) == 0 and t.end_lsn > start for t in txns)


def test_by_gtid_a_transaction_the_state_holds_is_never_handed_out() -> None:
    """If the server sent transactions the stored state already holds, they
    are skipped (by GTID, whatever their position), never applied twice."""
    src = gtid_replay(gtid_state="mariadb:0-7-8,1-1-1")  # G1..G3 already stored
    txns = [t for t in src.transactions() if t is not None]
    assert src.decoder.known_skipped == 3
    assert [len(t.changes) for t in txns] == [0, 1]  # the ALTER, G7
    assert str(decode_state(src.decoder.gtid_state())) == "0-1-12,1-1-2"
    # By position, the file and offset decide: nothing is skipped by GTID.
    by_position = gtid_replay(gtid_state="mariadb:0-7-8,1-1-1", by_gtid=False)
    assert len([t for t in by_position.transactions() if t is not None]) == 5


def test_a_transaction_without_a_gtid_makes_the_state_unknown() -> None:
    """What a MySQL server with anonymous transactions (gtid_mode not ON) or
    MySQL 8.4's tagged GTID events (which the library does not read) look
    like to the decoder: the state can no longer be trusted, so it is
    dropped, never stored half right."""
    h, packets = read_recording(POSITION_FIXTURE)
    parser = BinlogPacketParser(bool(h["use_checksum"]), "mariadb")
    events = [e for e in (parser.parse(p) for p in packets) if e is not None]
    dec = BinlogDecoder(
        [spec_from_json(t) for t in h["tables"]],
        pack_position(h["file"], h["offset"]),
        h["file"],
        gtids=MariaPosition.parse("0-1-1"),
    )
    first_gtid = next(i for i, e in enumerate(events) if type(e).__name__ == "MariadbGtidEvent")
    stx = None
    for i, ev in enumerate(events):
        if i == first_gtid:
            continue  # this transaction arrives without its GTID event
        stx = dec.feed(ev) or stx
        if i < first_gtid:
            assert dec.gtid_state() == "mariadb:0-1-1"
    assert dec.lost_gtid_tracking and dec.gtid_state() == ""
    assert stx is not None and stx.gtid_state == ""


# -- MySQL GTID events, built to MySQL's binlog layout -----------------------------

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def mysql_event(event_type: int, body: bytes, log_pos: int) -> bytes:
    header = struct.pack("<IBIIIH", 1_700_000_000, event_type, 1, 19 + len(body), log_pos, 0)
    return b"\x00" + header + body


def gtid_event(gno: int, log_pos: int) -> bytes:
    # GTID_LOG_EVENT: commit flag, source uuid, gno, logical clock type.
    return mysql_event(
        0x21,
        b"\x01" + bytes.fromhex(UUID.replace("-", "")) + struct.pack("<Q", gno) + b"\x02",
        log_pos,
    )


def xid_event(xid: int, log_pos: int) -> bytes:
    return mysql_event(0x10, struct.pack("<Q", xid), log_pos)


def rotate_event(name: str) -> bytes:
    return mysql_event(0x04, struct.pack("<Q", 4) + name.encode(), 0)


def test_mysql_gtid_events_grow_the_executed_set() -> None:
    parser = BinlogPacketParser(False, "mysql")
    packets = [rotate_event("mysql-bin.000003")]
    pos = 100
    for gno in (6, 7, 9):
        packets += [gtid_event(gno, pos + 50), xid_event(gno, pos + 80)]
        pos += 100
    # A tagged GTID event (MySQL 8.4, type 42): the library does not read it.
    packets += [mysql_event(42, b"\x00" * 40, pos + 50), xid_event(10, pos + 80)]
    events = [e for e in (parser.parse(p) for p in packets) if e is not None]
    assert [type(e).__name__ for e in events[:3]] == ["RotateEvent", "GtidEvent", "XidEvent"]
    assert events[1].gtid == f"{UUID}:6"
    dec = BinlogDecoder(
        [],
        pack_position("mysql-bin.000003", 50),
        None,
        gtids=MySQLGtidSet.parse(f"{UUID.upper()}:1-5"),
        by_gtid=True,
    )
    states = []
    for e in events:
        dec.feed(e)
        if not dec.in_transaction:
            states.append(dec.gtid_state())
    assert states[:4] == [
        f"mysql:{UUID}:1-5",
        f"mysql:{UUID}:1-6",
        f"mysql:{UUID}:1-7",
        f"mysql:{UUID}:1-7:9",
    ]
    assert states[-1] == "" and dec.lost_gtid_tracking
    assert unpack_position(dec.boundary) == (3, 480) and position_epoch(dec.boundary) == 0


# -- check, config, Health, store ------------------------------------------------


def test_gtid_problems_name_each_setting() -> None:
    off = {"gtid_mode": "OFF", "enforce_gtid_consistency": "OFF"}
    problems = gtid_problems(off, "gtid", is_mariadb=False)
    assert len(problems) == 2
    assert "SET GLOBAL enforce_gtid_consistency = ON" in problems[0]
    assert "enforce_gtid_consistency = ON under [mysqld]" in problems[0]
    assert (
        "SET GLOBAL gtid_mode = OFF_PERMISSIVE, then SET GLOBAL gtid_mode = ON_PERMISSIVE, "
        "then SET GLOBAL gtid_mode = ON" in problems[1]
    )
    assert "Ongoing_anonymous_transaction_count" in problems[1]
    half = gtid_problems(
        {"gtid_mode": "ON_PERMISSIVE", "enforce_gtid_consistency": "ON"}, "gtid", False
    )
    assert len(half) == 1 and "gtid_mode is ON_PERMISSIVE" in half[0]
    assert "SET GLOBAL gtid_mode = ON " in half[0] and "OFF_PERMISSIVE" not in half[0]
    on = {"gtid_mode": "ON", "enforce_gtid_consistency": "ON"}
    assert gtid_problems(on, "gtid", False) == []
    assert gtid_problems(off, "auto", False) == [] and gtid_problems(off, "position", False) == []
    assert gtid_problems({}, "gtid", is_mariadb=True) == []  # MariaDB always has GTIDs
    assert server_has_gtids({}, True) and server_has_gtids(on, False)
    assert not server_has_gtids({"gtid_mode": "ON_PERMISSIVE"}, False)


def test_gtid_summary_for_check() -> None:
    on = {"gtid_mode": "ON", "enforce_gtid_consistency": "ON"}
    off = {"gtid_mode": "OFF", "enforce_gtid_consistency": "OFF"}
    assert gtid_summary({}, "auto", True, "0-1-42") == (
        'GTIDs: MariaDB, gtid_binlog_pos 0-1-42; resume by GTID (database.resume = "auto")'
    )
    assert gtid_summary(on, "gtid", False, None).startswith("GTIDs: gtid_mode ON, ")
    assert "resume by GTID" in gtid_summary(on, "gtid", False, None)
    fallback = gtid_summary(off, "auto", False, None)
    assert "gtid_mode OFF" in fallback and "a failover to another server means a fresh" in fallback
    assert 'database.resume = "position"' in gtid_summary(on, "position", False, None)


def test_resume_config_key() -> None:
    base = {
        "database": {"flavor": "mysql", "dsn": "mysql://u@h/db"},
        "server": UNUSED_SERVER,
        "tables": [{"name": "t"}],
    }
    assert config_from_mapping(base, env={}).database.resume == "auto"
    gtid = base | {"database": base["database"] | {"resume": "gtid"}}
    assert config_from_mapping(gtid, env={}).database.resume == "gtid"
    env = config_from_mapping(base, env={"PRISM_DATABASE_RESUME": "position"})
    assert env.database.resume == "position"
    with pytest.raises(ConfigError, match=r"database.resume = 'gtids'.*\"auto\", \"position\""):
        config_from_mapping(base | {"database": base["database"] | {"resume": "gtids"}}, env={})


def test_health_describes_the_point() -> None:
    p = pack_position("binlog.000003", 1147)
    assert describe_point("mysql", ResumePoint(p, "mariadb:0-1-42,1-2-7")) == (
        "binlog #000003:1147, gtid 0-1-42,1-2-7"
    )
    assert describe_point("mysql", ResumePoint(p, "")) == "binlog #000003:1147, gtid unknown"
    assert describe_point("mysql", ResumePoint(p, "mariadb:")).endswith("gtid (none yet)")
    assert describe_point("postgres", ResumePoint(0x16B3748)) == "0/16B3748"


def test_store_keeps_the_gtid_state_with_the_position(tmp_path: Path) -> None:
    """Both set in one store transaction: both durable, or neither."""
    store = Store(tmp_path / "s.sqlite3", "normal")
    with store.transaction() as txn:
        txn.set_source_position(100, 5, "mariadb:0-1-42")
    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.upsert("db.t", "k", b"p", None, 6)
        txn.set_source_position(200, 6, "mariadb:0-1-43")
        raise RuntimeError("killed mid-commit")
    assert store.meta.resume_point == ResumePoint(100, "mariadb:0-1-42")
    store.close()
    reopened = Store(tmp_path / "s.sqlite3", "normal")
    assert reopened.meta.resume_point == ResumePoint(100, "mariadb:0-1-42")
    with reopened.transaction() as txn:
        txn.set_source_position(300)  # a source without GTIDs: the state goes with it
    assert reopened.meta.resume_point == ResumePoint(300, "")
    assert reopened.reset().gtid_state == ""
    reopened.close()
