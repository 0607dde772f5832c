"""Declared equality indexes and filtered reads over a replica
(driver/colindex.py, driver/lookup.py), on real sealed frames: the index
stays exact through upserts, deletes and value changes in every frame shape
(the bulk path and the in-order path), a bootstrap built aside and a warm
restart's rebuild; filtered exact search equals brute force over the
matching rows; the over-fetching search never returns fewer than k when k
match."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.driver.filters import Columns, compile_filter, norm
from prism.driver.follow import Batch
from prism.driver.index import IndexParams, exact_scores, normalize, query_grid, to_grid
from prism.driver.lookup import filtered_search, find_rows
from prism.driver.replica import Replica
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import DecodedFrame, build_frame, open_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.fabric.sealing import Sealer

SECRET = bytes(range(32))
TENANT = "acme"
DIM = 8
T = "public.items"
SUB = b"s" * 16
SEALER = Sealer(derive_epoch_keys(SECRET, TENANT, 0), DIM)
COLS = Columns(T, [("id", "int8"), ("cat", "text"), ("price", "numeric")])
SPEC = {T: (("cat", "text"), ("price", "numeric"))}
CATS = ["a", "b", "c", None]
RANGES = [
    ("cat", [(op, v) for op in ("lt", "lte", "gt", "gte") for v in ("a", "b", "bz", "")]),
    (
        "price",
        [(op, v) for op in ("lt", "lte", "gt", "gte") for v in (Decimal("1.5"), 2, Decimal("NaN"))],
    ),
]

# (key, op "U"/"D", cat, price, vector seed)
Change = tuple[int, str, str | None, Decimal | None, int]


def frame(changes: list[Change], seq: int = 1) -> DecodedFrame:
    keys = [encode_key([k]) for k, *_ in changes]
    payloads = [
        b"" if op == "D" else encode_row({"id": k, "cat": cat, "price": price})
        for k, op, cat, price, _ in changes
    ]
    vectors = np.array(
        [np.random.default_rng(s).normal(size=DIM) for *_, s in changes], np.float32
    ).reshape(len(changes), DIM)
    f = build_frame(
        sealer=SEALER,
        tenant_id=TENANT,
        stream_id="st",
        kind=pb.CHANGES,
        table=T,
        sequence=seq,
        commit_position=0,
        head_position=0,
        commit_time_us=0,
        keys=keys,
        ops="".join(op for _, op, *_ in changes).encode(),
        positions=list(range(1, len(changes) + 1)),
        vectors=vectors,
        vector_mask=np.array([op == "U" for _, op, *_ in changes], bool),
        payloads=payloads,
        vector_dim=DIM,
        subscription=SUB,
    )
    return open_frame(f, lambda _e: SEALER, tenant_id=TENANT, stream_id=None, subscription=SUB)


def empty(params: IndexParams | None = None) -> Replica:
    return Replica.for_tables(
        {T: (("id",), (), DIM)}, params or IndexParams(background=False), SPEC
    )


def check_index(rep: Replica) -> None:
    """Every value's look-up is exactly the rows holding it, each with the
    replica's current payload (the index hands `find` the payloads)."""
    t = rep.tables[T]
    assert t.columns is not None
    model: dict[Any, set[str]] = {}
    for k, p in t.payloads.items():
        model.setdefault(decode_row(p)["cat"], set()).add(k)
    for cat in CATS:
        want_rows = {k: t.payloads[k] for k in model.get(cat, set())}
        assert dict(t.columns.lookup("cat", [cat])) == want_rows
    both = {k: t.payloads[k] for k in model.get(CATS[0], set()) | model.get(CATS[1], set())}
    assert dict(t.columns.lookup("cat", CATS[:2])) == both
    assert len(t.columns) == len(t.payloads)
    # Every range's look-up is exactly the rows the filter's predicate takes
    # (NULL in none; NaN above every number, as in PostgreSQL).
    for column, bounds in RANGES:
        for op, bound in bounds:
            pred = compile_filter({column: {op: bound}}, COLS).predicate
            want = {k for k, p in t.payloads.items() if pred(decode_row(p))}
            (r,) = compile_filter({column: {op: bound}}, COLS).range_lookups([column])
            got = t.columns.range_lookup(*r)
            assert got == {k: t.payloads[k] for k in want}, (column, op, bound)
            assert t.columns.range_size(*r) == len(
                {decode_row(t.payloads[k])[column] for k in want}
                if column == "cat"
                else {norm("numeric", decode_row(t.payloads[k])[column]) for k in want}
            )


changes = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.sampled_from("UUD"),
        st.sampled_from(CATS),
        st.sampled_from([None, Decimal("1.50"), Decimal("2"), Decimal("NaN")]),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(changes, min_size=1, max_size=6))
def test_index_stays_exact_through_any_frames(frames: list[list[Change]]) -> None:
    rep = empty()
    for i, ch in enumerate(frames):
        rep.apply_frames([frame(ch, i + 1)])
        check_index(rep)
    # A bootstrap's replica built aside carries the same (empty) indexes, and
    # a restored replica's rebuild files the same rows.
    fresh = Replica.empty_like(rep)
    assert fresh.tables[T].columns is not None and len(fresh.tables[T].columns) == 0
    restored = Replica.for_tables({T: (("id",), (), DIM)}, IndexParams(background=False))
    restored.tables[T].payloads.update(rep.tables[T].payloads)
    restored.attach_indexes(SPEC)
    check_index(restored)
    # Decimal 1.5 finds the rows holding 1.50; NaN finds NaN.
    t = rep.tables[T]
    assert t.columns is not None
    for value in (Decimal("1.5"), Decimal("NaN")):
        flt = compile_filter({"price": value}, COLS)
        want = sorted(
            k
            for k, p in t.payloads.items()
            if compile_filter({"price": value}, COLS).predicate(decode_row(p))
        )
        assert sorted(r["id"] for r in find_rows(t, flt, COLS, [], None)) == sorted(
            decode_row(t.payloads[k])["id"] for k in want
        )


def built(n: int, params: IndexParams) -> tuple[Replica, np.ndarray]:
    rep = empty(params)
    rng = np.random.default_rng(7)
    ch: list[Change] = [
        (i, "U", CATS[i % 4], Decimal(int(rng.integers(0, 100))), i) for i in range(n)
    ]
    for s in range(0, n, 500):
        rep.apply(Batch(False, "st", s + 500, s + 500, 0, [frame(ch[s : s + 500], s // 500 + 1)]))
    return rep, np.array([np.random.default_rng(i).normal(size=DIM) for i in range(n)])


def brute(
    rep: Replica, vecs: np.ndarray, q: np.ndarray, where: dict[str, Any], k: int
) -> list[str]:
    t = rep.tables[T]
    pred = compile_filter(where, COLS).predicate
    keys = [key for key, p in t.payloads.items() if pred(decode_row(p))]
    ids = [decode_row(t.payloads[key])["id"] for key in keys]
    # The index's documented score (prism.driver.index), computed here over
    # the matching rows alone: cosine of integer grid vectors, ties by key.
    assert t.index is not None
    grid, sq = to_grid(normalize(vecs[ids]), t.index.limit)
    qg, qq = query_grid(normalize(q), t.index.limit)
    s = exact_scores(grid @ qg, qq, sq)
    return sorted(keys, key=lambda key: (-s[keys.index(key)], key))[:k]


def test_filtered_exact_search_is_brute_force_over_the_matches() -> None:
    rep, vecs = built(3000, IndexParams(background=False))
    t = rep.tables[T]
    rng = np.random.default_rng(1)
    for where in (
        {"cat": "a"},
        {"price": {"lt": 10}},
        {"cat": {"in": ["b", "c"]}, "price": {"gte": 50}},
    ):
        flt = compile_filter(where, COLS)
        for _ in range(5):
            q = rng.normal(size=DIM).astype(np.float32)
            got = filtered_search(t, flt, normalize(q), 10, -1.0, exact=True)
            want = brute(rep, vecs, q, where, 10)
            assert [k for k, _ in got] == want
            pred = flt.predicate
            assert all(pred(decode_row(t.payloads[k])) for k, _ in got)


def test_partitioned_search_over_fetches_and_falls_back() -> None:
    params = IndexParams(exact_limit=1000, nlist=16, nprobe=2, rerank=20, background=False)
    rep, _ = built(4000, params)
    t = rep.tables[T]
    assert t.index is not None and t.index.kind == "ivf"
    rng = np.random.default_rng(2)
    # A rare match (1 row in 4000: price 100 does not occur, so use an id range)
    cols = Columns(T, [("id", "int8"), ("cat", "text"), ("price", "numeric")])
    for where in ({"cat": "a"}, {"price": {"lt": 3}}, {"id": {"in": [5, 17, 3999]}}):
        flt = compile_filter(where, cols)
        q = normalize(rng.normal(size=DIM).astype(np.float32))
        total = sum(1 for p in t.payloads.values() if flt.predicate(decode_row(p)))
        got = filtered_search(t, flt, q, 10, -1.0, exact=False)
        assert len(got) == min(10, total)
        assert all(flt.predicate(decode_row(t.payloads[k])) for k, _ in got)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)


def test_find_by_range_uses_the_index_and_equals_the_scan() -> None:
    """A range on an indexed column narrows the rows through the sorted
    index (fewer rows decoded than a scan), with the same answer as the
    predicate over every row, also combined with other predicates."""
    rep, _ = built(2000, IndexParams(background=False))
    t = rep.tables[T]
    from prism.driver import lookup

    for where in (
        {"price": {"gte": 10, "lt": 20}},
        {"price": {"gt": Decimal("95.5")}, "cat": {"ne": "a"}},
        {"cat": {"gt": "a", "lte": "b"}, "price": {"lt": 3}},
        {"price": {"lt": 1000}},  # nearly every value: a scan
    ):
        flt = compile_filter(where, COLS)
        keys, complete = lookup.candidates(t, flt)
        pred = flt.predicate
        want = sorted(decode_row(p)["id"] for p in t.payloads.values() if pred(decode_row(p)))
        got = [r["id"] for r in find_rows(t, flt, COLS, [("id", "int", False)], None)]
        assert got == want, where
        assert not complete
        if where["price"] == {"lt": 1000}:
            assert keys is None  # the range holds every value: no narrowing
        else:
            assert keys is not None and len(keys) < len(t.payloads) // 4, where
