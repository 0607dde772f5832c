"""RestartMarks: when the PostgreSQL source logs a restart point for its slot
(pure logic; the real server's side is in tests/integration/test_pgsource.py)."""

from __future__ import annotations

from prism.wrapper.sources.postgres.restartpoint import RestartMarks


def test_a_record_is_due_once_enough_wal_is_confirmed_since_the_start() -> None:
    m = RestartMarks(every_bytes=1000, min_interval_s=1.0)
    m.start(5000)
    assert not m.due(5999, now=10.0)  # 999 bytes since the stream's start
    assert m.due(6000, now=10.0)


def test_after_a_record_the_next_waits_for_bytes_and_for_the_interval() -> None:
    m = RestartMarks(every_bytes=1000, min_interval_s=1.0)
    m.start(0)
    m.logged(confirmed=1000, now=10.0)
    assert m.made == 1
    assert not m.due(1999, now=20.0)  # enough time, too few bytes
    assert not m.due(5000, now=10.5)  # enough bytes, too soon
    assert m.due(2000, now=11.0)


def test_a_new_stream_counts_from_its_start() -> None:
    m = RestartMarks(every_bytes=1000)
    m.logged(confirmed=1000, now=1.0)
    m.start(50_000)
    assert not m.due(50_999, now=5.0)
    assert m.due(51_000, now=5.0)


def test_a_transient_failure_waits_retry_s_and_a_refusal_stops_for_good() -> None:
    m = RestartMarks(every_bytes=1000, retry_s=60.0)
    m.start(0)
    m.failed(now=10.0, for_good=False)
    assert m.enabled
    assert not m.due(5000, now=69.0)
    assert m.due(5000, now=70.0)
    m.failed(now=70.0, for_good=True)
    assert not m.enabled
    assert not m.due(1 << 40, now=1e9)
    assert m.made == 0
