"""The Write handler's pure steps: wrapper/writeplan.py's plan() (which
value of a write is the vector the frames will seal), WriteExecutor's
sealing of that vector ahead while the statement runs (wrapper/preseal.py:
that vector only, once), and a replayed request's wait for its first
write's marker in a real store."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errorkinds import ErrorKind
from prism.fabric.payload import encode_row
from prism.wrapper import writes as writes_module
from prism.wrapper.groupcommit import Outcome
from prism.wrapper.preseal import Presealed
from prism.wrapper.store import Store, StoreReader
from prism.wrapper.tables import TableShape
from prism.wrapper.writeplan import Float4Array, WriteError, plan
from prism.wrapper.writes import WriteExecutor
from support.configs import offline_config

CFG = offline_config(
    [{"name": "public.items", "vector_column": "emb", "vector_dim": 3, "writable": True}]
)
SHAPES = {
    "public.items": TableShape(
        "public.items",
        (("id", "int8"), ("emb", "_float4"), ("other", "_float4"), ("note", "text")),
        ("id",),
        CFG.table("public.items"),
    )
}


def _op(kind: int, key: dict[str, Any], data: dict[str, Any]) -> pb.WriteOp:
    return pb.WriteOp(
        kind=kind,
        table="items",
        key=encode_row(key),
        data=encode_row(data) if data else b"",
    )


@pytest.mark.parametrize("kind", [pb.UPSERT, pb.UPDATE])
def test_the_vector_is_the_vector_columns_value_only(kind: int) -> None:
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)  # the same length, another column
    p = plan(CFG, SHAPES, _op(kind, {"id": 1}, {"emb": emb, "other": other}), "")
    assert p.vector is not None and p.vector.tolist() == emb.tolist()
    # Both still go to the database as float4[].
    assert sum(isinstance(v, Float4Array) for v in p.params) == 2


def test_no_vector_when_the_write_leaves_it_out_or_sends_null() -> None:
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)
    assert plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"other": other}), "").vector is None
    assert plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": None}), "").vector is None
    assert plan(CFG, SHAPES, _op(pb.DELETE, {"id": 1}, {}), "").vector is None


def test_a_list_of_numbers_is_the_vector_in_float4() -> None:
    p = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": [1, 2.5, -3]}), "")
    assert p.vector is not None and p.vector.dtype == np.float32
    assert p.vector.tolist() == [1.0, 2.5, -3.0]


def test_a_vector_of_the_wrong_length_is_refused_naming_the_column() -> None:
    with pytest.raises(WriteError, match="emb"):
        plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": [1.0, 2.0]}), "")


def test_sealed_ahead_is_the_vector_only_and_once_when_the_statement_is_retried() -> None:
    executor = WriteExecutor.__new__(WriteExecutor)  # _ahead needs only its Presealed
    executor.presealed = Presealed()
    matrix = np.eye(3, dtype=np.float32)
    executor.presealed.used("public.items", matrix)
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)
    planned = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": emb, "other": other}), "")
    make = executor._ahead([planned])
    assert make is not None
    make()
    make()  # a conflict ran the statement again
    assert executor.presealed.made == 1
    assert executor.presealed.take(matrix, [other.tobytes()]) is None
    (product,) = executor.presealed.take(matrix, [emb.tobytes()]) or []
    assert product.tolist() == emb.tolist()


def test_nothing_is_sealed_ahead_for_a_table_no_frame_sealed_yet() -> None:
    executor = WriteExecutor.__new__(WriteExecutor)
    executor.presealed = Presealed()
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    planned = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": emb}), "")
    assert executor._ahead([planned]) is None


def _executor_on(path: Path) -> WriteExecutor:
    executor = WriteExecutor.__new__(WriteExecutor)  # _position needs only its store
    executor.store = Store(path, "normal")
    executor.store.reset("s1")
    return executor


def test_a_replay_finds_a_marker_that_reaches_the_store_late(tmp_path: Path) -> None:
    """A replayed request waits for its first write's marker. One the stream
    announced before the replay registered is found in SQLite, and so is one
    SQLite took only later (its COMMIT failed after the row log's sync and
    the next commit wrote it): looked for again while waiting, not only once."""
    executor = _executor_on(tmp_path / "store.sqlite3")
    try:
        replay = Outcome(event_id="e-first", affected=(), replayed=True)
        unused: concurrent.futures.Future[int] = concurrent.futures.Future()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            got = pool.submit(executor._position, replay, unused, 5.0)
            time.sleep(0.4)
            assert not got.done()
            # Written into SQLite behind the store's back: announced to nobody.
            with sqlite3.connect(executor.store.path) as db:
                db.execute(
                    "INSERT INTO writes (event_id, request_id, position, stored_us) "
                    "VALUES ('e-first', 'r1', 42, 0)"
                )
            assert got.result(timeout=5) == 42
            assert time.monotonic() - started < 4.0  # the lone look would wait all 5 s
        # Nobody waits for it any more.
        assert "e-first" not in executor.store.write_positions._waiting
    finally:
        executor.store.close()


def test_a_replay_wait_looks_on_one_connection_and_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The looks of one wait (every REPLAY_RECHECK_S) share one read-only
    connection, which the wait closes however it ends."""
    opened: list[StoreReader] = []
    closed: list[StoreReader] = []

    class Counted(StoreReader):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            opened.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(writes_module, "StoreReader", Counted)
    monkeypatch.setattr(writes_module, "REPLAY_RECHECK_S", 0.05)
    executor = _executor_on(tmp_path / "store.sqlite3")
    try:
        replay = Outcome(event_id="e-lost", affected=(), replayed=True)
        unused: concurrent.futures.Future[int] = concurrent.futures.Future()
        with pytest.raises(WriteError):
            executor._position(replay, unused, 0.5)
        assert len(opened) == 1 and closed == opened
    finally:
        executor.store.close()


def test_a_replay_whose_marker_never_comes_is_lagging(tmp_path: Path) -> None:
    executor = _executor_on(tmp_path / "store.sqlite3")
    try:
        replay = Outcome(event_id="e-lost", affected=(), replayed=True)
        unused: concurrent.futures.Future[int] = concurrent.futures.Future()
        with pytest.raises(WriteError, match="e-lost") as err:
            executor._position(replay, unused, 0.6)
        assert err.value.kind == ErrorKind.LAGGING
        assert not executor.store.write_positions._waiting
    finally:
        executor.store.close()


def test_a_replay_wait_outlives_a_failed_store_read_and_leaves_no_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = _executor_on(tmp_path / "store.sqlite3")
    with sqlite3.connect(executor.store.path) as db:
        db.execute(
            "INSERT INTO writes (event_id, request_id, position, stored_us) "
            "VALUES ('e-first', 'r1', 7, 0)"
        )
    real = StoreReader.write_position
    calls: list[str] = []

    def locked_once(reader: StoreReader, event_id: str) -> int | None:
        calls.append(event_id)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(reader, event_id)

    monkeypatch.setattr(StoreReader, "write_position", locked_once)
    try:
        replay = Outcome(event_id="e-first", affected=(), replayed=True)
        unused: concurrent.futures.Future[int] = concurrent.futures.Future()
        assert executor._position(replay, unused, 5.0) == 7
        assert len(calls) == 2
        assert not executor.store.write_positions._waiting
    finally:
        executor.store.close()
