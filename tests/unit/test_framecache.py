"""The shared frame cache: single flight, a byte budget, least recently used
eviction, and backpressure on segments too large to keep."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from prism.wrapper import framecache
from prism.wrapper.framecache import FrameCache, SegmentFailed, SharedFrame

START = ("acme", b"secret-id", 1024, "stream", 1, "changes", 10)


def frame(i: int, size: int = 10) -> SharedFrame:
    return SharedFrame(bytes([i % 256]) * size, b"w" * 32, 1, 1)


def test_one_build_for_every_caller_at_a_position() -> None:
    cache = FrameCache(1 << 20)
    seg, rid, build = cache.acquire(START, 20)
    assert build
    joined = [cache.acquire(START, 20) for _ in range(5)]
    assert all(s is seg and not b for s, _, b in joined)
    cache.add(seg, frame(1))
    cache.finish(seg, commits=True)
    assert [f.data for f in cache.read(seg, rid)] == [frame(1).data]
    for s, r, _ in joined:
        assert [f.data for f in cache.read(s, r)] == [frame(1).data]
    assert cache.stats["segments_built"] == 1 and cache.stats["segments_shared"] == 5
    assert not seg.readers  # every reader let go


def test_the_newest_segment_that_fits_is_chosen() -> None:
    cache = FrameCache(1 << 20)
    for end in (15, 18, 25):
        seg, _, build = cache.acquire(START, end, min_end=end)
        assert build and seg.end == end
        cache.finish(seg)
    # at head 20 the newest ending at or before it; at 30 the newest of all
    assert cache.acquire(START, 20)[0].end == 18
    assert cache.acquire(START, 30)[0].end == 25
    # too old (below the retention floor): a new one is built
    seg, _, build = cache.acquire(START, 30, min_end=26)
    assert build and seg.end == 30
    # another start, stream or epoch is another segment
    assert cache.acquire((*START[:-1], 11), 30)[2]


def test_readers_stream_frames_while_they_are_built() -> None:
    cache = FrameCache(1 << 20)
    seg, _, _ = cache.acquire(START, 20)
    _, rid, _ = cache.acquire(START, 20)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(f.data for f in cache.read(seg, rid)))
    reader.start()
    for i in range(3):
        cache.add(seg, frame(i))
        deadline = time.monotonic() + 5
        while len(got) <= i and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(got) == i + 1  # received before the segment is done
    cache.finish(seg)
    reader.join(5)
    assert got == [frame(i).data for i in range(3)]


def test_least_recently_used_segments_leave_the_budget() -> None:
    cache = FrameCache(max_bytes=250)
    segs = []
    for end in (1, 2, 3):
        seg, _, _ = cache.acquire((*START[:-1], end), end)
        cache.add(seg, frame(end, 100))
        cache.finish(seg)
        segs.append(seg)
    # the third pushed the budget over: the oldest went
    assert cache.counters()["frame_cache_bytes"] == 200
    assert cache.acquire((*START[:-1], 1), 1)[2]  # built again
    assert not cache.acquire((*START[:-1], 3), 3)[2]  # still cached
    assert cache.stats["segments_evicted"] >= 1


def test_the_number_of_segments_is_bounded_too() -> None:
    cache = FrameCache(max_bytes=1 << 20, max_segments=3)
    for end in range(1, 7):
        seg, _, _ = cache.acquire((*START[:-1], end), end)
        cache.add(seg, frame(end))
        cache.finish(seg)
    assert cache.counters()["frame_cache_segments"] == 3
    assert not cache.acquire((*START[:-1], 6), 6)[2]
    assert cache.acquire((*START[:-1], 1), 1)[2]


def test_an_evicted_segment_is_still_read_whole_by_its_readers() -> None:
    cache = FrameCache(max_bytes=150)
    seg, rid, _ = cache.acquire(START, 20)
    cache.add(seg, frame(1, 100))
    cache.finish(seg)
    other, _, _ = cache.acquire((*START[:-1], 30), 40)
    cache.add(other, frame(2, 100))  # evicts seg
    assert cache.acquire(START, 20)[2]
    assert [f.data for f in cache.read(seg, rid)] == [frame(1, 100).data]


def test_a_segment_past_the_budget_is_built_at_its_slowest_readers_pace() -> None:
    cache = FrameCache(max_bytes=35, window=2)
    seg, rid, _ = cache.acquire(START, 20)
    built: list[int] = []

    def builder() -> None:
        for i in range(8):
            if not cache.add(seg, frame(i)):
                return
            built.append(i)
        cache.finish(seg)

    t = threading.Thread(target=builder)
    t.start()
    time.sleep(0.3)
    # past 35 bytes it stopped being cached, and waits for its reader
    assert not seg.cached and len(built) <= 4
    assert cache.acquire(START, 20)[2]  # no new caller joins it
    got = []
    for f in cache.read(seg, rid):
        got.append(f.data)
        # uncached from the 4th frame on, then never more than `window` ahead
        assert seg.built <= max(4, len(got) + 2)
    t.join(5)
    assert got == [frame(i).data for i in range(8)]
    # frames every reader has are let go
    assert seg.frames.count(None) == 8


def test_nobody_reading_an_uncached_segment_stops_its_builder() -> None:
    cache = FrameCache(max_bytes=15, window=1)
    seg, rid, _ = cache.acquire(START, 20)
    reader = cache.read(seg, rid)
    cache.add(seg, frame(0))
    assert next(reader).data == frame(0).data
    reader.close()  # the call went away
    assert cache.add(seg, frame(1)) is False


def test_a_failed_build_fails_its_readers_and_is_not_reused() -> None:
    cache = FrameCache(1 << 20)
    seg, _, _ = cache.acquire(START, 20)
    _, rid, _ = cache.acquire(START, 20)
    cache.add(seg, frame(0))
    cache.finish(seg, error=RuntimeError("disk I/O error"))
    with pytest.raises(SegmentFailed, match="disk I/O error"):
        list(cache.read(seg, rid))
    assert cache.acquire(START, 20)[2]


def test_a_reader_whose_call_ended_stops_waiting() -> None:
    cache = FrameCache(1 << 20)
    seg, rid, _ = cache.acquire(START, 20)
    active = [True]
    got = []
    t = threading.Thread(
        target=lambda: got.extend(cache.read(seg, rid, is_active=lambda: active[0]))
    )
    t.start()
    active[0] = False
    t.join(5)
    assert not t.is_alive() and got == [] and not seg.readers


def test_frames_past_the_memory_budget_spill_to_disk(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=25, spill_bytes=1000, spill_dir=tmp_path)
    seg, rid, _ = cache.acquire(START, 20)
    for i in range(6):
        assert cache.add(seg, frame(i))
    cache.finish(seg, commits=True)
    # two frames in memory, four on disk; still cached, whole
    counters = cache.counters()
    assert counters["frame_cache_bytes"] == 20 and counters["frame_cache_disk_bytes"] == 40
    assert cache.stats["frames_spilled"] == 4 and seg.cached
    assert list(tmp_path.iterdir()) == []  # the spill file has no name
    expected = [frame(i) for i in range(6)]
    assert list(cache.read(seg, rid)) == expected
    again, rid2, build = cache.acquire(START, 20)
    assert again is seg and not build
    assert list(cache.read(again, rid2)) == expected


def test_a_large_segment_told_not_to_spill_stays_in_memory_then_leaves(tmp_path: Path) -> None:
    # The initial copy's stretches: large, but never written to the spill,
    # however much room it has; cached while memory allows, then read once.
    cache = FrameCache(max_bytes=25, spill_bytes=1000, spill_dir=tmp_path)
    seg, rid, _ = cache.acquire(START, 20)
    reader = cache.read(seg, rid)
    for i in range(2):
        assert cache.add(seg, frame(i), backpressure=False, large=True, spill=False)
    assert seg.cached and cache.counters()["frame_cache_bytes"] == 20
    cache.add(seg, frame(2), backpressure=False, large=True, spill=False)
    assert not seg.cached and cache.stats["segments_overflowed"] == 1
    cache.finish(seg)
    assert [f.data for f in reader] == [frame(i).data for i in range(3)]
    assert cache.stats["frames_spilled"] == 0 and seg.spill is None
    counters = cache.counters()
    assert counters["frame_cache_bytes"] == 0 and counters["frame_cache_disk_bytes"] == 0
    # The same segment allowed to spill goes to disk at once, as large ones do.
    other, rid2, _ = cache.acquire((*START[:-1], 30), 40)
    cache.add(other, frame(3), backpressure=False, large=True)
    cache.finish(other)
    assert cache.counters()["frame_cache_disk_bytes"] == 10 and other.cached
    assert [f.data for f in cache.read(other, rid2)] == [frame(3).data]


def test_past_both_budgets_a_segment_stops_being_cached(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=15, spill_bytes=25, spill_dir=tmp_path)
    seg, rid, _ = cache.acquire(START, 20)
    reader = cache.read(seg, rid)
    got = []
    for i in range(5):
        cache.add(seg, frame(i), backpressure=False)
    assert not seg.cached and cache.counters()["frame_cache_disk_bytes"] == 0
    cache.finish(seg)
    got = [f.data for f in reader]
    assert got == [frame(i).data for i in range(5)]  # its reader still gets every frame


def test_evicting_a_spilled_segment_frees_the_disk_budget(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=10, spill_bytes=40, spill_dir=tmp_path)
    first, _, _ = cache.acquire(START, 20)
    for i in range(4):
        cache.add(first, frame(i))
    cache.finish(first)
    assert cache.counters()["frame_cache_disk_bytes"] == 30
    second, _, _ = cache.acquire((*START[:-1], 20), 30)
    for i in range(4):
        cache.add(second, frame(i))
    cache.finish(second)
    assert not first.cached and second.cached
    assert cache.counters()["frame_cache_disk_bytes"] == 30


def test_large_segments_go_to_disk_and_leave_memory_to_live_ones(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=1000, spill_bytes=1000, spill_dir=tmp_path)
    boot, rid, _ = cache.acquire(START, 20)
    for i in range(3):
        cache.add(boot, frame(i), large=True)
    cache.finish(boot)
    live, _, _ = cache.acquire((*START[:-1], 20), 21)
    cache.add(live, frame(9), backpressure=False)
    cache.finish(live)
    counters = cache.counters()
    assert counters["frame_cache_disk_bytes"] == 30 and counters["frame_cache_bytes"] == 10
    assert list(cache.read(boot, rid)) == [frame(i) for i in range(3)]
    # without a disk budget a large segment stays in memory
    plain = FrameCache(max_bytes=1000)
    seg, _, _ = plain.acquire(START, 20)
    plain.add(seg, frame(0), large=True)
    assert plain.counters()["frame_cache_bytes"] == 10


def test_a_disk_that_refuses_the_spill_leaves_frames_in_memory(tmp_path: Path) -> None:
    gone = tmp_path / "no-such-directory"
    cache = FrameCache(max_bytes=1000, spill_bytes=1000, spill_dir=gone)
    seg, rid, _ = cache.acquire(START, 20)
    for i in range(3):
        assert cache.add(seg, frame(i), backpressure=False, large=True)
    cache.finish(seg)
    assert [f.data for f in cache.read(seg, rid)] == [frame(i).data for i in range(3)]
    assert cache.spill_bytes == 0 and cache.stats["spill_failures"] == 1
    assert cache.counters()["frame_cache_disk_bytes"] == 0


def test_spilling_leaves_the_store_its_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spill shares the store's disk: it stops while it would leave less
    than SPILL_KEEP_FREE_BYTES free there, so the room freed after a full
    disk goes to the store, which must commit to resume, not to frames."""
    free = {"bytes": framecache.SPILL_KEEP_FREE_BYTES + 25}
    monkeypatch.setattr(framecache, "free_bytes", lambda path: free["bytes"])
    cache = FrameCache(max_bytes=15, spill_bytes=1000, spill_dir=tmp_path)
    seg, rid, _ = cache.acquire(START, 20)
    reader = cache.read(seg, rid)
    for i in range(5):
        cache.add(seg, frame(i), backpressure=False)
        if cache.stats["frames_spilled"]:
            free["bytes"] -= 10  # what the spill took
    # one frame in memory, two spilled, then the floor: the segment leaves the cache
    assert cache.stats["frames_spilled"] == 2 and not seg.cached
    cache.finish(seg)
    assert [f.data for f in reader] == [frame(i).data for i in range(5)]


def test_spilled_frames_are_written_behind_once_their_room_fills(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=1000, spill_bytes=1000, spill_dir=tmp_path, spill_behind_bytes=25)
    seg, rid, _ = cache.acquire(START, 20)
    for i in range(2):
        cache.add(seg, frame(i), large=True)
    # both wait in memory: reserved on disk, nothing written yet
    counters = cache.counters()
    assert counters["frame_cache_behind_bytes"] == 20 and counters["frame_cache_disk_bytes"] == 20
    assert cache.stats["frames_spilled"] == 0 and seg.spill is None
    cache.add(seg, frame(2), large=True)  # no room for a third: the oldest is written
    assert cache.stats["frames_spilled"] == 1
    assert isinstance(seg.frames[0], framecache.Spilled)
    assert [isinstance(f, SharedFrame) for f in seg.frames] == [False, True, True]
    cache.add(seg, frame(3, size=40), large=True)  # larger than the whole room: written at once
    assert cache.stats["frames_spilled"] == 2 and isinstance(seg.frames[3], framecache.Spilled)
    assert cache.counters()["frame_cache_behind_bytes"] == 20
    cache.finish(seg)
    expected = [frame(0), frame(1), frame(2), frame(3, size=40)]
    assert list(cache.read(seg, rid)) == expected
    again, rid2, build = cache.acquire(START, 20)
    assert again is seg and not build and list(cache.read(again, rid2)) == expected


def test_a_segment_leaving_the_cache_takes_its_frames_behind_along(tmp_path: Path) -> None:
    cache = FrameCache(max_bytes=0, spill_bytes=40, spill_dir=tmp_path, spill_behind_bytes=100)
    first, rid, _ = cache.acquire(START, 20)
    reader = cache.read(first, rid)
    for i in range(3):
        cache.add(first, frame(i), large=True)
    cache.finish(first)
    second, _, _ = cache.acquire((*START[:-1], 20), 30)
    for i in range(3):
        cache.add(second, frame(10 + i), large=True)  # past the disk budget: evicts `first`
    cache.finish(second)
    assert not first.cached and second.cached
    counters = cache.counters()
    assert counters["frame_cache_behind_bytes"] == 30 and counters["frame_cache_disk_bytes"] == 30
    assert all(s is second for s, _ in cache._pending)
    # the evicted segment's reader still gets it whole, from memory; none of it was written
    assert list(reader) == [frame(i) for i in range(3)]
    assert cache.stats["frames_spilled"] == 0 and first.spill is None


def test_a_write_behind_that_fails_leaves_the_segment_whole_in_memory(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    cache = FrameCache(max_bytes=0, spill_bytes=1000, spill_dir=spill_dir, spill_behind_bytes=15)
    seg, rid, _ = cache.acquire(START, 20)
    cache.add(seg, frame(0), large=True)
    spill_dir.rmdir()  # the spill's directory is gone when the write comes
    cache.add(seg, frame(1), large=True)
    assert cache.stats["spill_failures"] == 1 and cache.spill_bytes == 0 and not seg.cached
    cache.add(seg, frame(2), large=True, backpressure=False)
    cache.finish(seg)
    assert list(cache.read(seg, rid)) == [frame(i) for i in range(3)]
    counters = cache.counters()
    assert counters["frame_cache_behind_bytes"] == 0 and counters["frame_cache_disk_bytes"] == 0
