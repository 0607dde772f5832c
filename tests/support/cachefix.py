"""Stand-ins for the PrismCache tests: a wall clock and the user's LLM call."""

from __future__ import annotations


class Clock:
    """A settable wall clock for TTL tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LLM:
    """The stand-in for the user's call_fn: counts calls, answers by rule."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, q: str) -> str:
        self.calls.append(q)
        return f"answer #{len(self.calls)} to: {q}"
