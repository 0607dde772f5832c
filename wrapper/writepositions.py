"""Where each write through the wrapper became visible (store → serve).

A Write call is answered with the store position at which its marker row
came back through the replication stream. The store publishes the markers
of each commit here once it is durable (at the row log's sync, or right
after the commit for one that SQLite makes durable), so a position is only
ever handed out for a durable commit; a Write call registers for its event id
before its database transaction starts, so a marker that comes back
before the call looks is never missed, and it is woken by its own marker
alone: no poll, and no waking of every waiting call on every store commit.
Recent positions are kept (bounded) for retries of a request id; older ones
live in the store's `writes` table.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future

RECENT_WRITES = 100_000


class WritePositions:
    def __init__(self, keep: int = RECENT_WRITES) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._known: OrderedDict[str, int] = OrderedDict()  # event id -> position, oldest first
        self._waiting: dict[str, list[Future[int]]] = {}

    def expect(self, event_id: str) -> Future[int]:
        """A future that holds the write's position once the store has it
        (at once, when it already does). Pair with `forget()` when the
        caller stops waiting."""
        fut: Future[int] = Future()
        with self._lock:
            position = self._known.get(event_id)
            if position is None:
                self._waiting.setdefault(event_id, []).append(fut)
                return fut
        fut.set_result(position)
        return fut

    def forget(self, event_id: str, fut: Future[int]) -> None:
        """Stop waiting for `event_id` (a failed, replayed or timed-out call)."""
        with self._lock:
            waiters = self._waiting.get(event_id)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiting[event_id]

    def get(self, event_id: str) -> int | None:
        with self._lock:
            return self._known.get(event_id)

    def publish(self, written: Iterable[tuple[str, int]]) -> None:
        """Markers of a commit that is durable: wake the calls waiting on them."""
        woken: list[tuple[Future[int], int]] = []
        with self._lock:
            for event_id, position in written:
                self._known[event_id] = position
                for fut in self._waiting.pop(event_id, ()):
                    woken.append((fut, position))
            while len(self._known) > self._keep:
                self._known.popitem(last=False)
        for fut, position in woken:
            fut.set_result(position)

    def clear(self) -> None:
        """A new stream identity: positions of the old one mean nothing.
        Calls still waiting keep waiting (their marker may yet arrive)."""
        with self._lock:
            self._known.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._known)
