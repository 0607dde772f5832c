"""Each tenant's key epoch and projection key, kept in the wrapper's store.

Between the config's tenants and sealing: the serve step seals every frame
with the tenant's *current* epoch, read from here. The epoch advances every
server.key_rotation_seconds, and at once when `prism-wrapper rotate-keys`
bumps it from another process; drivers follow from the key_epoch of the
frames, deriving the new keys from the secret they already hold, so nothing
reconnects. The projection key (the seed of the tenant's keyed projection)
is made once per tenant and never rotates: stored vectors and every driver's
index are in that space.

The state lives in its own table of the store's SQLite file, on its own
connection, so a rotation never waits for the store writer's transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prism.fabric.keys import new_projection_key
from prism.wrapper.errors import StoreError
from prism.wrapper.store import _connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keyring (
    tenant TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    epoch_started REAL NOT NULL,      -- unix time the epoch began
    projection_key BLOB NOT NULL
)
"""
_REFRESH_S = 0.5  # how stale a cached epoch may be (rotate-keys from another process)


@dataclass(frozen=True)
class TenantKeys:
    epoch: int
    epoch_started: float
    projection_key: bytes


class Keyring:
    def __init__(
        self,
        path: Path,
        tenants: Iterable[str],
        rotation_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.rotation_seconds = rotation_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._conn = _connect(path, "full")
        try:
            self._conn.execute(_SCHEMA)
            now = clock()
            for t in tenants:
                self._conn.execute(
                    "INSERT INTO keyring VALUES (?, 1, ?, ?) ON CONFLICT (tenant) DO NOTHING",
                    (t, now, new_projection_key()),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot set up the keyring in {path}: {exc}") from exc
        self._cache: dict[str, TenantKeys] = {}
        self._read_at = 0.0
        self._closed = False
        self._refresh()

    def _refresh(self) -> None:
        rows = self._conn.execute(
            "SELECT tenant, epoch, epoch_started, projection_key FROM keyring"
        ).fetchall()
        self._cache = {str(t): TenantKeys(int(e), float(s), bytes(k)) for t, e, s, k in rows}
        self._read_at = time.monotonic()

    def get(self, tenant: str) -> TenantKeys:
        """The tenant's current keys, advancing the epoch when it is due."""
        with self._lock:
            if self._closed:
                # Shutting down: streams still draining keep the last epoch.
                return self._cache[tenant]
            if time.monotonic() - self._read_at > _REFRESH_S:
                self._refresh()
            keys = self._cache[tenant]
            if (
                self.rotation_seconds
                and self._clock() - keys.epoch_started >= self.rotation_seconds
            ):
                self._advance([tenant], only_from=keys.epoch)
                keys = self._cache[tenant]
            return keys

    def epoch(self, tenant: str) -> int:
        return self.get(tenant).epoch

    def projection_key(self, tenant: str) -> bytes:
        return self.get(tenant).projection_key

    def rotate(self, tenants: Iterable[str] | None = None) -> dict[str, int]:
        """Advance the epoch of the given tenants (all by default) now; returns
        each one's new epoch. Safe from another process than the daemon."""
        with self._lock:
            names = list(tenants) if tenants is not None else list(self._cache)
            unknown = [t for t in names if t not in self._cache]
            if unknown:
                raise StoreError(
                    f"no keys for tenant(s) {unknown} in {self.path}; known: {sorted(self._cache)}"
                )
            self._advance(names)
            return {t: self._cache[t].epoch for t in names}

    def _advance(self, tenants: list[str], only_from: int | None = None) -> None:
        # only_from: a timed rotation advances only from the epoch it saw, so
        # two servicer threads (or processes) due at once advance it once.
        now = self._clock()
        try:
            for t in tenants:
                if only_from is None:
                    self._conn.execute(
                        "UPDATE keyring SET epoch = epoch + 1, epoch_started = ? WHERE tenant = ?",
                        (now, t),
                    )
                else:
                    self._conn.execute(
                        "UPDATE keyring SET epoch = epoch + 1, epoch_started = ? "
                        "WHERE tenant = ? AND epoch = ?",
                        (now, t, only_from),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot rotate keys in {self.path}: {exc}") from exc
        self._refresh()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()
