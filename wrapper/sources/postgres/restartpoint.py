"""When to ask PostgreSQL for a new restart point for our slot (source → slot).

A logical slot's restart_lsn, where its walsender starts decoding when the
stream starts again, moves only at the running-transactions records the
server logs (the background writer's, every 15 s while the server writes,
and checkpoints' ones), and only once the client has confirmed past one.
Everything between restart_lsn and confirmed_flush_lsn is decoded again at
every start, only to be skipped. Measured here: a wrapper restarted right
after a burst of 50,000 changes found restart_lsn still before the burst
(115 MB of WAL behind confirmed_flush_lsn), so its walsender decoded the
whole burst again before the first new change (benchmark/README.md,
"Issue 12").

So the source logs one itself (pg_log_standby_snapshot(), PostgreSQL 16 and
newer; superuser or a role granted EXECUTE on it) each time it has confirmed
`every_bytes` of WAL since the last one, at most every `min_interval_s`: a
burst then ends at most about `every_bytes` past a record the stream carried.
Nothing more is needed to confirm past the record: a walsender that has sent
more than the client reported sends a keepalive by itself, whose WAL end the
pipeline confirms as an idle position. PostgreSQL still keeps restart_lsn
before the oldest transaction that is open (in any database of the cluster),
and holds one candidate at a time, so this bounds what a restart decodes
again only as far as those allow.

Each record is a small WAL record and, in every logical walsender of the
cluster, a small snapshot file (removed at the next checkpoint): hence the
byte threshold, and the interval, which bounds them to four a second under
a load writing over 32 MB of WAL a second. It is short so that a burst's
last record comes close to its end (the benchmark's burst writes 40-60 MB a
second: a 1 s interval would leave up to that much to decode again).

A server that refuses the call (no privilege, before 16, a standby) is asked
no more; any other failure waits `retry_s` before the next try.

Pure decisions; the query is in source.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# 8 MB of WAL decode in a few ms: about the most a restart decodes again
# because of us.
MARK_EVERY_BYTES = 8 << 20
MIN_INTERVAL_S = 0.25
RETRY_S = 60.0


@dataclass
class RestartMarks:
    """Whether the source should log a restart point now, from what it
    confirmed and when it last logged one (or failed to)."""

    every_bytes: int = MARK_EVERY_BYTES
    min_interval_s: float = MIN_INTERVAL_S
    retry_s: float = RETRY_S
    enabled: bool = True  # False once the server refused the call for good
    made: int = 0  # records logged (the tests read it)
    _base: int = 0  # the confirmed position at the last record (or the stream's start)
    _next_s: float = -math.inf  # no record before this time

    def start(self, position: int) -> None:
        """A stream starts at `position`: what is confirmed counts from there."""
        self._base = position

    def due(self, confirmed: int, now: float) -> bool:
        """Whether to log a record now, having confirmed up to `confirmed`."""
        return self.enabled and confirmed - self._base >= self.every_bytes and now >= self._next_s

    def logged(self, confirmed: int, now: float) -> None:
        """A record was logged, with `confirmed` confirmed."""
        self._base = confirmed
        self._next_s = now + self.min_interval_s
        self.made += 1

    def failed(self, now: float, for_good: bool) -> None:
        """The call failed: for good (the server refuses it), or try again
        after retry_s (a lost connection, a timeout)."""
        if for_good:
            self.enabled = False
        self._next_s = now + self.retry_s
