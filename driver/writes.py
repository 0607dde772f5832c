"""Writes from the app (driver → wrapper → database), with read-your-writes.

Pure helpers for PrismDriver's write calls: the typed operations an app
builds, their encoding into WriteOps (values through the payload codec, so
types travel exactly), and the ack. The calls themselves live on
PrismDriver, which owns the channel and the replica they wait on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prism.driver.errors import InvalidWriteError
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errors import PayloadError
from prism.fabric.payload import encode_row

_KINDS = {"upsert": pb.UPSERT, "update": pb.UPDATE, "delete": pb.DELETE}


@dataclass(frozen=True)
class WriteOp:
    """One operation of a write_many batch."""

    op: Literal["upsert", "update", "delete"]
    row_id: Any
    data: Mapping[str, Any] = field(default_factory=dict)
    table: str | None = None


@dataclass(frozen=True)
class WriteAck:
    event_id: str
    position: int  # the wrapper position at which the write is visible
    stream_id: str
    replayed: bool  # a retry of a request_id that had already committed
    affected: tuple[int, ...]  # rows each operation changed


def key_values(row_id: Any, key_columns: Sequence[str], table: str) -> dict[str, Any]:
    values = tuple(row_id) if isinstance(row_id, tuple | list) else (row_id,)
    if len(values) != len(key_columns):
        raise InvalidWriteError(
            f"table {table} has key ({', '.join(key_columns)}); row_id gives {len(values)} value(s)"
        )
    return dict(zip(key_columns, values, strict=True))


def encode_op(op: WriteOp, table: str, key_columns: Sequence[str]) -> pb.WriteOp:
    if op.op not in _KINDS:
        raise InvalidWriteError(f"unknown write op {op.op!r}: use upsert, update or delete")
    if not isinstance(op.data, Mapping):
        raise InvalidWriteError(f"data must be a mapping of column to value, got {type(op.data)}")
    for col in op.data:
        if not isinstance(col, str):
            raise InvalidWriteError(f"column names must be strings, got {col!r}")
    try:
        key = encode_row(key_values(op.row_id, key_columns, table))
        data = encode_row(dict(op.data)) if op.data else b""
    except PayloadError as exc:
        raise InvalidWriteError(f"table {table}: {exc}") from None
    return pb.WriteOp(kind=_KINDS[op.op], table=table, key=key, data=data)


def ack_of(resp: pb.WriteResponse) -> WriteAck:
    return WriteAck(
        event_id=resp.event_id,
        position=resp.position,
        stream_id=resp.stream_id,
        replayed=resp.replayed,
        affected=tuple(resp.affected),
    )
