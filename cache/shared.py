"""PrismCache's shared tier: a tenant's entries as rows of a table that
prism-wrapper replicates to every app node.

Where it sits: PrismCache (core.py) looks up its local tier first (the
node's own answers, in memory), then this tier, which reads only the node's
local replica through the driver's public API: `driver.get` for the exact
key, `driver.query` on the table's vector column for a paraphrase. No
network hop on a hit. A miss writes its entry with `driver.write` (the
wrapper runs the upsert with its own credentials); the row reaches every
node's replica through the stream, sealed, in whole transactions. There is
no second protocol: the database is the shared tier's engine (its backups,
replicas and failover), the wrapper its replication.

The rules, all in this module:

* **Key.** A row's key is a digest of the tenant and the exact key (which
  is itself the scope and the normalized question), so every node derives
  the same key for the same question, and two nodes that miss it write one
  row.
* **Concurrent misses.** A write's `request_id` is the key plus the
  60-second window in which the miss started. Two nodes that miss the same
  question within a window write once: the first commit wins, the second
  write is a replay (`ack.replayed`) and its answer is not stored (its
  caller still gets it). A node whose LLM call ends after another node's
  row became visible does not write at all. Across windows the later
  upsert wins; the row is one either way. A replay that finds no row (the
  first write was invalidated since) is written again under a fresh id.
* **Truth.** In a shared cache an entry is served only while its row is in
  the replica (or its own write is still in flight): a node's local copy of
  its own answer is checked against the replica's row (`version`) at every
  hit, so an invalidation, a `clear()` or another node's newer answer stops
  every node from serving the old one as soon as the delete reaches it.
* **Expiry.** `expires_at` is absolute (unix seconds); expired rows are
  never served. Each node deletes the expired rows it wrote, at most every
  `sweep_s`; rows of a node that went away are deleted by any node once
  they are `sweep_s` past their expiry.
* **Isolation.** One table per tenant (`prism_cache_<tenant>`), owned by
  that tenant in the wrapper's config: the wrapper sends a table only to
  its tenant's drivers, so a node of tenant A never receives B's rows (the
  fabric's isolation, not a filter here).

`deploy/cache-table.sql` creates the table; `TableSpec.ddl()` prints it.
Tag invalidation, `clear()` and the expiry sweep need every row: the
driver's public API has no row iteration, so they read them with an exact
`query` over all vectors (threshold -1), which is O(rows) and rare.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from prism.cache.errors import CacheConfigError

if TYPE_CHECKING:
    from prism.driver import PrismDriver

log = logging.getLogger("prism.cache.shared")

T = TypeVar("T")

DEDUP_WINDOW_S = 60.0
SWEEP_S = 60.0
SEARCH_TOP_K = 8  # candidates of a shared semantic lookup (filtered by scope and expiry)
DELETE_BATCH = 500  # rows per delete transaction of invalidate(tag=)/clear()/sweep

# The table's columns, in DDL order (deploy/cache-table.sql).
COLUMNS = (
    ("key", "text PRIMARY KEY"),
    ("scope", "text NOT NULL"),
    ("query", "text NOT NULL"),
    ("response", "text NOT NULL"),
    ("embedding", "vector({dim}) NOT NULL"),
    ("tags", "text[] NOT NULL DEFAULT '{{}}'"),
    ("created_at", "double precision NOT NULL"),
    ("expires_at", "double precision"),
    ("prompt_tokens", "integer NOT NULL"),
    ("completion_tokens", "integer NOT NULL"),
    ("tokens_estimated", "boolean NOT NULL"),
    ("node_id", "text NOT NULL"),
    ("version", "text NOT NULL"),
)
WRITABLE = tuple(name for name, _ in COLUMNS if name != "key")


def table_name(tenant_id: str) -> str:
    """The tenant's shared table, `public.prism_cache_<tenant>`: the tenant
    id lowercased with other characters as `_`; a digest is appended when
    that changed it (two tenants must never share a table)."""
    slug = re.sub(r"[^a-z0-9_]", "_", tenant_id.lower())
    if slug != tenant_id or len(slug) > 40:
        digest = hashlib.blake2b(tenant_id.encode(), digest_size=4).hexdigest()
        slug = f"{slug[:40]}_{digest}"
    return f"public.prism_cache_{slug}"


def row_key(tenant_id: str, exact_key: str) -> str:
    """The row of a question: the same on every node of the tenant."""
    h = hashlib.blake2b(digest_size=16, person=b"prism-shared")
    h.update(tenant_id.encode())
    h.update(b"\x00")
    h.update(exact_key.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TableSpec:
    """The shared table of a tenant: its DDL and its wrapper config."""

    tenant_id: str
    dim: int = 384
    table: str | None = None
    role: str | None = None  # the wrapper's database role, granted what it needs

    @property
    def name(self) -> str:
        return self.table or table_name(self.tenant_id)

    def ddl(self) -> str:
        schema, _, table = self.name.partition(".")
        cols = ",\n".join(f"    {n} {t.format(dim=self.dim)}" for n, t in COLUMNS)
        sql = [
            "CREATE EXTENSION IF NOT EXISTS vector;",
            f"CREATE TABLE IF NOT EXISTS {schema}.{table} (\n{cols}\n);",
            # Streamed deletes carry the key only: the default replica identity.
            f"CREATE INDEX IF NOT EXISTS {table}_expires ON {schema}.{table} (expires_at);",
        ]
        if self.role:
            sql.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.{table} TO {self.role};")
        return "\n".join(sql) + "\n"

    def wrapper_table(self) -> dict[str, Any]:
        """The [[tables]] entry for the wrapper's config."""
        return {
            "name": self.name,
            "tenant": self.tenant_id,
            "vector_column": "embedding",
            "vector_dim": self.dim,
            "vector_in_rows": False,  # the index holds the vector; rows need not
            "writable": True,
            "writable_columns": list(WRITABLE),
        }


@dataclass(frozen=True)
class SharedRow:
    """A row of the shared table, as the replica holds it."""

    key: str
    scope: str
    query: str
    response: Any
    tags: tuple[str, ...]
    created: float
    expires: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    node_id: str
    version: str

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


def parse_row(row: Mapping[str, Any]) -> SharedRow | None:
    """A replica row as a SharedRow; None for a row this version cannot
    read (written by hand, or by another format), which is never served."""
    try:
        expires = row.get("expires_at")
        return SharedRow(
            key=str(row["key"]),
            scope=str(row["scope"]),
            query=str(row["query"]),
            response=json.loads(row["response"]),
            tags=tuple(row.get("tags") or ()),
            created=float(row["created_at"]),
            expires=float(expires) if expires is not None else None,
            prompt_tokens=int(row["prompt_tokens"]),
            completion_tokens=int(row["completion_tokens"]),
            tokens_estimated=bool(row["tokens_estimated"]),
            node_id=str(row["node_id"]),
            version=str(row["version"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def request_id(key: str, started: float) -> str:
    """The write's id: one per question and dedup window."""
    return f"pc:{key}:{int(started // DEDUP_WINDOW_S)}"


class SharedTier:
    """One tenant's shared table, read from the driver's replica and
    written through the driver. Every method runs on the driver's event
    loop (`loop`); PrismCache's sync calls reach it through `run()`."""

    def __init__(
        self,
        driver: PrismDriver,
        *,
        tenant_id: str,
        dim: int,
        node_id: str | None = None,
        table: str | None = None,
        sweep_s: float = SWEEP_S,
        write_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not hasattr(driver, "write") or not hasattr(driver, "query"):
            raise CacheConfigError(f"shared must be a PrismDriver, got {type(driver).__name__}")
        if driver.config.tenant_id != tenant_id:
            raise CacheConfigError(
                f"shared: the driver belongs to tenant {driver.config.tenant_id!r}, "
                f"the cache to {tenant_id!r}"
            )
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise CacheConfigError(f"node_id must be a non-empty string, got {node_id!r}")
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            raise CacheConfigError(
                "shared=: build the cache on the driver's event loop (inside async code)"
            ) from None
        self.driver = driver
        self.tenant_id = tenant_id
        self.dim = dim
        self.table = table or table_name(tenant_id)
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.sweep_s = sweep_s
        self.write_timeout_s = write_timeout_s
        self._clock = clock
        # Local entry id -> (row key, version) of the node's own answers;
        # `pending`: those whose write has not reached the replica yet.
        self.refs: dict[int, tuple[str, str]] = {}
        self.pending: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_sweep = time.monotonic() + sweep_s * random.uniform(0.5, 1.0)
        self.counts: dict[str, float] = {}
        self.visible_ms: list[float] = []  # own writes: call to visible in the local replica

    def add(self, name: str, n: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # -- threads ----------------------------------------------------------
    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def run(self, coro_fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a coroutine on the driver's loop from another thread and
        wait for it (the sync API of a shared cache)."""
        if self.on_loop():
            raise CacheConfigError(
                f"{what} of a shared cache blocks: from the driver's event loop use "
                f"the async form (await cache.a{what}(...))"
            )

        async def call() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def check_loop(self, what: str) -> None:
        if not self.on_loop():
            raise CacheConfigError(
                f"{what}: a shared cache is used on the event loop of its driver "
                "(or through the sync API from other threads)"
            )

    # -- reads (the local replica) ---------------------------------------------
    def row(self, key: str) -> SharedRow | None:
        raw = self._raw(key)
        return parse_row(raw) if raw is not None else None

    def alive(self, entry_id: int) -> bool:
        """Whether a local entry may still be served: not a shared one, its
        write still in flight, or its row in the replica unchanged."""
        ref = self.refs.get(entry_id)
        if ref is None or entry_id in self.pending:
            return True
        raw = self._raw(ref[0])
        return raw is not None and raw.get("version") == ref[1]

    def _raw(self, key: str) -> Mapping[str, Any] | None:
        try:
            return self.driver.get(self.table, key)
        except Exception as exc:  # the driver's QueryError: the table is not replicated (yet)
            self.add("read_errors")
            log.debug("shared table not readable: %s", exc)
            return None

    async def search(self, vec: np.ndarray, threshold: float) -> list[tuple[SharedRow, float]]:
        """Rows whose vector scores >= threshold against `vec`, best first."""
        try:
            matches = await self.driver.query(
                embedding=vec, top_k=SEARCH_TOP_K, threshold=threshold, table=self.table
            )
        except Exception as exc:
            self.add("read_errors")
            log.debug("shared search failed: %s", exc)
            return []
        out = []
        for m in matches:
            r = parse_row(m.row)
            if r is not None:
                out.append((r, float(m.score)))
        return out

    async def rows(self) -> list[SharedRow]:
        """Every row of the replica's table (see the module doc)."""
        n = int(self.driver.stats()["rows"].get(self.table, 0))
        if n == 0:
            return []
        probe = np.zeros(self.dim)
        probe[0] = 1.0
        matches = await self.driver.query(
            embedding=probe, top_k=n, threshold=-1.0, exact=True, table=self.table
        )
        return [r for r in (parse_row(m.row) for m in matches) if r is not None]

    # -- writes ---------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait for the writes in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def write(
        self,
        entry_id: int,
        key: str,
        data: dict[str, Any],
        started: float,
        on_lost: Callable[[int], None],
    ) -> None:
        """Write one entry's row and wait until the local replica shows it.
        A failed write drops the local entry (`on_lost`): the table is the
        truth, and a row that is not there cannot be invalidated either."""
        from prism.driver import ReplicaLagError

        version = data["version"]
        self.refs[entry_id] = (key, version)
        self.pending.add(entry_id)
        t0 = time.perf_counter()
        try:
            ack = await self.driver.write(
                row_id=key,
                data=data,
                table=self.table,
                request_id=request_id(key, started),
                timeout=self.write_timeout_s,
            )
            if ack.replayed:
                current = self._raw(key)
                if current is None:  # the earlier write of this window was deleted since
                    ack = await self.driver.write(
                        row_id=key,
                        data=data,
                        table=self.table,
                        request_id=f"pc:{key}:{version}",
                        timeout=self.write_timeout_s,
                    )
                else:
                    self.add("writes_deduplicated")
            if not ack.replayed:
                self.add("writes")
                self.visible_ms.append((time.perf_counter() - t0) * 1e3)
                del self.visible_ms[:-10_000]
        except ReplicaLagError:
            self.add("writes")  # committed; the replica shows it later
        except Exception as exc:
            self.add("write_errors")
            log.warning("shared write of %s failed: %s", key, exc)
            self.refs.pop(entry_id, None)
            on_lost(entry_id)
        finally:
            self.pending.discard(entry_id)

    def forget(self, ids: Iterable[int]) -> None:
        for eid in ids:
            self.refs.pop(eid, None)
            self.pending.discard(eid)

    async def delete(self, keys: list[str]) -> int:
        """Delete rows by key, DELETE_BATCH per transaction; returns how many
        existed."""
        from prism.driver import WriteOp

        n = 0
        for lo in range(0, len(keys), DELETE_BATCH):
            ops = [WriteOp("delete", k, table=self.table) for k in keys[lo : lo + DELETE_BATCH]]
            ack = await self.driver.write_many(ops, timeout=self.write_timeout_s)
            n += sum(ack.affected)
        self.add("deletes", n)
        return n

    async def sweep_if_due(self) -> None:
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_s * random.uniform(0.8, 1.2)
        self.spawn(self.sweep())

    async def sweep(self) -> int:
        """Delete expired rows: this node's own at once, others' once they
        are sweep_s past expiry (their node may be gone)."""
        now = self._clock()
        try:
            rows = await self.rows()
            late = [
                r.key
                for r in rows
                if r.expired(now)
                and (r.node_id == self.node_id or now - (r.expires or now) > self.sweep_s)
            ]
            n = await self.delete(late) if late else 0
        except Exception as exc:
            self.add("write_errors")
            log.warning("shared sweep failed: %s", exc)
            return 0
        self.add("expired_deleted", n)
        return n

    def lag_s(self) -> float | None:
        st = self.driver.stats()
        if not st.get("lag_positions"):
            return 0.0
        ms = st.get("lag_ms")
        return ms / 1e3 if ms is not None and math.isfinite(ms) else None
