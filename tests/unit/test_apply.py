"""Applying source transactions to the store, on pgoutput bytes captured from
a real server (tests/fixtures/pgoutput), through the ReplaySource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prism.fabric.payload import decode_row, encode_key
from prism.wrapper.apply import Applier
from prism.wrapper.sources.base import RelationInfo, RowChange, SourceTransaction
from prism.wrapper.sources.postgres.replay import ReplaySource
from prism.wrapper.store import Store, StoreReader
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer
from support.configs import offline_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pgoutput"


def cfg() -> Any:
    return offline_config(
        [
            {"name": "public.types_t", "vector_column": "c_vec", "vector_dim": 3},
            {"name": "public.docs", "text_columns": ["body"]},
            {"name": "public.full_t", "key_columns": ["id"]},
        ]
    )


def shapes_from(replay: list[SourceTransaction], config: Any) -> dict[str, TableShape]:
    """Each table as the stream first described it."""
    rel: dict[str, RelationInfo] = {}
    for t in replay:
        for name, info in t.relations.items():
            rel.setdefault(name, info)
    keys = {"public.types_t": ("id",), "public.docs": ("id",), "public.full_t": ("id",)}
    return {
        name: TableShape(
            name=name,
            columns=tuple((c.name, c.type_name) for c in rel[name].columns),
            key_columns=keys[name],
            config=config.table(name),
        )
        for name in keys
    }


@pytest.fixture(params=["binary", "text"])
def replay(request: pytest.FixtureRequest) -> list[SourceTransaction]:
    src = ReplaySource.from_file(FIXTURES / f"{request.param}.bin", request.param == "binary")
    return [t for t in src.transactions() if t is not None]


def live(store: Store, table: str) -> dict[str, dict[str, Any]]:
    reader = StoreReader(store.path)
    try:
        with reader.snapshot():
            return {
                r.key: decode_row(r.payload or b"")
                for r in reader.changes_since(table, 0, live_only=True)
            }
    finally:
        reader.close()


def stored_old_keys(store: Store, table: str) -> dict[str, str | None]:
    reader = StoreReader(store.path)
    try:
        with reader.snapshot():
            return {r.key: r.old_key for r in reader.changes_since(table, 0, live_only=True)}
    finally:
        reader.close()


def test_replayed_stream_lands_in_the_store(
    tmp_path: Path, replay: list[SourceTransaction]
) -> None:
    config = cfg()
    shapes = shapes_from(replay, config)
    asked: list[tuple[str, str]] = []

    def missing(table: str, column: str) -> Any:
        asked.append((table, column))
        return "default-for-old-rows"

    applier = Applier(shapes, Vectorizer(config, {"t": b"s" * 32}), missing)
    store = Store(tmp_path / "s.sqlite3", "normal")
    store.reset("stream")
    docs_after: list[dict[str, dict[str, Any]]] = []
    old_keys_after: list[dict[str, str | None]] = []
    for t in replay:
        with store.transaction() as txn:
            applier.apply(txn, t)
            txn.set_source_position(t.end_lsn, t.commit_time_us)
        docs_after.append(live(store, "public.docs"))
        old_keys_after.append(stored_old_keys(store, "public.docs"))

    # T3..T5: the TOASTed body survives an update that did not send it ('u'),
    # and a primary-key change moves the row (old key gone, body kept).
    body = docs_after[2][encode_key([1])]["body"]
    assert isinstance(body, str) and len(body) > 8000
    assert docs_after[3][encode_key([1])] == {"id": 1, "body": body, "n": 1}
    assert set(docs_after[4]) == {encode_key([2])}
    assert docs_after[4][encode_key([2])]["body"] == body
    # The moved row's image remembers the key it replaced (the change feed's
    # old_key); the other images replaced none.
    assert old_keys_after[4] == {encode_key([2]): encode_key([1])}
    assert set(old_keys_after[3].values()) == {None}
    assert applier.counters["toast_filled"] >= 2 and applier.counters["toast_unfilled"] == 0

    # The ALTERs mid-stream: existing row 1 gets the added column's value for
    # old rows, and loses the dropped one.
    assert asked == [("public.types_t", "extra")]
    types = live(store, "public.types_t")
    assert set(types) == {encode_key([1]), encode_key([3]), encode_key([4])}
    assert types[encode_key([1])]["extra"] == "default-for-old-rows"
    assert "c_varchar" not in types[encode_key([1])]
    assert types[encode_key([3])]["extra"] == "added"
    # Truncates leave tombstones only; REPLICA IDENTITY FULL rows keyed by id.
    assert live(store, "public.docs") == {}
    assert live(store, "public.full_t") == {}
    assert store.meta.source_position == replay[-1].end_lsn
    # Every change got its own position; heads only grow.
    assert store.meta.head >= sum(len(t.changes) for t in replay)


def test_changes_of_unconfigured_tables_are_ignored(
    tmp_path: Path, replay: list[SourceTransaction]
) -> None:
    config = cfg()
    shapes = shapes_from(replay, config)
    del shapes["public.full_t"]
    applier = Applier(shapes, Vectorizer(config, {"t": b"s" * 32}), lambda t, c: None)
    store = Store(tmp_path / "s.sqlite3", "normal")
    store.reset("stream")
    for t in replay:
        with store.transaction() as txn:
            applier.apply(txn, t)
    assert store.row_counts().get("public.full_t") is None


def _stored(store: Store) -> list[tuple[Any, ...]]:
    return list(store.stored())


@pytest.mark.parametrize("group_size", [1, 3, 100])
def test_prepared_ahead_stores_exactly_what_applying_alone_does(
    tmp_path: Path, group_size: int
) -> None:
    """Applier.prepare (on the decoding thread) must not change what is
    stored: same rows, same positions, same bytes, TOAST fills and schema
    changes included, whatever the grouping."""
    config = cfg()
    stores = []
    for mode in ("alone", "prepared"):
        replay = [
            t
            for t in ReplaySource.from_file(FIXTURES / "binary.bin", True).transactions()
            if t is not None
        ]
        applier = Applier(
            shapes_from(replay, config), Vectorizer(config, {"t": b"s" * 32}), lambda t, c: 1
        )
        store = Store(tmp_path / f"{mode}-{group_size}.sqlite3", "normal")
        store.reset("stream")
        for lo in range(0, len(replay), group_size):
            group = replay[lo : lo + group_size]
            prepared = [applier.prepare(t) for t in group] if mode == "prepared" else None
            with store.transaction() as txn:
                applier.apply_group(txn, group, prepared)
        if mode == "prepared":
            assert applier.counters["toast_filled"] >= 2  # the store's part still ran
        stores.append(_stored(store))
        store.close()
    assert stores[0] == stores[1] and len(stores[0]) > 3


def test_a_key_change_then_an_update_in_one_group_keeps_the_old_key(tmp_path: Path) -> None:
    # Two transactions applied as one group: 1 -> 2 (a key change), then an
    # update of 2. The stored image of 2 still says it replaced 1, and a
    # plain update of another row replaced nothing.
    config = offline_config([{"name": "public.k"}])
    shape = TableShape(
        name="public.k",
        columns=(("id", "int4"), ("v", "text")),
        key_columns=("id",),
        config=config.table("public.k"),
    )
    applier = Applier({"public.k": shape}, Vectorizer(config, {"t": b"s" * 32}), lambda t, c: None)
    store = Store(tmp_path / "s.sqlite3", "normal")
    store.reset("stream")
    moved = SourceTransaction(
        1, 10, 11, 1, [RowChange("public.k", "update", {"id": 2, "v": "a"}, {"id": 1})]
    )
    updated = SourceTransaction(
        2,
        12,
        13,
        2,
        [
            RowChange("public.k", "update", {"id": 2, "v": "b"}, None),
            RowChange("public.k", "insert", {"id": 3, "v": "c"}, None),
        ],
    )
    with store.transaction() as txn:
        applier.apply_group(txn, [moved, updated])
    assert stored_old_keys(store, "public.k") == {
        encode_key([2]): encode_key([1]),
        encode_key([3]): None,
    }
    assert live(store, "public.k") == {
        encode_key([2]): {"id": 2, "v": "b"},
        encode_key([3]): {"id": 3, "v": "c"},
    }
    store.close()
