"""Framing of PostgreSQL's streaming replication CopyBoth sub-protocol.

Place in the pipeline: PostgreSQL WAL → **walstream** (unwraps the server's
XLogData / keepalive frames) → pgoutput decoder → pipeline → store. The
standby status update built here is how the pipeline acknowledges, after its
store committed, what the server may discard.

Pure functions over bytes; the socket work lives in `conn`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from prism.wrapper.errors import SourceError

# PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
PG_EPOCH_OFFSET_US = 946_684_800_000_000

_XLOGDATA_HEAD = struct.Struct(">QQq")  # wal_start, wal_end, send_time
_KEEPALIVE = struct.Struct(">Qq?")  # wal_end, send_time, reply_requested
_STATUS = struct.Struct(">cQQQq?")
_MAX_LSN = (1 << 64) - 1
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


# Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, some 0.9 µs a message against 0.26 with slots, on the
# pipeline thread for every change (benchmark/README.md, "Issue 12").
@dataclass(slots=True)
class XLogData:
    """A chunk of decoded WAL ('w'). For logical replication `payload` is one
    output-plugin message (for pgoutput: Begin, Insert, Commit, ...)."""

    wal_start: int
    wal_end: int
    send_time_us: int  # unix microseconds
    payload: bytes


@dataclass(slots=True)
class PrimaryKeepalive:
    """The server's heartbeat ('k'). When `reply_requested` is set the server
    disconnects us after wal_sender_timeout unless a status update follows."""

    wal_end: int
    send_time_us: int  # unix microseconds
    reply_requested: bool


def parse_copy_data(buf: bytes | memoryview) -> XLogData | PrimaryKeepalive:
    """Parse one CopyData message the server sent during START_REPLICATION
    (libpq's buffer as it is: only the payload is copied out of it)."""
    if not buf:
        raise SourceError("replication stream: empty CopyData message")
    kind = buf[0]
    if kind == 0x77:  # 'w'
        if len(buf) < 1 + _XLOGDATA_HEAD.size:
            raise SourceError(f"replication stream: XLogData too short ({len(buf)} bytes)")
        start, end, ts = _XLOGDATA_HEAD.unpack_from(buf, 1)
        return XLogData(start, end, ts + PG_EPOCH_OFFSET_US, bytes(buf[1 + _XLOGDATA_HEAD.size :]))
    if kind == 0x6B:  # 'k'
        if len(buf) < 1 + _KEEPALIVE.size:
            raise SourceError(f"replication stream: keepalive too short ({len(buf)} bytes)")
        end, ts, reply = _KEEPALIVE.unpack_from(buf, 1)
        return PrimaryKeepalive(end, ts + PG_EPOCH_OFFSET_US, reply)
    raise SourceError(f"replication stream: unknown CopyData message type {kind:#04x}")


def standby_status_update(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int,
    now_us: int,
    reply_requested: bool = False,
) -> bytes:
    """Build the client's 'r' message.

    For a logical slot the server takes `flush_lsn` as the slot's
    confirmed_flush_lsn: it may then recycle WAL before it and will restart
    decoding there after a reconnect. So send as flush only what the store has
    durably committed. `now_us` is unix microseconds.
    """
    for name, lsn in (("write", write_lsn), ("flush", flush_lsn), ("apply", apply_lsn)):
        if not 0 <= lsn <= _MAX_LSN:
            raise SourceError(f"standby status update: {name} LSN {lsn} out of range")
    return _STATUS.pack(
        b"r", write_lsn, flush_lsn, apply_lsn, now_us - PG_EPOCH_OFFSET_US, reply_requested
    )


def lsn_to_str(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints pg_lsn: "16/B374D848"."""
    if not 0 <= lsn <= _MAX_LSN:
        raise SourceError(f"LSN {lsn} out of range")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(s: str) -> int:
    """Parse PostgreSQL's pg_lsn text form ("16/B374D848") into an int."""
    m = _LSN_RE.fullmatch(s.strip())
    if m is None:
        raise SourceError(f"not an LSN: {s!r} (expected hex 'X/Y')")
    return (int(m[1], 16) << 32) | int(m[2], 16)
