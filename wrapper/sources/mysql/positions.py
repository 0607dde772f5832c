"""Binlog positions as one growing integer (pure logic).

A binlog position is (file, offset). It is packed into one
monotonic integer, `epoch << 64 | file sequence << 32 | offset`, so that the
pipeline and the store handle it like PostgreSQL's LSN. Only positions
*after* a whole transaction are ever handed out: resuming at a row event's
position would lose rows until the next TableMap event, which names the
table the rows belong to. The epoch is 0 until a stream resumed by GTID
meets a server that numbers its binlog lower than the stored position
(another server after a failover, renamed files): the decoder then starts
the next epoch, so positions keep growing and "at or before the stored
position" keeps meaning "already stored".
"""

from __future__ import annotations

import re

from prism.wrapper.errors import SourceError

_FILE_SEQ = re.compile(r"\.(\d+)$")
MAX_OFFSET = (1 << 32) - 1


def binlog_file_seq(name: str) -> int:
    """The sequence number of a binlog file name: "binlog.000042" → 42."""
    m = _FILE_SEQ.search(name)
    if m is None:
        raise SourceError(f"binlog file name {name!r} has no numeric extension")
    return int(m[1])


def pack_position(file: str, offset: int, epoch: int = 0) -> int:
    """(file, offset) as one integer that grows with the binlog."""
    if not 0 <= offset <= MAX_OFFSET:
        raise SourceError(f"binlog offset {offset} out of range")
    seq = binlog_file_seq(file)
    if seq > MAX_OFFSET:
        raise SourceError(f"binlog file sequence of {file!r} out of range")
    return (epoch << 64) | (seq << 32) | offset


def unpack_position(position: int) -> tuple[int, int]:
    """(file sequence, offset) of a packed position (its epoch aside)."""
    return (position >> 32) & MAX_OFFSET, position & MAX_OFFSET


def position_epoch(position: int) -> int:
    return position >> 64


def format_position(position: int) -> str:
    seq, offset = unpack_position(position)
    return f"file #{seq:06d}:{offset}"
