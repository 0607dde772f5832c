"""path= persistence: entries survive a restart, and a real kill -9 of a
writing process loses at most the entry in flight and never corrupts the
file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prism.cache import MiniLMEmbedder, PrismCache, StoreError
from prism.cache.embedder import HashedEmbedder
from support.cachefix import Clock

WRITER = r"""
import sys
from prism.cache import PrismCache
from prism.cache.embedder import HashedEmbedder
c = PrismCache.build(tenant_id="acme", llm_model="m", path=sys.argv[1], embedder=HashedEmbedder())
i = int(sys.argv[2])
while True:
    c.put(f"question number {i} about item {i * 7}", "answer " + "x" * 2000 + str(i), tags=["t"])
    print(i, flush=True)  # printed only after the entry's transaction committed
    i += 1
"""


def test_entries_survive_a_restart(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    clock = Clock()
    c = PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, path=path, clock=clock)
    c.put("How do I reset my password?", "Use the link.", tags=["account"])
    c.put("What are your opening hours?", {"text": "9-5", "days": [1, 2, 3]}, ttl_s=100)
    c.put("Short-lived?", "yes", ttl_s=10)
    c.close()
    clock.now += 50
    d = PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, path=path, clock=clock)
    assert len(d) == 2  # the expired one is not loaded
    assert d.lookup("How can I reset my password?").response == "Use the link."  # type: ignore[union-attr]
    assert d.lookup("what are your opening hours").response == {"text": "9-5", "days": [1, 2, 3]}  # type: ignore[union-attr]
    assert d.invalidate(tag="account") == 1
    d.put("New one?", "new")
    d.close()
    e = PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, path=path, clock=clock)
    assert e.lookup("How do I reset my password?") is None
    assert e.lookup("New one?").response == "new"  # type: ignore[union-attr]
    clock.now += 60
    assert e.lookup("What are your opening hours?") is None  # absolute TTL kept across restarts


def test_another_embedder_is_refused(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, path=path).close()
    with pytest.raises(StoreError, match="embedder"):
        PrismCache.build(tenant_id="acme", llm_model="m", embedder=HashedEmbedder(), path=path)


def test_not_a_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        PrismCache.build(tenant_id="acme", llm_model="m", embedder=HashedEmbedder(), path=path)


def test_unserializable_answer_is_returned_but_not_stored(tmp_path: Path) -> None:
    c = PrismCache.build(
        tenant_id="t", llm_model="m", embedder=HashedEmbedder(), path=tmp_path / "c.db"
    )
    obj = object()
    assert c.get_or_call(query="an object?", call_fn=lambda: obj) is obj
    assert len(c) == 0 and c.metrics().uncacheable == 1


@pytest.mark.parametrize("round_", range(3))
def test_kill_9_during_writes_loses_at_most_the_entry_in_flight(
    tmp_path: Path, round_: int
) -> None:
    path = tmp_path / "cache.db"
    start = 0
    committed: list[int] = []
    for kill in range(3):  # kill the same file's writer three times
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        want = 40 + 37 * round_ + 11 * kill
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            seen.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the next put is in flight
        proc.wait(10)
        # Lines still in the pipe were printed, so committed, before the kill.
        seen += [int(line) for line in proc.stdout.read().split()]
        committed += seen
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c = PrismCache.build(tenant_id="acme", llm_model="m", path=path, embedder=HashedEmbedder())
        have = {
            int(h.response.rsplit("x", 1)[1])  # type: ignore[union-attr]
            for h in (c.lookup(f"question number {i} about item {i * 7}") for i in committed)
            if h is not None
        }
        assert have == set(committed)  # every committed entry survived
        extra = len(c) - len(committed)
        assert 0 <= extra <= 1  # at most the one in flight (committed, not yet printed)
        start = max(committed) + 1 + extra
        if extra:
            committed.append(max(committed) + 1)
        c.close()


def test_a_failing_file_never_loses_the_callers_answer(tmp_path: Path) -> None:
    c = PrismCache.build(
        tenant_id="t", llm_model="m", embedder=HashedEmbedder(), path=tmp_path / "c.db"
    )
    c._store._db.close()  # type: ignore[union-attr]  # the file's connection breaks under it
    assert c.get_or_call(query="still answered?", call_fn=lambda: "yes") == "yes"
    assert len(c) == 0 and c.metrics().uncacheable == 1
    assert c.lookup("still answered?") is None  # memory did not get ahead of the file


def test_two_rows_of_one_question_reload_as_the_newer(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=HashedEmbedder(), path=path)
    c.put("What is the refund policy?", "old answer")
    c.put("Where are you?", "Leeds")
    c.close()
    # What a crash between inserting a question's new row and deleting its old one leaves.
    with sqlite3.connect(path) as db:
        (tbl,) = db.execute("SELECT tbl FROM prism_cache_meta").fetchone()
        db.execute(
            f"INSERT INTO {tbl} SELECT id + 100, scope, exact, query, '\"new answer\"', tags,"
            f" created, expires, prompt_tokens, completion_tokens, estimated, size, codes, states"
            f" FROM {tbl} WHERE query = 'What is the refund policy?'"
        )
    d = PrismCache.build(tenant_id="t", llm_model="m", embedder=HashedEmbedder(), path=path)
    assert len(d) == 2
    assert d.lookup("What is the refund policy?").response == "new answer"  # type: ignore[union-attr]
    assert d.lookup("Where are you?").response == "Leeds"  # type: ignore[union-attr]
    d.close()
    with sqlite3.connect(path) as db:
        assert db.execute(f"SELECT count(*) FROM {tbl}").fetchone()[0] == 2
