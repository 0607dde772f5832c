"""RestartMarks: when the PostgreSQL source logs a restart point for its slot
and when it asks the walsender for a keepalive past one (pure logic; the
real server's side is in tests/integration/test_pgsource.py)."""

from __future__ import annotations

from prism.wrapper.sources.postgres.restartpoint import RestartMarks


def test_a_record_is_due_once_enough_wal_is_confirmed_since_the_start() -> None:
    m = RestartMarks(every_bytes=1000, min_interval_s=0.2)
    m.start(5000)
    assert not m.due(5999, now=10.0)  # 999 bytes since the stream's start
    assert m.due(6000, now=10.0)


def test_after_a_record_the_next_waits_for_bytes_and_for_the_interval() -> None:
    m = RestartMarks(every_bytes=1000, min_interval_s=0.2)
    m.start(0)
    m.logged(confirmed=1000, record=9000, now=10.0)
    assert m.made == 1
    assert not m.due(1999, now=20.0)  # enough time, too few bytes
    assert not m.due(5000, now=10.1)  # enough bytes, too soon
    assert m.due(2000, now=10.25)


def test_a_keepalive_is_wanted_until_one_passes_the_record() -> None:
    m = RestartMarks(every_bytes=1000)
    m.start(0)
    assert not m.wants_keepalive(0)  # nothing logged yet
    m.logged(confirmed=1000, record=9000, now=1.0)
    assert m.wants_keepalive(8999)
    assert not m.wants_keepalive(9000)
    assert not m.wants_keepalive(8000)  # forgotten once passed, not asked again


def test_a_new_stream_forgets_the_record_waiting_and_counts_from_its_start() -> None:
    m = RestartMarks(every_bytes=1000)
    m.logged(confirmed=1000, record=9000, now=1.0)
    m.start(50_000)
    assert not m.wants_keepalive(0)
    assert not m.due(50_999, now=5.0)
    assert m.due(51_000, now=5.0)


def test_disabled_never_due() -> None:
    m = RestartMarks(every_bytes=1, enabled=False)
    m.start(0)
    assert not m.due(1 << 40, now=1e9)
