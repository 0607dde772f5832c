"""A lone write's one statement, run on libpq directly: the last step of
the wrapper's write path before PostgreSQL (wrapper/groupcommit.py's
_run_alone).

psycopg's Cursor.execute spends some 70 µs of Python a call here (hot; 139
µs of the Write handler's CPU in the wrapper, the largest step of its own on
a write's path, benchmark/README.md "Issue 12"): it converts the query,
keeps the books of its prepared statements and of the cursor's results.
This prepares each shape of statement once per connection (keyed by the
query and the types and formats of its parameters, as psycopg's own cache
is: a statement prepared for text parameters must not get binary ones) and
then sends only Bind and Execute, with the parameters dumped by psycopg's
Transformer (so every value adapts exactly as through psycopg): about 45
µs. Waiting lets the interpreter lock go, as psycopg's does.

What it raises is psycopg's: the error PostgreSQL returned, built from its
result (sqlstate, diagnostics), or OperationalError when the connection
failed (then Connection.broken is true). Why not psycopg: see above; why
not a second driver: psycopg's adapters, errors and connection stay the
single source of truth for values and failures.
"""

from __future__ import annotations

import itertools
import re
import select
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result

# psycopg's placeholders as PostgreSQL's numbered ones ("%%" is a percent sign).
_PLACEHOLDER = re.compile(rb"%(%|s)")
_MAX_SHAPES = 64  # prepared statements a connection keeps (a table's writes take few)


def numbered(query: bytes) -> bytes:
    """`query` with psycopg's %s placeholders as $1, $2, ... in order."""
    count = itertools.count(1)

    def one(m: re.Match[bytes]) -> bytes:
        return b"%" if m.group(1) == b"%" else b"$%d" % next(count)

    return _PLACEHOLDER.sub(one, query)


class LoneStatements:
    """Prepared lone statements of one connection (used by one thread at a
    time: the pool lends a connection to one write group)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._tx = Transformer(conn)
        self._names: dict[tuple[bytes, tuple[int, ...], tuple[int, ...]], bytes] = {}
        self._ids = itertools.count(1)

    def run(
        self,
        query: bytes,
        params: Sequence[Any],
        meanwhile: Callable[[], None] | None = None,
    ) -> tuple[Any, ...] | None:
        """The first row of `query` with `params` (psycopg placeholders), as
        text, or None when it returned none; `meanwhile` runs once the
        statement is sent, before its result is awaited. Raises psycopg's
        errors, and ValueError or TypeError for a value that cannot be sent
        (as psycopg would)."""
        tx = self._tx
        dumped = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        types = tuple(tx.types or ())
        formats = tuple(int(f) for f in tx.formats or ())
        key = (query, types, formats)
        pgconn = self._conn.pgconn
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= _MAX_SHAPES:
                self.deallocate_all()
            name = b"prism_lone_%d" % next(self._ids)
            pgconn.send_prepare(name, numbered(query), param_types=types)
            self._results()
            self._names[key] = name
        pgconn.send_query_prepared(name, dumped, param_formats=formats)
        if meanwhile is not None:
            pgconn.flush()  # on its way first: what runs now overlaps the database's work
            meanwhile()
        (res,) = self._results()
        if res.ntuples == 0:
            return None
        return tuple(
            None if (v := res.get_value(0, i)) is None else v.decode() for i in range(res.nfields)
        )

    def deallocate_all(self) -> None:
        """Drop every prepared statement of the connection (they are all
        ours: the pool's connections let psycopg prepare none)."""
        self._conn.pgconn.send_query(b"DEALLOCATE ALL")
        self._results()
        self._names.clear()

    def _results(self) -> list[pq.abc.PGresult]:
        """Flush what was sent and collect its results; the first error
        PostgreSQL returned is raised once all of them are read (the
        connection is then idle again)."""
        pgconn = self._conn.pgconn
        fd = pgconn.socket
        while pgconn.flush():
            readable, _, _ = select.select([fd], [fd], [])
            if readable:  # (libpq: read what came while waiting to send)
                pgconn.consume_input()
        out: list[pq.abc.PGresult] = []
        error: psycopg.Error | None = None
        while True:
            pgconn.consume_input()
            while pgconn.is_busy():
                select.select([fd], [], [])
                pgconn.consume_input()
            res = pgconn.get_result()
            if res is None:
                break
            if res.status == pq.ExecStatus.FATAL_ERROR and error is None:
                error = error_from_result(res, encoding=self._conn.info.encoding)
            out.append(res)
        if error is not None:
            raise error
        return out
