"""PrismDriver: the app's replacement for its database connection.

The public face only: lifecycle, reads, waits, writes and stats. The work
lives below it: the background subscription that connects, authenticates,
follows key rotation and applies whole batches (driver/subscription.py),
the link and its handshake (driver/link.py), the schema Hello describes
(driver/schema.py) and the local replica (driver/replica.py). PrismDriver
owns the subscription's task: started on `async with`, cancelled and
awaited on exit. A failure of the task is raised to every caller and
waiter, never lost in a log. Reads (`get`, `query`) are answered in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from prism.driver.changes import Change, ChangeStream
from prism.driver.config import DriverConfig
from prism.driver.errors import (
    InvalidWriteError,
    NotReadyError,
    QueryError,
    ReplicaLagError,
    WaitTimeoutError,
)
from prism.driver.filters import Columns, compile_filter, parse_order
from prism.driver.link import Link
from prism.driver.lookup import filtered_search, find_rows
from prism.driver.replica import Replica, TableReplica
from prism.driver.schema import TableInfo
from prism.driver.space import query_in_index_space
from prism.driver.subscription import Subscription
from prism.driver.writes import WriteAck, WriteOp, ack_of, encode_op
from prism.fabric.embedder import row_text
from prism.fabric.errors import PrismError
from prism.fabric.payload import decode_key, encode_key, read_row
from prism.fabric.tablenames import qualify

__all__ = ["Match", "PrismDriver", "TableInfo"]


@dataclass(frozen=True)
class Match:
    row_id: Any  # the primary key value (a tuple for composite keys)
    score: float  # exact cosine of grid vectors in the keyed space, in [-1, 1]
    row: dict[str, Any]
    text_repr: str
    table: str


class PrismDriver:
    def __init__(self, config: DriverConfig) -> None:
        if not isinstance(config, DriverConfig):
            raise TypeError("PrismDriver(config): expected a DriverConfig")
        self.config = config
        self._link = Link(config)  # reads the secret file: a bad one fails here
        self._sub = Subscription(config, self._link)
        self._task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[None]] = set()  # on_change tasks
        self._column_cache: dict[str, tuple[tuple[tuple[str, str], ...], Columns]] = {}

    # -- lifecycle --------------------------------------------------------
    async def __aenter__(self) -> PrismDriver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._sub.run(), name="prism-subscribe")
        self._task.add_done_callback(self._sub.on_task_done)

    async def close(self) -> None:
        """Stop the subscription; with DriverConfig.snapshot_dir, write the
        replica's snapshot first (prism.driver.warmstart)."""
        self._sub.close()
        await self._link.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PrismError):
                await self._task
            self._task = None
            await self._sub.finish()
        for cb in list(self._callbacks):
            cb.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await cb

    def _raise_if_failed(self) -> None:
        self._sub.raise_if_failed()
        if self._task is None:
            raise NotReadyError("the driver is not started: use `async with PrismDriver(...)`")

    # -- waiting ----------------------------------------------------------
    @property
    def position(self) -> int:
        """The wrapper position the replica shows (0: nothing yet)."""
        return self._sub.follower.position

    @property
    def stream_id(self) -> str:
        return self._sub.follower.stream_id

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the initial sync is applied; raise the subscription's
        failure (e.g. AuthenticationError) instead if it fails first."""
        self._raise_if_failed()
        await self._sub.wait_ready(timeout)

    async def wait_for(self, position: int, timeout: float | None = None) -> None:
        """Return once the replica shows wrapper position `position`."""
        self._raise_if_failed()
        await self._sub.wait_for(position, timeout)

    # -- reads ------------------------------------------------------------
    @property
    def _replica(self) -> Replica:
        """The replica readers see."""
        return self._sub.replica

    def _table(self, table: str) -> TableReplica:
        t = self._replica.tables.get(qualify(table))
        if t is None:
            self._raise_if_failed()
            known = ", ".join(sorted(self._replica.tables)) or "none yet"
            raise QueryError(f"unknown table {table!r} (replicated: {known})")
        return t

    def get(self, table: str, key: Any) -> dict[str, Any] | None:
        """The row with primary key `key` (a tuple for composite keys), or None.
        Each call decodes the row afresh: the dict is the caller's own."""
        t = self._replica.tables.get(table) or self._table(table)
        if type(key) is int and len(t.key_columns) == 1:
            # The common case without the general encoder: encode_key([n])
            # is "[n]" for any int (tests/unit/test_payload.py checks it).
            p = t.payloads.get(f"[{key}]")
            return None if p is None else read_row(p)
        values = key if isinstance(key, tuple | list) else (key,)
        if len(values) != len(t.key_columns):
            raise QueryError(
                f"table {t.name} has key ({', '.join(t.key_columns)}); got {len(values)} value(s)"
            )
        return t.row(encode_key(list(values)))

    def get_many(self, table: str, keys: Iterable[Any]) -> list[dict[str, Any] | None]:
        """The rows of `keys`, in their order (None where there is none):
        `get` for each, from one state of the replica."""
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise QueryError(f"get_many takes a list of keys, got {keys!r}")
        return [self.get(table, k) for k in keys]

    def _columns(self, t: TableReplica) -> Columns:
        """The table's columns as filters see them, made once per shape."""
        info = self._sub.schema.tables.get(t.name)
        cols = info.columns if info is not None else ()
        got = self._column_cache.get(t.name)
        if got is None or got[0] != cols:
            got = self._column_cache[t.name] = (cols, Columns(t.name, cols))
        return got[1]

    def find(
        self,
        table: str,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: Sequence[str] | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The rows of `table` that `where` matches (prism.driver.filters),
        as dicts, ordered by `order_by` ("-price" descends; NULLs last when
        ascending, first when descending, as in PostgreSQL), ties by primary
        key, at most `limit`. An equality on a column declared in
        DriverConfig.indexes is a dict look-up; anything else scans the
        table. QueryError names a bad column, operator or value."""
        t = self._table(table)
        cols = self._columns(t)
        flt = compile_filter(where, cols)
        order = parse_order(order_by, cols)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise QueryError(f"limit must be a non-negative integer or None, got {limit!r}")
        return find_rows(t, flt, cols, order, limit)

    async def query(
        self,
        embedding: Sequence[float] | np.ndarray | None = None,
        *,
        text: str | None = None,
        top_k: int = 10,
        threshold: float = 0.0,
        table: str | None = None,
        exact: bool = False,
        where: Mapping[str, Any] | None = None,
    ) -> list[Match]:
        """Rows most similar to `embedding` (or to `text`, embedded with the
        built-in text embedder), best first. A row is returned when its
        score is >= threshold, exactly: the score is the cosine of the
        query's and the row's grid vectors in the tenant's keyed space (see
        prism.driver.index), where the query is sealed into the index's key
        epoch as the rows are (prism.driver.space). A large table is
        searched through its partitions, which may miss a row; `exact=True`
        scans every row.
        `where` (a filter, as for `find`) limits the result to the top_k of
        the rows it matches (prism.driver.lookup); it needs `table` unless
        only one table has vectors."""
        self._raise_if_failed()
        emb = _query_embedding(embedding, text, top_k, threshold)
        schema = self._sub.schema
        infos = [schema.tables[self._table(table).name]] if table else list(schema.tables.values())
        searchable = [i for i in infos if i.has_vectors]
        flt = None
        if where is not None:
            if len(searchable) != 1:
                raise QueryError(
                    "query(where=...): say which table with table=... "
                    f"(tables with vectors: {sorted(i.name for i in searchable)})"
                )
            flt = compile_filter(where, self._columns(self._table(searchable[0].name)))
        results: list[tuple[float, str, str]] = []
        tried = False
        for info in searchable:
            q = schema.query_vector(info, emb, text)
            if q is None:
                continue
            tried = True
            t = self._replica.tables.get(info.name)
            if t is None or t.index is None or t.index.dim != q.shape[0]:
                continue  # the table changed shape: its new replica is being built
            q = query_in_index_space(t.index, q)
            hits = (
                t.index.query(q, top_k, float(threshold), exact=bool(exact))
                if flt is None
                else filtered_search(t, flt, q, top_k, float(threshold), bool(exact))
            )
            for key, score in hits:
                results.append((score, info.name, key))
        if not tried:
            dims = sorted({i.source_dim for i in searchable if not i.text_embedded})
            what = (
                "text queries need a table with text_columns"
                if text is not None
                else f"embedding has dimension {emb.shape[0] if emb is not None else 0}; "
                f"tables take {dims or 'no embeddings'}"
            )
            raise QueryError(f"no table can answer this query: {what}")
        results.sort(key=lambda r: (-r[0], r[1], r[2]))
        out = []
        for score, tname, key in results[:top_k]:
            t = self._replica.tables[tname]
            row = read_row(t.payloads[key])
            kv = decode_key(key)
            out.append(
                Match(
                    row_id=kv[0] if len(kv) == 1 else tuple(kv),
                    score=score,
                    row=row,
                    text_repr=row_text(row, t.text_columns),
                    table=tname,
                )
            )
        return out

    # -- the change feed ----------------------------------------------------
    def changes(
        self, tables: Iterable[str] | None = None, from_position: int | None = None
    ) -> ChangeStream:
        """The committed changes the replica applies, as an async iterator of
        Change (prism.driver.changes): `async for change in
        driver.changes()`. `tables` limits them to those tables; with
        `from_position`, first every retained change after that position
        (ChangePositionExpiredError when they are no longer all retained).
        A consumer that falls DriverConfig.change_buffer changes behind gets
        ChangeFeedOverflowError; the replica never waits for it."""
        if self._task is None:
            self._raise_if_failed()
        names = None
        if tables is not None:
            if isinstance(tables, str):
                tables = [tables]
            names = {qualify(t) for t in tables}
            known = self._sub.schema.tables
            unknown = sorted(n for n in names if known and n not in known)
            if unknown:
                raise QueryError(
                    f"changes: unknown table(s) {unknown} (replicated: {sorted(known)})"
                )
        if from_position is not None and (
            isinstance(from_position, bool)
            or not isinstance(from_position, int)
            or from_position < 0
        ):
            raise QueryError(
                f"from_position must be a position (an int >= 0), got {from_position!r}"
            )
        return self._sub.changes.subscribe(names, from_position)

    def on_change(
        self, table: str, callback: Callable[[Change], Awaitable[None] | None]
    ) -> asyncio.Task[None]:
        """Call `callback(change)` (a function or a coroutine function) for
        each change of `table`, in order, from now on. Returns the task doing
        it: cancel it to stop; it ends with the driver, and with the
        callback's exception or the feed's (ChangeFeedOverflowError when the
        callback falls behind) if one is raised: await it to see."""
        stream = self.changes([table])

        async def follow() -> None:
            async with stream:
                async for change in stream:
                    result = callback(change)
                    if inspect.isawaitable(result):
                        await result

        task = asyncio.get_running_loop().create_task(follow(), name=f"prism-on-change-{table}")
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)
        return task

    # -- writes -------------------------------------------------------------
    def _write_table(self, table: str | None) -> TableInfo:
        tables = self._sub.schema.tables
        if table is None:
            writable = [t for t in tables.values() if t.writable]
            if len(writable) != 1:
                self._raise_if_failed()
                raise InvalidWriteError(
                    "table= is required: "
                    + (
                        f"writable tables are {[t.name for t in writable]}"
                        if writable
                        else "no writable table is known yet (await wait_ready() first)"
                    )
                )
            return writable[0]
        info = tables.get(qualify(table))
        if info is None:
            self._raise_if_failed()
            raise InvalidWriteError(f"unknown table {table!r} (replicated: {sorted(tables)})")
        return info

    async def write_many(
        self,
        ops: Sequence[WriteOp],
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Run the operations in one database transaction: all or nothing.
        With wait=True (the default) return only once the local replica shows
        the write; with wait=False, once the database committed it. A
        `request_id` makes a retried call apply once."""
        self._raise_if_failed()
        encoded = []
        for op in ops:
            if not isinstance(op, WriteOp):
                raise InvalidWriteError(f"write_many takes WriteOp items, got {type(op).__name__}")
            info = self._write_table(op.table)
            encoded.append(encode_op(op, info.name, info.key_columns))
        if not encoded:
            raise InvalidWriteError("write_many needs at least one operation")
        if request_id is not None and (not isinstance(request_id, str) or not request_id):
            raise InvalidWriteError("request_id must be a non-empty string")
        # Every write carries an id, so one whose outcome is unknown (the link
        # failed mid-call) can be retried safely: see WriteOutcomeUnknownError.
        request_id = request_id or f"auto-{uuid.uuid4()}"
        ack = ack_of(await self._link.write(encoded, request_id))
        if wait:
            try:
                await self._sub.wait_stream(ack.stream_id, ack.position, timeout)
            except WaitTimeoutError:
                raise ReplicaLagError(
                    f"the write committed (event {ack.event_id}, position {ack.position}) but "
                    f"the local replica is at {self.position} after {timeout}s; it will catch up",
                    ack=ack,
                ) from None
            except PrismError as exc:  # the subscription failed: the commit still happened
                raise ReplicaLagError(
                    f"the write committed (event {ack.event_id}, position {ack.position}) but "
                    f"the local replica cannot show it: {exc}",
                    ack=ack,
                ) from exc
        return ack

    async def _write_one(
        self,
        op: Literal["upsert", "update", "delete"],
        row_id: Any,
        data: Mapping[str, Any],
        table: str | None,
        wait: bool,
        timeout: float | None,
        request_id: str | None,
    ) -> WriteAck:
        """write, update and delete: one operation, as a write_many of one."""
        return await self.write_many(
            [WriteOp(op, row_id, data, table)], wait=wait, timeout=timeout, request_id=request_id
        )

    async def write(
        self,
        row_id: Any,
        data: Mapping[str, Any],
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Upsert: insert the row, or replace the given columns of it."""
        return await self._write_one("upsert", row_id, data, table, wait, timeout, request_id)

    async def update(
        self,
        row_id: Any,
        data: Mapping[str, Any],
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Change the given columns of an existing row (RowNotFoundError if none)."""
        return await self._write_one("update", row_id, data, table, wait, timeout, request_id)

    async def delete(
        self,
        row_id: Any,
        table: str | None = None,
        *,
        wait: bool = True,
        timeout: float | None = 30.0,
        request_id: str | None = None,
    ) -> WriteAck:
        """Delete the row (ack.affected == (0,) when there was none)."""
        return await self._write_one("delete", row_id, {}, table, wait, timeout, request_id)

    # -- introspection ----------------------------------------------------
    def tables(self) -> dict[str, TableInfo]:
        return dict(self._sub.schema.tables)

    def stats(self) -> dict[str, Any]:
        return self._sub.stats()


def _query_embedding(
    embedding: Sequence[float] | np.ndarray | None, text: str | None, top_k: int, threshold: float
) -> np.ndarray | None:
    """Check query()'s arguments; the embedding as float64, or None for a
    text query."""
    if (embedding is None) == (text is None):
        raise QueryError("query: give exactly one of embedding=... or text=...")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
        raise QueryError(f"top_k must be a positive integer, got {top_k!r}")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not -1.0 <= threshold <= 1.0
    ):
        raise QueryError(f"threshold must be a number in [-1, 1], got {threshold!r}")
    if embedding is None:
        if not isinstance(text, str):
            raise QueryError("text must be a string")
        return None
    try:
        emb = np.asarray(embedding, dtype=np.float64)
    except (TypeError, ValueError):
        raise QueryError("embedding must be a sequence of numbers") from None
    if emb.ndim != 1 or emb.size == 0:
        raise QueryError(f"embedding must be one-dimensional, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise QueryError("embedding contains NaN or infinite values")
    if not np.any(emb):
        raise QueryError("embedding is all zeros: it has no direction")
    return emb
