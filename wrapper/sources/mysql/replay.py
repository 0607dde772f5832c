"""A ChangeSource that replays recorded binlog event packets (tests, debugging).

Feeds the same library packet parsing and the same `binlog.BinlogDecoder`
the live MySQL source uses, from a file written by
tests/fixtures/capture_binlog.py: a JSON header line (server flavor,
checksum flag, each table's catalog view) followed by (u32 big-endian length,
packet) records, each packet one binlog event as the server sent it. So the
decoding of MySQL/MariaDB rows is unit-tested on bytes captured from a real
server without one running. Acknowledgements are recorded, not sent.

`BinlogPacketParser` mirrors the per-packet bookkeeping of
BinLogStreamReader.fetchone (table map, Rotate, FormatDescription) with no
connection: the binlog must carry column names (binlog_row_metadata = FULL).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pymysql.protocol import MysqlPacket
from pymysqlreplication.constants.BINLOG import (
    FORMAT_DESCRIPTION_EVENT,
    ROTATE_EVENT,
    TABLE_MAP_EVENT,
)
from pymysqlreplication.event import FormatDescriptionEvent, RotateEvent
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import TableMapEvent

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import ChangeSource, SourceTransaction
from prism.wrapper.sources.mysql.binlog import BinlogDecoder
from prism.wrapper.sources.mysql.binlogreader import EVENTS
from prism.wrapper.sources.mysql.columns import ColumnKind, TableSpec
from prism.wrapper.sources.mysql.gtid import decode_state
from prism.wrapper.sources.mysql.positions import pack_position
from prism.wrapper.sources.postgres.replay import split_records


class _NoCatalog:
    """Stands where the library expects its control connection: the
    replayed binlog must describe itself (binlog_row_metadata = FULL)."""

    charset = "utf8mb4"

    def __init__(self, dbms: str) -> None:
        self._dbms = dbms

    def _get_dbms(self) -> str:
        return self._dbms

    def cursor(self, *args: Any) -> Any:
        raise SourceError(
            "replaying a binlog needs column names in its TableMap events "
            "(binlog_row_metadata = FULL when it was recorded)"
        )


class BinlogPacketParser:
    """Raw binlog event packets → the library's event objects."""

    def __init__(self, use_checksum: bool, dbms: str) -> None:
        self.use_checksum = use_checksum
        self.table_map: dict[int, Any] = {}
        self.mysql_version: tuple[int, ...] = (0, 0, 0)
        self.post_header_lengths: Any = None
        self._ctl = _NoCatalog(dbms)
        self._allowed = frozenset([*EVENTS, TableMapEvent, RotateEvent, FormatDescriptionEvent])
        self._returned = frozenset(EVENTS)

    def parse(self, data: bytes) -> Any:
        """One packet (starting with the OK byte) → an event the decoder
        takes, or None for bookkeeping events."""
        pkt = BinLogPacketWrapper(
            MysqlPacket(data, "utf8"),
            self.table_map,
            self._ctl,
            self.mysql_version,
            self.use_checksum,
            self._allowed,
            None,
            None,
            None,
            None,
            False,
            False,
            False,
            True,
            False,
            False,
            self.post_header_lengths,
        )
        ev = pkt.event
        if pkt.event_type == ROTATE_EVENT and pkt.timestamp != 0:
            self.table_map.clear()  # as fetchone: table ids are per server run
        if pkt.event_type == FORMAT_DESCRIPTION_EVENT and ev is not None:
            self.mysql_version = ev.mysql_version
            self.post_header_lengths = ev.post_header_len
        if pkt.event_type == TABLE_MAP_EVENT and ev is not None:
            self.table_map[ev.table_id] = ev.get_table()
        if ev is None or type(ev) not in self._returned:
            return None
        if hasattr(ev, "rows"):
            _ = ev.rows
        return ev


def spec_to_json(spec: TableSpec) -> dict[str, Any]:
    return {
        "schema": spec.schema,
        "name": spec.name,
        "key_columns": list(spec.key_columns),
        "json_columns": sorted(spec.json_columns),
        "columns": [
            [c.name, c.type_name, list(c.set_members), c.binary_length] for c in spec.columns
        ],
    }


def spec_from_json(d: dict[str, Any]) -> TableSpec:
    return TableSpec(
        schema=d["schema"],
        name=d["name"],
        key_columns=tuple(d["key_columns"]),
        json_columns=frozenset(d["json_columns"]),
        columns=tuple(ColumnKind(n, t, tuple(m), int(b)) for n, t, m, b in d["columns"]),
    )


def write_recording(path: Path, header: dict[str, Any], packets: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        for p in packets:
            f.write(struct.pack(">I", len(p)) + p)


def read_recording(path: Path) -> tuple[dict[str, Any], list[bytes]]:
    data = path.read_bytes()
    nl = data.index(b"\n")
    header = json.loads(data[:nl])
    packets = split_records(data, str(path), nl + 1)
    return header, packets


class BinlogReplaySource(ChangeSource):
    def __init__(self, header: dict[str, Any], packets: list[bytes]) -> None:
        self.header = header
        self.packets = packets
        self.parser = BinlogPacketParser(bool(header["use_checksum"]), str(header["dbms"]))
        # A recording streamed by GTID names its file in its first event
        # (header "by_gtid"); "gtid_state" is the state at its start.
        by_gtid = bool(header.get("by_gtid", False))
        self.decoder = BinlogDecoder(
            [spec_from_json(t) for t in header["tables"]],
            pack_position(str(header["file"]), int(header["offset"])),
            None if by_gtid else str(header["file"]),
            gtids=decode_state(str(header.get("gtid_state", ""))),
            by_gtid=by_gtid,
        )
        self.acknowledged: list[int] = []

    @classmethod
    def from_file(cls, path: Path) -> BinlogReplaySource:
        return cls(*read_recording(path))

    def events(self) -> Iterator[Any]:
        for p in self.packets:
            ev = self.parser.parse(p)
            if ev is not None:
                yield ev

    def transactions(self, idle_timeout: float = 0.0) -> Iterator[SourceTransaction | None]:
        for ev in self.events():
            stx = self.decoder.feed(ev)
            if stx is not None:
                yield stx

    def acknowledge(self, position: int) -> None:
        self.acknowledged.append(position)

    def close(self) -> None:
        self.packets = []
