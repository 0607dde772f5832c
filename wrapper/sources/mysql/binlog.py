"""Decoder for MySQL/MariaDB row-based binlog events (pure logic, no I/O).

Place in the pipeline: MySQL binlog → python-mysql-replication (packets
parsed into event objects, in the reader thread of `source.py`) → **binlog
decoder** (row changes grouped into whole committed transactions, values
normalized) → pipeline (vectorize, project) → store.

Feed each event to `BinlogDecoder.feed`; it returns a SourceTransaction when
the event closes one (an XID event, a COMMIT query, or a DDL statement, which
is a transaction of its own). Rolled-back work never reaches the binlog for
transactional tables (InnoDB); a ROLLBACK query, written only for
transactions that also touched a non-transactional table, discards what was
gathered.

Positions (positions.py) are packed into one growing integer; only
positions *after* a whole transaction are ever handed out: resuming at a row
event's position would lose rows until the next TableMap event, which names
the table the rows belong to.

GTIDs. The decoder tracks the GTID state (sources/mysql/gtid.py) as transactions
commit, and hands it out with each transaction and idle position, to be
stored beside the position. Resumed by GTID, the server sends exactly what
the state lacks; a transaction whose GTID the state already holds is never
handed out again. A transaction without a GTID (MySQL with gtid_mode other
than ON, or MySQL 8.4's tagged GTIDs, which the library does not read)
makes the state unknown: resuming by GTID is then impossible until the next
copy.

Values are normalized by the column kinds of columns.py, the same way the
initial copy normalizes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymysqlreplication.event import (
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    RowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import (
    ColumnInfo,
    RelationInfo,
    RowChange,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.sources.mysql.columns import ColumnKind, TableSpec, stream_type_name
from prism.wrapper.sources.mysql.gtid import Gtid, GtidState, MariaGtid, MySQLGtid, encode_state
from prism.wrapper.sources.mysql.positions import pack_position, position_epoch

__all__ = ["BinlogDecoder", "ddl_targets", "event_gtid"]

# -- DDL -------------------------------------------------------------------------

_COMMENT = re.compile(r"/\*.*?\*/|(?:--|#)[^\n]*", re.S)
_NAME = r"(?:`(?:[^`]|``)+`|[A-Za-z0-9_$]+)"
_QNAME = rf"({_NAME}(?:\s*\.\s*{_NAME})?)"
_TABLES = r"TABLES?\s+"
_DDL = [
    ("truncate", re.compile(rf"^\s*TRUNCATE\s+(?:TABLE\s+)?{_QNAME}", re.I)),
    ("alter", re.compile(rf"^\s*ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+{_QNAME}", re.I)),
    ("rename", re.compile(rf"^\s*RENAME\s+{_TABLES}(.+)$", re.I | re.S)),
    (
        "drop",
        re.compile(rf"^\s*DROP\s+(?:TEMPORARY\s+)?{_TABLES}(?:IF\s+EXISTS\s+)?(.+)$", re.I | re.S),
    ),
    (
        "create",
        re.compile(
            rf"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QNAME}", re.I
        ),
    ),
]
_NAMES = re.compile(_QNAME)


def _unquote(part: str) -> str:
    part = part.strip()
    if part.startswith("`") and part.endswith("`"):
        return part[1:-1].replace("``", "`")
    return part


def _qualify(name: str, default_schema: str) -> str:
    parts = [_unquote(p) for p in re.split(r"\s*\.\s*(?=(?:[^`]*`[^`]*`)*[^`]*$)", name)]
    if len(parts) == 1:
        return f"{default_schema}.{parts[0]}"
    return f"{parts[0]}.{parts[1]}"


def ddl_targets(query: str, default_schema: str) -> tuple[str, list[str]] | None:
    """(kind, qualified tables) a DDL statement touches, for the statements
    that change what the replica holds: TRUNCATE, ALTER, RENAME, DROP and
    CREATE TABLE. None for anything else."""
    text = _COMMENT.sub(" ", query).strip()
    for kind, rx in _DDL:
        m = rx.match(text)
        if m is None:
            continue
        if kind in ("rename", "drop"):
            body = m[1].split(";")[0]
            body = re.sub(r"\b(RESTRICT|CASCADE|WAIT\s+\d+|NOWAIT)\b", " ", body, flags=re.I)
            names = [_qualify(n, default_schema) for n in _NAMES.findall(body) if n.upper() != "TO"]
            return kind, names
        return kind, [_qualify(m[1], default_schema)]
    return None


# -- transactions ----------------------------------------------------------------


def event_gtid(ev: Any) -> Gtid:
    """The GTID a GTID event announces."""
    if isinstance(ev, MariadbGtidEvent):
        return MariaGtid(int(ev.domain_id), int(ev.server_id), int(ev.gtid_seq_no))
    return MySQLGtid(_uuid(ev.sid), int(ev.gno))


def _uuid(sid: bytes) -> str:
    h = sid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class _Open:
    gtid: Gtid | None = None
    changes: list[Any] = field(default_factory=list)
    relations: dict[str, RelationInfo] = field(default_factory=dict)
    refresh: set[str] = field(default_factory=set)


class BinlogDecoder:
    """Turns binlog events into whole committed SourceTransactions.

    State: the current binlog file (from Rotate events), the transaction
    being gathered, the GTID state, and each replicated table's latest
    column list, so that a TableMap event with other columns (an ALTER TABLE
    before it) is reported in the transaction's `relations`. DDL on a
    replicated table is reported in `refresh` (see `take_refresh`) so the
    source can re-read the catalog: the binlog alone does not say which
    column of a MariaDB table holds JSON.

    `start` is the packed position the stream continues after; `file` its
    binlog file, or None when the server names it in its first (Rotate)
    event, as it does when streaming by GTID. `gtids` is the GTID state at
    `start` (None: unknown). `by_gtid`: the server was asked to stream from
    `gtids`, not from the file and offset.

    `boundary` is the position after the last whole transaction of any
    table: what may be stored as the resume position, together with
    `gtid_state()`.
    """

    def __init__(
        self,
        tables: Iterable[TableSpec],
        start: int,
        file: str | None = None,
        *,
        gtids: GtidState | None = None,
        by_gtid: bool = False,
    ) -> None:
        self.tables: dict[str, TableSpec] = {t.qualified: t for t in tables}
        self._relations = {q: t.relation() for q, t in self.tables.items()}
        self._schemas = {t.schema for t in self.tables.values()}
        self.file = file
        self.boundary = start
        self._start = start
        self._epoch = position_epoch(start)
        self._txn: _Open | None = None
        self._refresh: set[str] = set()
        self.gtids = gtids.copy() if gtids is not None else None
        self.by_gtid = by_gtid
        self._placed = not by_gtid  # by GTID: where the server's numbering stands is unknown
        self._last_gtid: Gtid | None = None
        self.known_skipped = 0  # transactions the GTID state already held
        self.lost_gtid_tracking = False  # a transaction without a GTID made the state unknown

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    @property
    def last_gtid(self) -> str:
        """The GTID of the last transaction committed, "" before any."""
        return "" if self._last_gtid is None else str(self._last_gtid)

    def gtid_state(self) -> str:
        """The GTID state at `boundary`, as stored ("" when unknown)."""
        return encode_state(self.gtids)

    def take_refresh(self) -> set[str]:
        """Tables whose catalog must be read again (after DDL on them)."""
        out, self._refresh = self._refresh, set()
        return out

    def set_table(self, spec: TableSpec) -> RelationInfo:
        """The catalog's current view of a table (after `take_refresh`);
        returns its relation, which later TableMaps are compared with."""
        self.tables[spec.qualified] = spec
        rel = self._relations[spec.qualified] = spec.relation()
        return rel

    def _pos(self, offset: int) -> int:
        if self.file is None:
            raise SourceError(
                "binlog: an event arrived before the server named its binlog file (Rotate)"
            )
        return pack_position(self.file, offset, self._epoch)

    def _place(self, log_pos: int) -> None:
        """Streaming by GTID, at the first event of the server's: if the
        server numbers its binlog at or below the stored position (another
        server, renamed files), begin a new epoch, so that every position
        handed out from here is greater than the stored one."""
        self._placed = True
        if self._pos(log_pos) <= self._start:
            self._epoch += 1

    def feed(self, ev: Any) -> SourceTransaction | None:
        """Feed one event; return the transaction it completes, if any."""
        if not self._placed and not isinstance(ev, RotateEvent):
            self._place(ev.packet.log_pos)
        if isinstance(ev, RowsEvent):
            self._rows(ev)
            return None
        if isinstance(ev, XidEvent):
            return self._close(ev)
        if isinstance(ev, MariadbGtidEvent | GtidEvent):
            if self._txn is not None:
                if self._txn.changes or self._txn.relations:
                    raise SourceError(
                        f"binlog: GTID {ev.gtid} begins while a transaction is still open at "
                        f"{self.file}:{ev.packet.log_pos}"
                    )
                # A group that ended with an event this decoder does not
                # read (XA PREPARE): its GTID is executed all the same.
                if not self._held(self._txn.gtid):
                    self._record_gtid(self._txn.gtid)
            self._txn = _Open(gtid=event_gtid(ev))
            return None
        if isinstance(ev, QueryEvent):
            return self._query(ev)
        if isinstance(ev, RotateEvent):
            self.file = ev.next_binlog
            if self._txn is None:
                self.boundary = max(self.boundary, self._pos(ev.position))
        return None

    def _open(self) -> _Open:
        if self._txn is None:
            self._txn = _Open()
        return self._txn

    def _held(self, gtid: Gtid | None) -> bool:
        """Streaming by GTID, whether the state already holds `gtid`. (By
        position the file and offset alone decide what is new.)"""
        return (
            self.by_gtid
            and gtid is not None
            and self.gtids is not None
            and self.gtids.contains(gtid)
        )

    def _record_gtid(self, gtid: Gtid | None) -> None:
        """A transaction committed: add its GTID to the state. Without one
        the state can no longer say what was executed: unknown from here."""
        if gtid is None:
            if self.gtids is not None:
                self.gtids = None
                self.lost_gtid_tracking = True
            return
        self._last_gtid = gtid
        if self.gtids is not None:
            self.gtids.add(gtid)

    def _close(self, ev: Any) -> SourceTransaction | None:
        txn = self._open()
        self._txn = None
        end = self._pos(ev.packet.log_pos)
        if end <= self.boundary:
            # Replayed across a reconnect; never hand out a position twice.
            return None
        self.boundary = end
        if self._held(txn.gtid):
            # Streaming by GTID, the server sent a transaction the state
            # already holds: stored before; never hand it out twice.
            self.known_skipped += 1
            return None
        self._record_gtid(txn.gtid)
        self._refresh |= txn.refresh
        if not txn.changes and not txn.relations and not txn.refresh:
            return None
        return SourceTransaction(
            xid=getattr(ev, "xid", 0),
            commit_lsn=end,
            end_lsn=end,
            commit_time_us=int(ev.timestamp) * 1_000_000,
            changes=txn.changes,
            relations=txn.relations,
            gtid_state=encode_state(self.gtids),
        )

    def _query(self, ev: Any) -> SourceTransaction | None:
        query = ev.query.strip()
        head = query[:32].upper()
        if head == "BEGIN" or head.startswith("XA START"):
            self._open()
            return None
        if head == "COMMIT":
            return self._close(ev)
        if head == "ROLLBACK":
            # Non-transactional tables only: none of ours. The group keeps
            # its GTID: it is in the binlog, so it counts as executed.
            self._txn = _Open(gtid=self._txn.gtid if self._txn else None)
            return self._close(ev)
        if head.startswith(("SAVEPOINT", "ROLLBACK TO", "RELEASE SAVEPOINT")):
            return None
        schema = ev.schema.decode() if isinstance(ev.schema, bytes) else str(ev.schema)
        txn = self._open()
        found = ddl_targets(query, schema)
        if found is not None:
            kind, names = found
            ours = [n for n in names if n in self.tables]
            if ours and kind in ("truncate", "drop"):
                # A dropped table's rows are gone; a re-created one starts empty.
                txn.changes.append(TruncateChange(tuple(ours)))
            if ours and kind != "truncate":
                txn.refresh.update(ours)
        return self._close(ev)  # DDL commits implicitly: a transaction of its own

    def _rows(self, ev: Any) -> None:
        if ev.schema not in self._schemas:
            return
        qualified = f"{ev.schema}.{ev.table}"
        spec = self.tables.get(qualified)
        if spec is None:
            return
        txn = self._open()
        relation = self._relation(spec, ev.columns)
        if relation is not None:
            txn.relations[qualified] = relation
        kinds = [spec.kind(c.name) or ColumnKind(c.name, stream_type_name(c)) for c in ev.columns]
        try:
            rows = ev.rows
        except Exception as exc:
            raise SourceError(f"binlog: cannot decode rows of {qualified}: {exc!r}") from exc
        if isinstance(ev, WriteRowsEvent):
            for r in rows:
                txn.changes.append(
                    RowChange(qualified, "insert", _row(kinds, r["values"], r["none_sources"]))
                )
        elif isinstance(ev, UpdateRowsEvent):
            for r in rows:
                old = _row(kinds, r["before_values"], r["before_none_sources"])
                new = _row(kinds, r["after_values"], r["after_none_sources"])
                txn.changes.append(RowChange(qualified, "update", new, old))
        elif isinstance(ev, DeleteRowsEvent):
            for r in rows:
                old = _row(kinds, r["values"], r["none_sources"])
                txn.changes.append(RowChange(qualified, "delete", None, old))

    def _relation(self, spec: TableSpec, columns: list[Any]) -> RelationInfo | None:
        """A new RelationInfo when the TableMap's columns differ from the
        table's known ones, else None."""
        known = self._relations[spec.qualified]
        names = [c.name for c in columns]
        if any(n is None for n in names):
            raise SourceError(
                f"binlog: the TableMap of {spec.qualified} carries no column names: "
                "set binlog_row_metadata = FULL on the server"
            )
        typed = [(c.name, stream_type_name(c, c.name in spec.json_columns)) for c in columns]
        if [(c.name, c.type_name) for c in known.columns] == typed:
            return None
        rel = RelationInfo(
            relid=0,
            schema=spec.schema,
            name=spec.name,
            replica_identity="d",
            columns=tuple(
                ColumnInfo(n, c.type, t, is_key=n in spec.key_columns)
                for (n, t), c in zip(typed, columns, strict=True)
            ),
        )
        self._relations[spec.qualified] = rel
        # Values of columns the catalog did not know yet are normalized by
        # the stream's view until the source refreshes the table.
        known_kinds = {c.name: c for c in spec.columns}
        spec.columns = tuple(
            known_kinds.get(n) or _kind_from_stream(n, t, c)
            for (n, t), c in zip(typed, columns, strict=True)
        )
        return rel


def _kind_from_stream(name: str, type_name: str, col: Any) -> ColumnKind:
    return ColumnKind(
        name,
        type_name,
        set_members=tuple(col.set_values or ()) if type_name == "set" else (),
        binary_length=int(getattr(col, "max_length", 0) or 0) if type_name == "binary" else 0,
    )


def _row(
    kinds: list[ColumnKind], values: Mapping[str, Any], none_sources: Mapping[str, str]
) -> dict[str, Any]:
    return {k.name: k.from_stream(values[k.name], none_sources.get(k.name)) for k in kinds}
