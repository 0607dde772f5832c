"""GTID state of a MySQL/MariaDB binlog stream (pure logic, no I/O).

Place in the pipeline: binlog → reader thread → binlog decoder (**tracks
the GTID state** as each transaction commits) → store (the state is written
beside the binlog file/offset, in the same SQLite transaction as the
changes) → on restart, the MySQL source resumes the stream *by GTID*: the
server sends exactly the transactions the state does not hold, whatever its
binlog files are called (another server after a failover, renamed or
rotated files).

The two flavors' GTIDs differ:

- **MariaDB**: a GTID is ``domain-server-sequence`` ("0-1-42"). A *GTID
  position* is the last GTID per replication domain ("0-1-42,1-2-7"): the
  form ``gtid_slave_pos``, ``MASTER_GTID_WAIT`` and the binlog dump's
  ``@slave_connect_state`` take, and ``BINLOG_GTID_POS(file, pos)`` returns.
  Sequence numbers grow within a domain, so "already seen" is "sequence <=
  the domain's".
- **MySQL**: a GTID is ``uuid:number``. The state is the *executed set*, a
  set of numbers per source uuid written as closed intervals
  ("3e11fa47-...:1-42:50-60,..."), the form ``@@gtid_executed`` and the
  binlog dump by GTID (COM_BINLOG_DUMP_GTID) take. A transaction commits by
  adding its number to its uuid's intervals. MySQL 8.4's tagged GTIDs
  (``uuid:tag:number``) are refused: python-mysql-replication reads neither
  their events nor their set encoding.

Stored text carries its flavor ("mariadb:0-1-42", "mysql:uuid:1-42") so a
store is never resumed with the other flavor's meaning; "" means the state is
unknown (none captured yet, or a transaction without a GTID was seen).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prism.wrapper.errors import GtidError

__all__ = [
    "Gtid",
    "GtidState",
    "MariaGtid",
    "MariaPosition",
    "MySQLGtid",
    "MySQLGtidSet",
    "decode_state",
    "encode_state",
    "parse_maria_gtids",
]

_MAX_U32 = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1
_MAX_GNO = (1 << 63) - 1  # MySQL's GNO_END - 1

# -- MariaDB ---------------------------------------------------------------------

_MARIA = re.compile(r"^(\d+)-(\d+)-(\d+)$")


@dataclass(frozen=True, order=True)
class MariaGtid:
    domain: int
    server: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> MariaGtid:
        m = _MARIA.match(text.strip())
        if m is None:
            raise GtidError(f"{text!r} is not a MariaDB GTID (domain-server-sequence, e.g. 0-1-42)")
        g = cls(int(m[1]), int(m[2]), int(m[3]))
        if g.domain > _MAX_U32 or g.server > _MAX_U32 or g.seq > _MAX_U64:
            raise GtidError(f"MariaDB GTID {text!r} is out of range")
        return g

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


def parse_maria_gtids(text: str) -> list[MariaGtid]:
    """A comma-separated list of MariaDB GTIDs, such as @@gtid_binlog_state
    (one per domain and server); brackets (SHOW BINLOG EVENTS prints a
    Gtid_list event as "[0-1-7,1-2-3]") and blanks are ignored."""
    body = text.strip().strip("[]").strip()
    return [MariaGtid.parse(p) for p in body.split(",") if p.strip()] if body else []


class MariaPosition:
    """A MariaDB GTID position: the last GTID of each domain."""

    flavor = "mariadb"

    def __init__(self, gtids: Iterable[MariaGtid] = ()) -> None:
        self._by_domain: dict[int, MariaGtid] = {}
        for g in gtids:
            if g.domain in self._by_domain:
                raise GtidError(
                    f"MariaDB GTID position lists domain {g.domain} twice "
                    f"({self._by_domain[g.domain]} and {g})"
                )
            self._by_domain[g.domain] = g

    @classmethod
    def parse(cls, text: str) -> MariaPosition:
        """ "0-1-42,1-2-7" (as gtid_slave_pos / BINLOG_GTID_POS print it); "" is
        the empty position (nothing executed yet)."""
        return cls(parse_maria_gtids(text))

    def __str__(self) -> str:
        return ",".join(str(self._by_domain[d]) for d in sorted(self._by_domain))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MariaPosition) and self._by_domain == other._by_domain

    def __repr__(self) -> str:
        return f"MariaPosition({str(self)!r})"

    def copy(self) -> MariaPosition:
        return MariaPosition(self._by_domain.values())

    def get(self, domain: int) -> MariaGtid | None:
        return self._by_domain.get(domain)

    def contains(self, g: Gtid) -> bool:
        """Whether the position is at or past `g` in its domain (what a
        server resuming from this position will not send again)."""
        m = _as_maria(g)
        have = self._by_domain.get(m.domain)
        return have is not None and m.seq <= have.seq

    def add(self, g: Gtid) -> None:
        """`g` committed: it is its domain's latest, as a replica's
        gtid_slave_pos records it (even if out of order: only a server
        without gtid_strict_mode writes that, and it resumes from there)."""
        m = _as_maria(g)
        self._by_domain[m.domain] = m

    def purged_problem(self, oldest_binlog_list: MariaPosition) -> str | None:
        """Why a server whose oldest binlog file starts after
        `oldest_binlog_list` (its Gtid_list event) cannot resume this position:
        some domain has transactions after ours that were purged."""
        for d, before in sorted(oldest_binlog_list._by_domain.items()):
            mine = self._by_domain.get(d)
            if mine is None or mine.seq < before.seq:
                have = str(mine) if mine else f"nothing of domain {d}"
                return (
                    f"the server purged binlogs holding transactions of domain {d} that the "
                    f"stream has not seen: its oldest binlog starts after {before}, the stored "
                    f"GTID position has {have}"
                )
        return None

    def missing_problem(self, binlog_state: Iterable[MariaGtid]) -> str | None:
        """Why a server whose binlog holds `binlog_state` (@@gtid_binlog_state:
        the last GTID of each domain and server) cannot resume this position:
        it never logged one of our GTIDs (another server that lags behind, or
        that diverged)."""
        logged: dict[tuple[int, int], int] = {}
        for g in binlog_state:
            key = (g.domain, g.server)
            logged[key] = max(logged.get(key, 0), g.seq)
        for d in sorted(self._by_domain):
            g = self._by_domain[d]
            if logged.get((g.domain, g.server), -1) < g.seq:
                return (
                    f"the server's binlog does not hold GTID {g}, which the stream has already "
                    "seen (the server lags behind, or its history diverged)"
                )
        return None


# -- MySQL -----------------------------------------------------------------------


@dataclass(frozen=True)
class MySQLGtid:
    uuid: str  # lower case, as python-mysql-replication prints it
    gno: int

    def __str__(self) -> str:
        return f"{self.uuid}:{self.gno}"


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_INTERVAL = re.compile(r"^(\d+)(?:-(\d+))?$")
_TAG = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")


def _start(iv: list[int]) -> int:
    return iv[0]


class MySQLGtidSet:
    """A MySQL GTID set: per source uuid, sorted, disjoint, non-adjacent
    closed intervals [first, last] of transaction numbers."""

    flavor = "mysql"

    def __init__(self, intervals: Mapping[str, Iterable[tuple[int, int]]] | None = None) -> None:
        self._sets: dict[str, list[list[int]]] = {}
        for uuid, ivs in (intervals or {}).items():
            for first, last in ivs:
                self.add_interval(uuid, first, last)

    @classmethod
    def parse(cls, text: str) -> MySQLGtidSet:
        """@@gtid_executed text: "uuid:1-5:7,uuid2:3" with any blanks or
        newlines (MySQL prints one uuid per line), uuids in either case; a uuid
        may appear more than once. Tagged GTIDs (MySQL 8.4) are refused."""
        out = cls()
        for part in text.split(","):
            part = "".join(part.split())
            if not part:
                continue
            uuid, *fields = part.split(":")
            uuid = uuid.lower()
            if not _UUID.match(uuid):
                raise GtidError(f"{part!r} is not a MySQL GTID set entry (uuid:1-5:7)")
            if not fields:
                raise GtidError(f"MySQL GTID set entry {part!r} has no transaction numbers")
            for f in fields:
                m = _INTERVAL.match(f)
                if m is None:
                    if _TAG.match(f.lower()):
                        raise GtidError(
                            f"MySQL GTID set entry {part!r} is tagged ({f!r}): tagged GTIDs "
                            "(MySQL 8.4) are not supported; resume by binlog position "
                            '(database.resume = "position")'
                        )
                    raise GtidError(f"{f!r} in MySQL GTID set entry {part!r} is not N or N-M")
                first, last = int(m[1]), int(m[2] or m[1])
                out.add_interval(uuid, first, last, where=part)
        return out

    def __str__(self) -> str:
        return ",".join(
            uuid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in self._sets[uuid])
            for uuid in sorted(self._sets)
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MySQLGtidSet) and self._sets == other._sets

    def __repr__(self) -> str:
        return f"MySQLGtidSet({str(self)!r})"

    def __bool__(self) -> bool:
        return bool(self._sets)

    def copy(self) -> MySQLGtidSet:
        out = MySQLGtidSet()
        out._sets = {u: [list(iv) for iv in ivs] for u, ivs in self._sets.items()}
        return out

    def intervals(self, uuid: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self._sets.get(uuid.lower(), [])]

    def add_interval(self, uuid: str, first: int, last: int, where: str = "") -> None:
        if not 1 <= first <= last <= _MAX_GNO:
            raise GtidError(
                f"MySQL GTID interval {first}-{last}{f' in {where!r}' if where else ''} is "
                f"not 1 <= first <= last <= {_MAX_GNO}"
            )
        for n in (first, last):
            self.add_gno(uuid, n)
        ivs = self._sets[uuid.lower()]
        # Absorb whatever lies between first and last.
        i = bisect.bisect_right(ivs, first, key=_start) - 1
        if ivs[i][1] < last:
            j = bisect.bisect_right(ivs, last, key=_start) - 1
            ivs[i][1] = ivs[j][1]
            del ivs[i + 1 : j + 1]

    def add(self, g: Gtid) -> None:
        """`g` committed: add it to the executed set."""
        m = _as_mysql(g)
        self.add_gno(m.uuid, m.gno)

    def add_gno(self, uuid: str, gno: int) -> bool:
        """Add transaction `gno` of `uuid`, merging intervals; False when the
        set already holds it. The usual case (the next number of the last
        interval) costs one comparison."""
        if not 1 <= gno <= _MAX_GNO:
            raise GtidError(f"MySQL GTID {uuid}:{gno}: the number is not in 1..{_MAX_GNO}")
        ivs = self._sets.get(uuid)
        if ivs is None:
            key = uuid.lower()
            if not _UUID.match(key):
                raise GtidError(f"{uuid!r} is not a MySQL server uuid")
            ivs = self._sets.setdefault(key, [])
        if ivs and ivs[-1][1] == gno - 1:
            ivs[-1][1] = gno
            return True
        i = bisect.bisect_right(ivs, gno, key=_start)  # first interval starting after gno
        if i > 0 and ivs[i - 1][1] >= gno:
            return False
        joins_prev = i > 0 and ivs[i - 1][1] == gno - 1
        joins_next = i < len(ivs) and ivs[i][0] == gno + 1
        if joins_prev and joins_next:
            ivs[i - 1][1] = ivs[i][1]
            del ivs[i]
        elif joins_prev:
            ivs[i - 1][1] = gno
        elif joins_next:
            ivs[i][0] = gno
        else:
            ivs.insert(i, [gno, gno])
        return True

    def has(self, uuid: str, gno: int) -> bool:
        ivs = self._sets.get(uuid) or self._sets.get(uuid.lower()) or []
        i = bisect.bisect_right(ivs, gno, key=_start)
        return i > 0 and ivs[i - 1][1] >= gno

    def contains(self, g: Gtid) -> bool:
        m = _as_mysql(g)
        return self.has(m.uuid, m.gno)

    def issubset(self, other: MySQLGtidSet) -> bool:
        return not self.difference(other)

    def difference(self, other: MySQLGtidSet) -> MySQLGtidSet:
        """The transactions of self that other lacks."""
        out = MySQLGtidSet()
        for uuid, ivs in self._sets.items():
            theirs = other._sets.get(uuid, [])
            for a, b in ivs:
                for lo, hi in _subtract(a, b, theirs):
                    out.add_interval(uuid, lo, hi)
        return out

    def purged_problem(self, gtid_purged: MySQLGtidSet) -> str | None:
        """Why a server with @@gtid_purged cannot resume this set
        (ER_MASTER_HAS_PURGED_REQUIRED_GTIDS): it purged transactions the set
        lacks."""
        missing = gtid_purged.difference(self)
        if missing:
            return (
                f"the server purged binlogs holding transactions the stream has not seen "
                f"({missing}); @@gtid_purged is {gtid_purged}"
            )
        return None

    def missing_problem(self, gtid_executed: MySQLGtidSet) -> str | None:
        """Why a server with @@gtid_executed cannot resume this set: it never
        executed some of our transactions (a lagging or diverged server)."""
        extra = self.difference(gtid_executed)
        if extra:
            return (
                f"the server has not executed transactions the stream has already seen "
                f"({extra}): it lags behind, or its history diverged"
            )
        return None


def _subtract(a: int, b: int, ivs: list[list[int]]) -> list[tuple[int, int]]:
    """[a, b] minus the sorted disjoint intervals `ivs`."""
    out = []
    lo = a
    i = max(0, bisect.bisect_right(ivs, a, key=_start) - 1)
    for c, d in ivs[i:]:
        if c > b:
            break
        if d < lo:
            continue
        if c > lo:
            out.append((lo, c - 1))
        lo = max(lo, d + 1)
        if lo > b:
            break
    if lo <= b:
        out.append((lo, b))
    return out


# -- both ------------------------------------------------------------------------

Gtid = MariaGtid | MySQLGtid
GtidState = MariaPosition | MySQLGtidSet


def _mismatch(g: Gtid, flavor: str) -> GtidError:
    return GtidError(
        f"GTID {g} is not a {flavor} GTID: the server's GTIDs are not of the flavor of the "
        "stored GTID state"
    )


def _as_maria(g: Gtid) -> MariaGtid:
    if not isinstance(g, MariaGtid):
        raise _mismatch(g, "mariadb")
    return g


def _as_mysql(g: Gtid) -> MySQLGtid:
    if not isinstance(g, MySQLGtid):
        raise _mismatch(g, "mysql")
    return g


# -- stored form -----------------------------------------------------------------


def encode_state(state: GtidState | None) -> str:
    """The stored text: flavor-tagged, "" for an unknown state."""
    if state is None:
        return ""
    return f"{state.flavor}:{state}"


def decode_state(text: str) -> GtidState | None:
    """A stored state back; None for "" (unknown). A malformed or foreign
    text raises GtidError naming it."""
    if not text:
        return None
    flavor, sep, body = text.partition(":")
    if sep and flavor == MariaPosition.flavor:
        return MariaPosition.parse(body)
    if sep and flavor == MySQLGtidSet.flavor:
        return MySQLGtidSet.parse(body)
    raise GtidError(f"stored GTID state {text!r} is neither mariadb:... nor mysql:...")
