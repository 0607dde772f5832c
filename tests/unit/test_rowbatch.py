"""Rows → what the store holds (wrapper/rowbatch.py, TableShape.key_of): the
batch encoder must store exactly what the per-row path would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.wrapper.rowbatch import RowEncoder, merge_hidden
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer
from prism.wrapper.vectorref import is_ref, resolve, resolve_vectors
from support.configs import offline_config


def _cfg(vector_in_rows: bool) -> Any:
    return offline_config(
        [
            {
                "name": "public.items",
                "vector_column": "emb",
                "vector_dim": 3,
                "vector_in_rows": vector_in_rows,
            }
        ]
    )


def _shape(cfg: Any) -> TableShape:
    return TableShape(
        "public.items",
        (("id", "int8"), ("title", "text"), ("emb", "_float4")),
        ("id",),
        cfg.table("public.items"),
    )


def _rows() -> list[dict[str, Any]]:
    return [
        {"id": 1, "title": "one", "emb": np.array([1, 0, 0], dtype=np.float32)},
        {"id": 2, "title": "two", "emb": [0.0, 2.0, 0.5]},  # a list: prepared to float32
        {"id": 3, "title": "no vector", "emb": None},
        {"id": 4, "title": "zero", "emb": np.zeros(3, dtype=np.float32)},
    ]


@pytest.mark.parametrize(
    "key",
    [0, 7, -3, 2**63 - 1, 2**70, -(2**70)],
)
def test_int_keys_take_a_short_cut_to_the_same_string(key: int) -> None:
    shape = _shape(_cfg(True))
    assert shape.key_of({"id": key}) == encode_key([key])


@pytest.mark.parametrize("key", [True, 2.0, "7", None])
def test_other_keys_go_through_encode_key(key: Any) -> None:
    shape = _shape(_cfg(True))
    assert shape.key_of({"id": key}) == encode_key([key])


def test_live_rows_are_keyed_vectorized_and_encoded_as_one_row_would_be() -> None:
    cfg = _cfg(True)
    vectorizer = Vectorizer(cfg, {"t": b"k" * 32})
    rows = _rows()
    batch = RowEncoder(vectorizer).live(_shape(cfg), rows, 42)
    assert batch.keys == [encode_key([i]) for i in (1, 2, 3, 4)]
    assert batch.commit_us == 42 and len(batch) == 4
    assert not isinstance(batch.hidden, list)  # no hidden column: nothing kept apart
    # Payloads are the rows with their vectors as float32.
    got = [decode_row(p) for p in batch.payloads if p is not None]
    assert [r["emb"].tolist() if r["emb"] is not None else None for r in got] == [
        [1.0, 0.0, 0.0],
        [0.0, 2.0, 0.5],
        None,
        [0.0, 0.0, 0.0],
    ]
    assert batch.payloads[0] == encode_row(rows[0])
    # Vectors: for the first two, references to the source vector in the
    # payload (which serving projects); none for a NULL or zero vector.
    assert batch.vectors[2] is None and batch.vectors[3] is None
    assert is_ref(batch.vectors[0]) and is_ref(batch.vectors[1])
    assert resolve(batch.payloads[0] or b"", batch.vectors[0] or b"") == (
        np.array([1, 0, 0], dtype="<f4").tobytes()
    )
    served, mask = resolve_vectors(
        [p or b"" for p in batch.payloads], batch.vectors, 3, vectorizer.matrix("public.items")
    )
    assert mask.tolist() == [True, True, False, False]
    one = Vectorizer(cfg, {"t": b"k" * 32}).vector_bytes("public.items", rows[0])
    assert one is not None
    np.testing.assert_allclose(served[0], np.frombuffer(one, dtype="<f4"), rtol=1e-6)
    assert vectorizer.missing == {("public.items", "null"): 1, ("public.items", "zero"): 1}


def test_a_hidden_column_is_stored_apart_and_merges_back() -> None:
    cfg = _cfg(False)
    rows = _rows()
    batch = RowEncoder(Vectorizer(cfg, {"t": b"k" * 32})).live(_shape(cfg), rows, 1)
    assert isinstance(batch.hidden, list)
    for row, payload, hidden in zip(rows, batch.payloads, batch.hidden, strict=True):
        assert payload is not None and hidden is not None
        served = decode_row(payload)
        assert "emb" not in served and served["title"] == row["title"]
        whole = merge_hidden(payload, hidden)
        assert set(whole) == {"id", "title", "emb"}
        want = row["emb"]
        got = whole["emb"]
        assert (got is None and want is None) or got.tolist() == list(want)
    # The vector is still made from the hidden column.
    assert batch.vectors[0] is not None


def test_changes_mix_images_and_tombstones_in_order() -> None:
    cfg = _cfg(False)
    enc = RowEncoder(Vectorizer(cfg, {"t": b"k" * 32}))
    rows = _rows()
    for r in rows:
        enc.vectorizer.prepare("public.items", r)
    batch = enc.changes(_shape(cfg), ["[1]", "[9]", "[2]"], [rows[0], None, rows[1]], [5, 6, 7])
    assert batch.keys == ["[1]", "[9]", "[2]"] and batch.commit_us == [5, 6, 7]
    assert batch.payloads[1] is None and batch.vectors[1] is None
    assert isinstance(batch.hidden, list) and batch.hidden[1] is None
    assert decode_row(batch.payloads[2] or b"")["title"] == "two"
    assert batch.vectors[0] is not None and batch.vectors[2] is not None


def test_batch_vector_checks_count_each_reason_once() -> None:
    cfg = _cfg(True)
    vectorizer = Vectorizer(cfg, {"t": b"k" * 32})
    f32 = np.float32
    rows: list[dict[str, Any]] = [
        {"emb": np.array([1, 2, 3], dtype=f32)},
        {"emb": np.array([np.nan, 0, 0], dtype=f32)},  # fast path, not finite
        {"emb": np.array([np.inf, 1, 1], dtype=f32)},
        {"emb": np.zeros(3, dtype=f32)},  # fast path, zero
        {"emb": np.array([1, 2], dtype=f32)},  # wrong dimension
        {"emb": "[1,2,3]"},  # pgvector text: the per-row path
        {"emb": ["x"]},
    ]
    out = vectorizer.vector_bytes_many("public.items", rows)
    assert [v is not None for v in out] == [True, False, False, False, False, True, False]
    assert out[0] == out[5]
    assert vectorizer.missing == {
        ("public.items", "not-finite"): 2,
        ("public.items", "zero"): 1,
        ("public.items", "wrong-dimension"): 1,
        ("public.items", "not-numeric"): 1,
    }
