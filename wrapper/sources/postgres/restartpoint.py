"""When to ask PostgreSQL for a new restart point for our slot (source → slot).

A logical slot's restart_lsn, where its walsender starts decoding when the
stream starts again, moves only at the running-transactions records the
server logs (the background writer's, every 15 s while the server writes,
and checkpoints' ones), and only once the client has confirmed past one. Everything
between restart_lsn and confirmed_flush_lsn is decoded again at every start,
only to be skipped. Measured here: a wrapper restarted right after a burst of
50,000 changes found restart_lsn still before the burst (115 MB of WAL behind
confirmed_flush_lsn), so its walsender decoded the whole burst again before
the first new change, more than doubling the catch-up's decoding
(benchmark/README.md, "Issue 12").

So the source logs one itself (pg_log_standby_snapshot(), PostgreSQL 16 and
newer; superuser or a role granted EXECUTE on it) each time it has confirmed
`every_bytes` of WAL since the last one, at most every `min_interval_s`. A
burst then ends at most `every_bytes` past a record the stream has carried.
While the newest one is beyond every keepalive seen, the source asks the
walsender for a keepalive on its idle ticks: a keepalive's WAL end past the
record, confirmed as an idle position, is what lets PostgreSQL move
restart_lsn up to the record when nothing else of ours follows it.

Pure decisions; the query and the status messages are in source.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# 8 MB of WAL decode in a few ms: the most a graceful restart re-reads
# because of us. Each record costs a ~100-byte WAL record and a small
# snapshot file per logical walsender.
MARK_EVERY_BYTES = 8 << 20
MIN_INTERVAL_S = 0.2
# While a record waits for a keepalive past it: how often to ask for one.
REPLY_EVERY_S = 0.02


@dataclass
class RestartMarks:
    every_bytes: int = MARK_EVERY_BYTES
    min_interval_s: float = MIN_INTERVAL_S
    enabled: bool = True
    made: int = 0  # records logged (for tests and logs)
    _base: int = 0  # the confirmed position at the last record (or the stream's start)
    _pending: int = 0  # the last record's position while no keepalive has passed it
    _last_s: float = -math.inf

    def start(self, position: int) -> None:
        """A stream starts at `position`: what is confirmed counts from there."""
        self._base = position
        self._pending = 0

    def due(self, confirmed: int, now: float) -> bool:
        """Whether to log a record now, having confirmed up to `confirmed`."""
        return (
            self.enabled
            and confirmed - self._base >= self.every_bytes
            and now - self._last_s >= self.min_interval_s
        )

    def logged(self, confirmed: int, record: int, now: float) -> None:
        """A record was logged at WAL position `record`."""
        self._base = confirmed
        self._pending = max(self._pending, record)
        self._last_s = now
        self.made += 1

    def wants_keepalive(self, keepalive: int) -> bool:
        """Whether a record waits for a keepalive past it; `keepalive` is the
        newest keepalive's WAL end. Forgets the record once one passed it."""
        if self._pending and keepalive >= self._pending:
            self._pending = 0
        return bool(self._pending)
