"""WritePositions: a Write call learns its marker's store position from the
commit that stored it, whether it asked before or after, and only its own
marker wakes it."""

from __future__ import annotations

import threading

import pytest

from prism.wrapper.writepositions import WritePositions


def test_a_waiter_is_woken_by_its_own_marker_only() -> None:
    wp = WritePositions()
    mine, other = wp.expect("e1"), wp.expect("e2")
    wp.publish([("e3", 7)])
    assert not mine.done() and not other.done()
    wp.publish([("e1", 9), ("e4", 9)])
    assert mine.result(0) == 9 and not other.done()
    assert wp.get("e1") == 9 and wp.get("e2") is None


def test_a_marker_stored_before_the_call_asks_is_not_missed() -> None:
    wp = WritePositions()
    wp.publish([("e1", 3)])
    assert wp.expect("e1").result(0) == 3


def test_several_calls_may_wait_for_one_marker() -> None:
    wp = WritePositions()
    first, retry = wp.expect("e1"), wp.expect("e1")  # a retry replaying the first write
    wp.publish([("e1", 5)])
    assert first.result(0) == retry.result(0) == 5


def test_forget_and_timeouts_leave_nothing_behind() -> None:
    wp = WritePositions()
    fut = wp.expect("e1")
    with pytest.raises(TimeoutError):
        fut.result(0.01)
    wp.forget("e1", fut)
    wp.forget("e1", fut)  # twice is harmless
    assert wp._waiting == {}
    wp.publish([("e1", 1)])
    assert not fut.done()  # forgotten: not woken


def test_recent_positions_are_bounded_oldest_first() -> None:
    wp = WritePositions(keep=3)
    wp.publish([(f"e{i}", i) for i in range(5)])
    assert len(wp) == 3
    assert [wp.get(f"e{i}") for i in range(5)] == [None, None, 2, 3, 4]
    wp.clear()
    assert len(wp) == 0


def test_waiters_on_other_threads_wake() -> None:
    wp = WritePositions()
    got: dict[str, int] = {}

    def wait(e: str) -> None:
        got[e] = wp.expect(e).result(5)

    threads = [threading.Thread(target=wait, args=(f"e{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    wp.publish([(f"e{i}", 100 + i) for i in range(8)])
    for t in threads:
        t.join(5)
    assert got == {f"e{i}": 100 + i for i in range(8)}
