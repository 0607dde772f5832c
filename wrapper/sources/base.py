"""The change model every source produces, and the ChangeSource interface.

A source (PostgreSQL pgoutput, MySQL binlog, or a replay of recorded bytes)
turns the database's log into whole, committed SourceTransactions. The
pipeline vectorizes their rows, commits them to the store together with the
transaction's source position, and only then acknowledges that position back
to the source (see ChangeSource.acknowledge).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prism.wrapper.tables import TableShape


class _UnchangedToast:
    """Marks a column whose value the source did not send because it did not
    change (PostgreSQL's pgoutput 'u' for unchanged TOASTed values). The
    pipeline fills it from the previous image in the store."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Any = _UnchangedToast()


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_name: str  # e.g. "int8", "text", "_float4" (array), "vector"
    type_modifier: int = -1
    is_key: bool = False  # part of the replica identity the source reports


@dataclass(frozen=True)
class RelationInfo:
    """A table's shape as the source described it most recently."""

    relid: int
    schema: str
    name: str
    replica_identity: str  # PostgreSQL relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[ColumnInfo, ...]

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


# RowImage and RowChange are made once per change on the pipeline thread:
# slots and not frozen, whose __init__ costs a quarter (see XLogData).
@dataclass(slots=True)
class RowImage:
    """A new row image the source encoded natively (wrapper/fastrow.py): the
    bytes the Python path would have made of it, without its values."""

    key: str  # TableShape.key_of of the row
    payload: bytes  # the served row image (prism.fabric.payload), hidden column left out
    hidden: bytes | None  # {hidden column: value}, when the table has one
    vector: bytes | None  # the source vector, little-endian float32; None: no vector column


@dataclass(slots=True)
class EncodedRows:
    """Snapshot rows encoded natively, as columns of RowImage."""

    keys: list[str]
    payloads: list[bytes]
    hidden: list[bytes | None] | None  # None: the table has no hidden column
    vectors: bytes | None  # every row's source vector back to back; None: no vector column

    def __len__(self) -> int:
        return len(self.keys)


# What a source's snapshot_rows yields: decoded rows, or rows encoded natively.
SnapshotBatch = list[dict[str, Any]] | EncodedRows


@dataclass(slots=True)
class RowChange:
    table: str  # qualified name, "schema.table"
    op: Literal["insert", "update", "delete"]
    # New image for insert/update; values may be UNCHANGED_TOAST. None for a
    # delete, and for an image the source encoded natively (`image`).
    new: dict[str, Any] | None
    # Old key (only identity columns) or old full row (REPLICA IDENTITY FULL),
    # for update (only when the source sent it) and delete.
    old: dict[str, Any] | None = None
    image: RowImage | None = None


@dataclass(frozen=True)
class TruncateChange:
    tables: tuple[str, ...]
    cascade: bool = False
    restart_identity: bool = False


Change = RowChange | TruncateChange


@dataclass
class SourceTransaction:
    """One committed source transaction, whole. Rolled-back work never
    becomes a SourceTransaction."""

    xid: int
    commit_lsn: int  # source position of the commit record
    end_lsn: int  # position after the transaction: what may be acknowledged
    commit_time_us: int  # unix microseconds
    changes: list[Change] = field(default_factory=list)
    # Relations (re)described within this transaction, by qualified name:
    # how a source reports columns added or dropped mid-stream.
    relations: dict[str, RelationInfo] = field(default_factory=dict)
    # MySQL/MariaDB: the GTID state after this transaction, flavor-tagged
    # (sources/mysql/gtid.py), stored with end_lsn; "" when unknown or not a
    # GTID source.
    gtid_state: str = ""


@dataclass(frozen=True)
class ResumePoint:
    """Where a stream can resume: the packed source position and, for
    MySQL/MariaDB, the GTID state at exactly that position (flavor-tagged,
    "" when unknown). The store keeps the two together, written in one
    transaction, so they always describe the same point."""

    position: int
    gtid_state: str = ""


@dataclass(frozen=True)
class SourceFigures:
    """How far the store is behind the database, in bytes of its log, as a
    probe beside the stream measured it (the metrics endpoint's figures)."""

    lag_bytes: int | None  # the database's log after the stored position (None: unknown)
    retained_bytes: int | None = None  # log the database keeps for us (PostgreSQL's slot)


class SourceProbe(abc.ABC):
    """A connection of its own that answers `figures()` from another thread
    than the stream's."""

    @abc.abstractmethod
    def figures(self, stored_position: int) -> SourceFigures:
        """Raises a SourceError when the database cannot be asked."""

    @abc.abstractmethod
    def close(self) -> None: ...


class ChangeSource(abc.ABC):
    """Yields committed transactions in commit order, from a resume position.

    Contract: `acknowledge(pos)` tells the source that everything up to and
    including pos is durable in the wrapper's store, so the database may
    discard its log up to there (PostgreSQL: the slot's confirmed_flush_lsn).
    A source never acknowledges on its own what the pipeline has not stored.
    """

    @abc.abstractmethod
    def transactions(self, idle_timeout: float) -> Iterator[SourceTransaction | None]:
        """Yield transactions as they commit; yield None after `idle_timeout`
        seconds without one, so the caller can flush and acknowledge."""

    @abc.abstractmethod
    def acknowledge(self, position: int) -> None:
        """Everything up to `position` is durable downstream."""

    @abc.abstractmethod
    def close(self) -> None: ...


class ReplicationSource(ChangeSource):
    """A live database as the pipeline drives it: check, discover, copy the
    tables at a consistent position, then stream from exactly there.

    Positions are integers that grow with the source's log (PostgreSQL: the
    LSN; MySQL: the binlog file's sequence number << 32 | offset). The store
    keeps the position of the last stored transaction; resuming there neither
    skips nor repeats a transaction.
    """

    @abc.abstractmethod
    def check_prerequisites(self) -> list[str]:
        """Problems that stop replication, each naming the setting to change."""

    @abc.abstractmethod
    def discover(self) -> dict[str, TableShape]:
        """Check the configured tables against the catalog; their shapes."""

    def prepare(self) -> None:
        """Create what streaming needs on the server (PostgreSQL: the publication)."""

    @abc.abstractmethod
    def resume_problem(self, point: ResumePoint) -> str | None:
        """Why the stream cannot resume at the stored `point` (slot gone,
        binlog or GTIDs purged...), so the tables must be copied afresh; else
        None."""

    @abc.abstractmethod
    def begin_snapshot(self) -> ResumePoint:
        """Open a consistent snapshot; return the point the stream must
        start from so that it continues exactly where the snapshot ends."""

    @abc.abstractmethod
    def snapshot_count(self, table: str) -> int: ...

    @abc.abstractmethod
    def snapshot_rows(self, table: str, batch: int = 2000) -> Iterator[SnapshotBatch]:
        """The table's rows as of the snapshot, valued as the stream values
        them: decoded, or encoded natively (EncodedRows) where the source can."""

    @abc.abstractmethod
    def end_snapshot(self) -> None: ...

    @abc.abstractmethod
    def start_stream(self, point: ResumePoint) -> None:
        """Stream from exactly after `point`: what the store holds, or what
        `begin_snapshot` returned. Received transactions whose end_lsn is at
        or before point.position are already stored (the pipeline skips
        them), so every position the stream hands out afterwards must be
        greater than point.position."""

    def idle_position(self) -> ResumePoint | None:
        """A point past everything received that may be stored although no
        transaction of ours reached it (other tables' traffic), or None."""
        return None

    def missing_value(self, table: str, column: str) -> Any:
        """The value rows that existed before `ADD COLUMN` hold."""
        return None

    @abc.abstractmethod
    def format_position(self, position: int) -> str:
        """A position as the database's tools print it, for log lines."""
