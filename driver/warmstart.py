"""Warm restart: when the driver writes its snapshot, and whether one it
loads may be served.

Between the subscription (driver/subscription.py), which calls in at its
first Hello, after each applied batch and on close, and the snapshot file
(driver/snapshot.py). Opt-in with DriverConfig(snapshot_dir=...).

At start the tenant's snapshot is read and verified in a thread while the
driver connects. At the first Hello it is checked against what the wrapper
says: the same stream identity, a position at or above the retention floor
and not past the head, the same tables and the same projection key. Only
then does it become the replica readers see, and the subscription resumes
from its position instead of bootstrapping; the driver is ready at once
when that position is the head, else after the catch-up batch. A snapshot
that fails any check (or its integrity check, or cannot be read) is logged,
deleted and never served: the driver bootstraps as it would without one.

A snapshot is written (a new file replacing the old, atomically):
* after every bootstrap, so a restart soon after it is warm;
* every `snapshot_interval_s` (default 300 s) while the replica moves, so a
  crash loses at most that much catch-up, which comes from the wrapper's
  store anyway; and
* on close(), so an orderly restart resumes from where the driver stopped.

Taking a snapshot pauses applying (not reading) while the replica's
payload references and vectors are copied in a thread (about 0.1 s at 100k
rows); sealing and writing the file then run in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from prism.driver.config import DriverConfig
from prism.driver.replica import Replica
from prism.driver.schema import TableInfo
from prism.driver.snapshot import (
    Restored,
    SnapshotError,
    capture,
    projection_tag,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from prism.fabric import wrapper_pb2 as pb

log = logging.getLogger("prism.driver")


def why_not_served(
    restored: Restored,
    hello: pb.HelloResponse,
    tables: Mapping[str, TableInfo],
    tag: bytes,
) -> str | None:
    """None when a verified snapshot may be served against this Hello; else
    why not."""
    if restored.stream_id != hello.stream_id:
        return (
            f"it belongs to stream {restored.stream_id!r}, the wrapper now serves "
            f"{hello.stream_id!r}"
        )
    if restored.position < hello.retention_floor:
        return (
            f"its position {restored.position} is older than the wrapper's retention floor "
            f"{hello.retention_floor}"
        )
    if restored.position > hello.head_position:
        return f"its position {restored.position} is past the wrapper's head {hello.head_position}"
    if dict(restored.tables) != dict(tables):
        return "the wrapper's tables changed since it was written"
    if restored.projection_tag != tag:
        return "its vectors were projected under another projection key"
    return None


class WarmStart:
    def __init__(self, config: DriverConfig) -> None:
        assert config.snapshot_dir is not None
        self.config = config
        self.path = snapshot_path(config.snapshot_dir, config.tenant_id)
        self._loading: asyncio.Task[Restored | None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._last_capture = time.monotonic()
        self.written: tuple[str, int] = ("", -1)  # (stream, position) of the file on disk
        self.stats: dict[str, Any] = {
            "path": str(self.path),
            "restored": False,
            "restored_rows": 0,
            "load_seconds": None,
            "discarded": None,
            "written": 0,
            "write_failures": 0,
            "last_write_seconds": None,
            "last_write_bytes": None,
            "last_write_position": None,
        }

    # -- loading ------------------------------------------------------------
    def start_loading(self, secret: bytes) -> None:
        """Read and verify the snapshot in a thread while the driver connects."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._load, secret), name="prism-snapshot-load"
            )

    @property
    def pending(self) -> bool:
        """A loaded (or loading) snapshot waits for the first Hello."""
        return self._loading is not None

    def _load(self, secret: bytes) -> Restored | None:
        t0 = time.perf_counter()
        try:
            restored = read_snapshot(self.path, secret, self.config.tenant_id, self.config.index)
        except FileNotFoundError:
            return None
        except SnapshotError as exc:
            self._discard(str(exc))
            return None
        self.stats["load_seconds"] = time.perf_counter() - t0
        return restored

    def _discard(self, reason: str) -> None:
        log.warning("warm restart: snapshot %s discarded, bootstrapping: %s", self.path, reason)
        self.stats["discarded"] = reason
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the discarded snapshot %s: %s", self.path, exc.strerror)

    async def restore(
        self, hello: pb.HelloResponse, tables: Mapping[str, TableInfo], secret: bytes, pkey: bytes
    ) -> Restored | None:
        """The loaded snapshot when it may be served against this (first)
        Hello; None (logged, file deleted) when not or when there is none."""
        task, self._loading = self._loading, None
        if task is None:
            return None
        restored = await task
        if restored is None:
            return None
        reason = why_not_served(
            restored, hello, tables, projection_tag(secret, self.config.tenant_id, pkey)
        )
        if reason is not None:
            self._discard(reason)
            return None
        self.written = (restored.stream_id, restored.position)
        self.stats.update(restored=True, restored_rows=restored.rows)
        log.info(
            "warm restart: %d rows at position %d of stream %s from %s",
            restored.rows,
            restored.position,
            restored.stream_id,
            self.path,
        )
        return restored

    # -- writing ------------------------------------------------------------
    def due(self, stream_id: str, position: int) -> bool:
        """Time for a periodic snapshot: the interval passed, the replica
        moved since the last one, and none is being written."""
        return (
            time.monotonic() - self._last_capture >= self.config.snapshot_interval_s
            and (stream_id, position) != self.written
            and (self._writing is None or self._writing.done())
        )

    async def save(
        self,
        replica: Replica,
        tables: Mapping[str, TableInfo],
        *,
        stream_id: str,
        position: int,
        head: int,
        secret: bytes,
        pkey: bytes,
        wait: bool,
    ) -> None:
        """Capture the replica now (the caller applies nothing until this
        returns) and write it: in the background, or before returning with
        wait=True. Failures are logged and counted, never raised."""
        if self._writing is not None and not self._writing.done():
            if not wait:
                return
            await asyncio.shield(self._writing)
        if (stream_id, position) == self.written or not stream_id:
            return
        self._last_capture = time.monotonic()
        tag = projection_tag(secret, self.config.tenant_id, pkey)
        try:
            snap = await asyncio.to_thread(
                capture,
                replica,
                tables,
                tenant_id=self.config.tenant_id,
                stream_id=stream_id,
                position=position,
                head=head,
                projection_tag=tag,
                index_params=self.config.index,
            )
        except SnapshotError as exc:
            log.warning("snapshot not taken: %s", exc)
            return
        snap.created_us = time.time_ns() // 1000

        async def write() -> None:
            t0 = time.perf_counter()
            try:
                size = await asyncio.to_thread(write_snapshot, self.path, snap, secret)
            except OSError as exc:
                self.stats["write_failures"] += 1
                log.warning("cannot write the snapshot %s: %s", self.path, exc)
                return
            self.written = (stream_id, position)
            self.stats.update(
                written=self.stats["written"] + 1,
                last_write_seconds=time.perf_counter() - t0,
                last_write_bytes=size,
                last_write_position=position,
            )
            log.info(
                "snapshot written",
                extra={"path": str(self.path), "position": position, "bytes": size},
            )

        self._writing = asyncio.get_running_loop().create_task(write(), name="prism-snapshot")
        if wait:
            await asyncio.shield(self._writing)

    async def close(self) -> None:
        """Wait for a snapshot being written; cancel a load nobody took."""
        if self._loading is not None:
            self._loading.cancel()
            self._loading = None
        if self._writing is not None and not self._writing.done():
            await asyncio.shield(self._writing)
