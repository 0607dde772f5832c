"""Unit tests of the CopyBoth framing (PostgreSQL WAL → **walstream** →
decoder → pipeline → store). No server needed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.postgres.walstream import (
    PG_EPOCH_OFFSET_US,
    PrimaryKeepalive,
    XLogData,
    lsn_from_str,
    lsn_to_str,
    parse_copy_data,
    standby_status_update,
)


def test_pg_epoch_offset_is_2000_01_01() -> None:
    import datetime as dt

    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    assert int(epoch.timestamp()) * 1_000_000 == PG_EPOCH_OFFSET_US


def test_parse_xlogdata() -> None:
    buf = b"w" + struct.pack(">QQq", 0x16B374D848, 0x16B374D900, 5) + b"payload"
    assert parse_copy_data(buf) == XLogData(
        wal_start=0x16B374D848,
        wal_end=0x16B374D900,
        send_time_us=PG_EPOCH_OFFSET_US + 5,
        payload=b"payload",
    )


def test_parse_xlogdata_empty_payload_and_memoryview() -> None:
    buf = b"w" + struct.pack(">QQq", 1, 2, -1)
    msg = parse_copy_data(memoryview(buf))
    assert isinstance(msg, XLogData)
    assert msg.payload == b"" and type(msg.payload) is bytes
    assert msg.send_time_us == PG_EPOCH_OFFSET_US - 1


@pytest.mark.parametrize("reply", [False, True])
def test_parse_keepalive(reply: bool) -> None:
    buf = b"k" + struct.pack(">Qq?", 77, 0, reply)
    assert parse_copy_data(buf) == PrimaryKeepalive(77, PG_EPOCH_OFFSET_US, reply)


@pytest.mark.parametrize(
    ("buf", "match"),
    [
        (b"", "empty"),
        (b"w" + b"\0" * 23, "XLogData too short"),
        (b"k" + b"\0" * 16, "keepalive too short"),
        (b"x123", "unknown CopyData message type 0x78"),
    ],
)
def test_parse_rejects_malformed(buf: bytes, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        parse_copy_data(buf)


@given(st.binary(max_size=64))
def test_parse_random_bytes_only_raise_source_error(buf: bytes) -> None:
    try:
        msg = parse_copy_data(buf)
    except SourceError:
        return
    assert isinstance(msg, XLogData | PrimaryKeepalive)


def test_standby_status_update_layout() -> None:
    now = PG_EPOCH_OFFSET_US + 123
    buf = standby_status_update(10, 20, 30, now, reply_requested=True)
    assert buf == b"r" + struct.pack(">QQQq?", 10, 20, 30, 123, True)
    assert len(buf) == 34
    assert standby_status_update(1, 1, 1, now)[-1:] == b"\0"


def test_standby_status_update_rejects_bad_lsn() -> None:
    with pytest.raises(SourceError, match="flush LSN"):
        standby_status_update(0, -1, 0, 0)


@pytest.mark.parametrize(
    ("lsn", "text"),
    [(0, "0/0"), (0x16B374D848, "16/B374D848"), ((1 << 64) - 1, "FFFFFFFF/FFFFFFFF")],
)
def test_lsn_text_form(lsn: int, text: str) -> None:
    assert lsn_to_str(lsn) == text
    assert lsn_from_str(text) == lsn
    assert lsn_from_str(text.lower()) == lsn


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_roundtrip(lsn: int) -> None:
    assert lsn_from_str(lsn_to_str(lsn)) == lsn


@pytest.mark.parametrize(
    "text", ["", "16", "16/", "/1", "g/1", "-1/2", "0x1/2", "1_0/2", "123456789/0", "1/2/3"]
)
def test_lsn_from_str_rejects(text: str) -> None:
    with pytest.raises(SourceError, match="not an LSN"):
        lsn_from_str(text)


def test_lsn_to_str_rejects_out_of_range() -> None:
    with pytest.raises(SourceError):
        lsn_to_str(1 << 64)
