"""The store writer (wrapper/committer.py): a group is written on the
submitting thread when the writer was idle, on the writer's thread otherwise,
with the same result; a failure on either thread is raised to the pipeline.
On pgoutput captured from a real server (tests/fixtures/pgoutput)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from prism.wrapper import committer as committer_mod
from prism.wrapper.apply import Applier
from prism.wrapper.committer import Committer
from prism.wrapper.errors import WrapperError
from prism.wrapper.sources.base import SourceTransaction
from prism.wrapper.sources.postgres.replay import ReplaySource
from prism.wrapper.store import Store
from prism.wrapper.vectorize import Vectorizer
from tests.unit.test_apply import FIXTURES, cfg, live, shapes_from


@pytest.fixture
def replay() -> list[SourceTransaction]:
    src = ReplaySource.from_file(FIXTURES / "binary.bin", True)
    return [t for t in src.transactions() if t is not None]


def applier_for(replay: list[SourceTransaction]) -> Applier:
    config = cfg()
    return Applier(
        shapes_from(replay, config), Vectorizer(config, {"t": b"s" * 32}), lambda *_: "old"
    )


def plain(rows: dict[str, dict[str, Any]]) -> str:
    """The rows as text, sorted: arrays compare whole, NaN equals NaN."""
    return repr(
        sorted(
            (k, sorted((c, v.tolist() if hasattr(v, "tolist") else v) for c, v in row.items()))
            for k, row in rows.items()
        )
    )


def run(tmp_path: Path, name: str, replay: list[SourceTransaction], applier: Any) -> Committer:
    store = Store(tmp_path / f"{name}.sqlite3", "normal")
    store.reset("stream")
    committer = Committer(store, applier)
    for stx in replay:
        committer.submit([stx], [applier.prepare(stx)])
    committer.stop()
    return committer


def test_an_idle_writer_has_the_group_written_on_the_submitting_thread(
    tmp_path: Path, replay: list[SourceTransaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    applier = applier_for(replay)
    writers: list[str] = []
    apply_group = applier.apply_group

    def spy(*args: Any) -> int:
        writers.append(threading.current_thread().name)
        return apply_group(*args)

    monkeypatch.setattr(applier, "apply_group", spy)
    monkeypatch.setattr(committer_mod, "INLINE_AFTER_IDLE_S", 0.0)
    inline = run(tmp_path, "inline", replay, applier)
    assert inline.inline_commits == inline.commits == len(replay)
    assert set(writers) == {threading.current_thread().name}
    assert inline.durable.position == replay[-1].end_lsn
    assert inline.durable.transactions == len(replay)

    # Never idle long enough: every group goes to the writer's thread, and
    # the store ends up the same.
    writers.clear()
    monkeypatch.setattr(committer_mod, "INLINE_AFTER_IDLE_S", 1e12)
    queued = run(tmp_path, "queued", replay, applier_for(replay))
    assert queued.inline_commits == 0 and queued.commits >= 1
    assert queued.durable.position == replay[-1].end_lsn
    for table in ("public.docs", "public.types_t", "public.full_t"):
        assert plain(live(inline._store, table)) == plain(live(queued._store, table))


def test_a_large_group_goes_to_the_writer_thread_even_when_idle(
    tmp_path: Path, replay: list[SourceTransaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_mod, "INLINE_AFTER_IDLE_S", 0.0)
    monkeypatch.setattr(committer_mod, "INLINE_MAX_CHANGES", 0)
    committer = run(tmp_path, "large", replay, applier_for(replay))
    assert committer.inline_commits == 0
    assert committer.durable.position == replay[-1].end_lsn


def test_a_failed_write_on_the_submitting_thread_is_the_writers_failure(
    tmp_path: Path, replay: list[SourceTransaction], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(committer_mod, "INLINE_AFTER_IDLE_S", 0.0)
    applier = applier_for(replay)

    def broken(*_: Any) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(applier, "apply_group", broken)
    store = Store(tmp_path / "s.sqlite3", "normal")
    store.reset("stream")
    committer = Committer(store, applier)
    with pytest.raises(WrapperError, match="disk on fire"):
        committer.submit([replay[0]], [applier.prepare(replay[0])])
    # Raised again by every later call, and the writer's thread has ended.
    with pytest.raises(WrapperError, match="disk on fire"):
        committer.check()
    with pytest.raises(WrapperError, match="disk on fire"):
        committer.stop()
    assert not committer._thread.is_alive()
    # Nothing of the failed group is in the store: it rolled back whole.
    assert store.meta.source_position == 0
