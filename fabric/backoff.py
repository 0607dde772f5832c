"""How long to wait before trying again: one schedule for every retry loop.

Used by the wrapper's pipeline (a lost database), its write path (deadlocks
and serialization failures) and the driver's reconnect loop. Capped
exponential backoff with full jitter: the n-th delay is drawn uniformly
from [0, min(cap, first * factor**n)], and a success resets n.

Why jitter at all: a wrapper restart breaks every driver's stream at the
same instant. With a fixed schedule they all reconnect at the same instants
too, each time in one burst, for as long as the wrapper is away; a random
delay spreads them over the window.

Why full jitter rather than decorrelated jitter (min(cap, uniform(first,
3 * previous))): every delay stays at or under the un-jittered schedule, so
the bounds the configs document (the driver's reconnect_max_s, the write
path's retry budget) hold exactly as before; and it spreads a herd over the
whole window, which in AWS's comparison of the schemes ("Exponential
Backoff And Jitter", Marc Brooker, 2015) did the least total work for the
same completion time. Decorrelated jitter can wait up to three times the
previous delay, and its next window depends on the last random draw, which
makes its bounds harder to state. The cost of full jitter is that a delay
may be close to zero; the window still doubles, so a dead peer is not
hammered for long.

Not a library (tenacity, backoff): those wrap a function in a retry
decorator, while these loops need the delay itself, to log it and to wait
on their own stop event or event loop.
"""

from __future__ import annotations

import math
import random

from prism.fabric.errors import FabricError


class Backoff:
    """Delays for successive attempts; `reset()` after a success.

    Pass a seeded `random.Random` as `rng` for a reproducible schedule
    (tests); by default each Backoff draws from its own unseeded generator,
    so two processes started together do not share a sequence.
    """

    def __init__(
        self,
        first: float,
        cap: float,
        *,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        for name, value in (("first", first), ("cap", cap), ("factor", factor)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FabricError(f"Backoff {name}: {value!r} is not a number")
            if not math.isfinite(value) or value <= 0:
                raise FabricError(f"Backoff {name}: {value!r} must be a positive number")
        if cap < first:
            raise FabricError(f"Backoff cap: {cap!r} is below first {first!r}")
        if factor < 1:
            raise FabricError(f"Backoff factor: {factor!r} must be at least 1")
        self.first = float(first)
        self.cap = float(cap)
        self.factor = float(factor)
        self._rng = rng if rng is not None else random.Random()
        self._ceiling = self.first
        self.attempts = 0  # delays handed out since the last reset

    @property
    def ceiling(self) -> float:
        """The largest delay the next call may return."""
        return self._ceiling

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; widens the window
        for the one after."""
        delay = self._rng.uniform(0.0, self._ceiling)
        self._ceiling = min(self.cap, self._ceiling * self.factor)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """The last attempt succeeded: start again from the first window."""
        self._ceiling = self.first
        self.attempts = 0
