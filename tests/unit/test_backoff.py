"""prism.fabric.backoff: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prism.fabric.backoff import Backoff
from prism.fabric.errors import FabricError


def test_the_window_doubles_up_to_the_cap() -> None:
    b = Backoff(0.5, 30.0, rng=random.Random(1))
    ceilings = []
    for _ in range(10):
        ceilings.append(b.ceiling)
        b.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert b.attempts == 10


@given(
    first=st.floats(0.001, 10.0),
    cap_over=st.floats(0.0, 100.0),
    factor=st.floats(1.0, 4.0),
    seed=st.integers(0, 2**32),
)
def test_every_delay_is_within_its_window(
    first: float, cap_over: float, factor: float, seed: int
) -> None:
    cap = first + cap_over
    b = Backoff(first, cap, factor=factor, rng=random.Random(seed))
    expected = first
    for _ in range(30):
        assert b.ceiling == pytest.approx(expected)
        delay = b.next_delay()
        assert 0.0 <= delay <= expected <= cap
        expected = min(cap, expected * factor)


def test_delays_grow_with_the_window() -> None:
    # Seeded, so these figures are exact for this seed, not a flaky sample:
    # the mean delay at each step is about half its window.
    rng = random.Random(7)
    means = []
    for step in range(5):
        draws = []
        for _ in range(400):
            b = Backoff(0.1, 100.0, rng=rng)
            for _ in range(step):
                b.next_delay()
            draws.append(b.next_delay())
        means.append(statistics.fmean(draws))
    for step, mean in enumerate(means):
        window = 0.1 * 2**step
        assert 0.4 * window < mean < 0.6 * window
    assert means == sorted(means)


def test_reset_starts_again_from_the_first_window() -> None:
    b = Backoff(0.2, 5.0, rng=random.Random(3))
    for _ in range(6):
        b.next_delay()
    assert b.ceiling == 5.0
    b.reset()
    assert (b.ceiling, b.attempts) == (0.2, 0)
    assert b.next_delay() <= 0.2
    assert b.ceiling == 0.4


def test_jitter_spreads_a_herd_over_the_window() -> None:
    # 1000 drivers lose the wrapper at the same instant: without jitter all
    # would reconnect at exactly first, in one burst. With full jitter their
    # first attempts fill the window evenly.
    rng = random.Random(11)
    delays = [Backoff(1.0, 10.0, rng=rng).next_delay() for _ in range(1000)]
    buckets = [0] * 10
    for d in delays:
        buckets[min(9, int(d * 10))] += 1
    assert min(buckets) >= 60 and max(buckets) <= 140  # ~100 each
    assert len(set(delays)) == 1000
    assert statistics.pstdev(delays) > 0.25  # uniform on [0, 1]: 0.289


def test_unseeded_backoffs_do_not_share_a_sequence() -> None:
    a, b = Backoff(1.0, 10.0), Backoff(1.0, 10.0)
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]


def test_a_seeded_rng_gives_the_same_schedule() -> None:
    def schedule(seed: int) -> list[float]:
        b = Backoff(0.05, 2.0, factor=3.0, rng=random.Random(seed))
        out = [b.next_delay() for _ in range(6)]
        b.reset()
        return out + [b.next_delay() for _ in range(3)]

    assert schedule(42) == schedule(42)
    assert schedule(42) != schedule(43)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((0.0, 1.0), "first"),
        ((-1.0, 1.0), "first"),
        ((float("nan"), 1.0), "first"),
        ((1.0, float("inf")), "cap"),
        ((2.0, 1.0), "cap"),
        (("1", 2.0), "first"),
        ((True, 2.0), "first"),
    ],
)
def test_bad_arguments_are_refused_by_name(args: tuple[object, object], named: str) -> None:
    with pytest.raises(FabricError, match=f"Backoff {named}"):
        Backoff(*args)  # type: ignore[arg-type]


def test_a_factor_below_one_is_refused() -> None:
    with pytest.raises(FabricError, match="Backoff factor"):
        Backoff(1.0, 2.0, factor=0.5)
