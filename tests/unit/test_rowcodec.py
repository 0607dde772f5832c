"""The native row path (wrapper/fastrow.py, wrapper/_rowcodec.c) stores what
the Python path stores: for pgoutput tuples and binary COPY rows, the same
key, payload, hidden value and source vector, byte for byte; and it hands
back every row it must not encode. Over messages recorded from a real
PostgreSQL 16 (tests/fixtures/pgoutput) and over generated values of every
type it encodes. No server needed."""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pgoutput import load_messages

from prism.fabric.payload import decode_row
from prism.wrapper import fastrow
from prism.wrapper.rowbatch import RowEncoder
from prism.wrapper.sources.base import (
    ColumnInfo,
    EncodedRows,
    RelationInfo,
    RowChange,
    SourceTransaction,
)
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder
from prism.wrapper.sources.postgres.values import ColumnLoaders, dump_float4_array
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer
from prism.wrapper.vectorref import is_ref
from support.configs import offline_config

if fastrow._rowcodec is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("prism.wrapper._rowcodec is not built: CI must build and test it")
    pytest.skip("prism.wrapper._rowcodec not built here (no C compiler)", allow_module_level=True)


def config(tables: list[dict[str, Any]]) -> Any:
    return offline_config(tables)


def shape_of(cfg: Any, info: RelationInfo, key: tuple[str, ...]) -> TableShape:
    return TableShape(
        info.qualified,
        tuple((c.name, c.type_name) for c in info.columns),
        key,
        cfg.table(info.qualified),
    )


def python_image(
    cfg: Any, shape: TableShape, new: dict[str, Any]
) -> tuple[str, bytes, bytes | None, bytes | None]:
    """What the Python path stores of a decoded row (apply.py's prepare)."""
    vectorizer = Vectorizer(cfg, {t.tenant: b"k" * 32 for t in cfg.tables})
    row = dict(new)
    vectorizer.prepare(shape.name, row)
    payloads, hidden = RowEncoder.payloads(shape, [row])
    col = shape.config.vector_column
    vector = None
    if col is not None:
        vector = np.asarray(row[col], dtype="<f4").tobytes()
    h = hidden[0] if isinstance(hidden, list) else None
    assert payloads[0] is not None
    return shape.key_of(row), payloads[0], h, vector


def native_image(change: RowChange) -> tuple[str, bytes, bytes | None, bytes | None]:
    assert change.image is not None, "the native path declined a row it should take"
    im = change.image
    return im.key, im.payload, im.hidden, im.vector


# -- recorded messages -----------------------------------------------------------------


def recorded_shapes() -> tuple[Any, dict[str, TableShape]]:
    cfg = config([{"name": "public.docs"}, {"name": "public.full_t", "key_columns": ["id"]}])
    plain = PgOutputDecoder(binary=True)
    for m in load_messages("binary"):
        plain.decode(m)
    shapes = {}
    for rel in plain._relations.values():
        if rel.info.qualified in ("public.docs", "public.full_t"):
            shapes[rel.info.qualified] = shape_of(cfg, rel.info, ("id",))
    return cfg, shapes


def test_recorded_rows_are_stored_the_same_either_way() -> None:
    cfg, shapes = recorded_shapes()
    native = fastrow.NativeRows(shapes, enabled=True)
    fast = PgOutputDecoder(binary=True, native=native.spec)
    slow = PgOutputDecoder(binary=True)
    compared = declined = 0
    for m in load_messages("binary"):
        a, b = fast.decode(m), slow.decode(m)
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        for ca, cb in zip(a.changes, b.changes, strict=True):
            if not isinstance(ca, RowChange) or ca.table not in shapes or ca.op == "delete":
                assert ca == cb
                continue
            assert isinstance(cb, RowChange) and cb.new is not None
            assert ca.old == cb.old
            if ca.image is None:  # handed back: the Python path decoded it, the same way
                declined += 1
                assert ca.new == cb.new
                continue
            assert ca.new is None
            assert native_image(ca) == python_image(cfg, shapes[ca.table], cb.new)
            compared += 1
    assert compared >= 4
    # docs' unchanged TOAST body ('u') is handed back.
    assert declined >= 1


def test_tables_with_a_type_the_codec_lacks_take_the_python_path() -> None:
    cfg = config([{"name": "public.types_t"}])
    plain = PgOutputDecoder(binary=True)
    for m in load_messages("binary"):
        plain.decode(m)
    info = next(r.info for r in plain._relations.values() if r.info.qualified == "public.types_t")
    native = fastrow.NativeRows({info.qualified: shape_of(cfg, info, ("id",))}, enabled=True)
    assert native.spec(info) is None  # numeric, json, timestamps...
    assert fastrow.NativeRows({}, enabled=True).spec(info) is None  # not configured


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    _cfg, shapes = recorded_shapes()
    monkeypatch.setenv(fastrow.ENV, "0")
    assert not fastrow.NativeRows(shapes).enabled
    monkeypatch.setenv(fastrow.ENV, "1")
    assert fastrow.NativeRows(shapes).enabled


# -- generated values of every type ------------------------------------------------------

DIM = 4
COLUMNS = (
    ColumnInfo("id", 20, "int8", is_key=True),
    ColumnInfo("c_int2", 21, "int2"),
    ColumnInfo("c_int4", 23, "int4"),
    ColumnInfo("c_text", 25, "text"),
    ColumnInfo("c_varchar", 1043, "varchar"),
    ColumnInfo("c_bool", 16, "bool"),
    ColumnInfo("c_bytea", 17, "bytea"),
    ColumnInfo("c_f4", 700, "float4"),
    ColumnInfo("c_f8", 701, "float8"),
    ColumnInfo("emb", 1021, "_float4"),
)
INFO = RelationInfo(7, "public", "gen", "d", COLUMNS)

INT8 = st.integers(-(2**63), 2**63 - 1)
# Every MessagePack int form's bounds.
EDGE_INTS = st.sampled_from(
    [
        *(0, 1, -1, 31, 32, -32, -33, 127, 128, -128, -129, 255, 256),
        *(32767, -32768, 65535, 65536, 2**31 - 1, -(2**31), -(2**31) - 1),
        *(2**32 - 1, 2**32, 2**63 - 1, -(2**63)),
    ]
)
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    st.sampled_from(['q"uote\\back\nnl\ttab\x01\x1f\x7f', "é漢字🙂"]),
    # Every MessagePack str header's bounds.
    st.sampled_from([31, 32, 255, 256, 65535, 65536]).map(lambda n: "x" * n),
)
BYTEA = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([255, 256, 65535, 65536]).map(lambda n: b"\x01" * n),
)
FLOAT4 = st.floats(width=32, allow_nan=True)
FLOAT8 = st.floats(allow_nan=True)


def _f4(v: float) -> bytes:
    return struct.pack(">f", v)


def _value(col: ColumnInfo, v: Any) -> bytes | None:
    """PostgreSQL's binary send format of `v` for `col` (None: NULL)."""
    if v is None:
        return None
    t = col.type_name
    if t == "int8":
        return struct.pack(">q", v)
    if t == "int4":
        return struct.pack(">i", v)
    if t == "int2":
        return struct.pack(">h", v)
    if t in ("text", "varchar"):
        return str(v).encode()
    if t == "bool":
        return b"\x01" if v else b"\x00"
    if t == "bytea":
        return bytes(v)
    if t == "float4":
        return _f4(v)
    if t == "float8":
        return struct.pack(">d", v)
    return dump_float4_array(np.asarray(v, dtype=np.float32))


def relation_message(info: RelationInfo) -> bytes:
    out = bytearray(b"R" + struct.pack(">I", info.relid))
    out += info.schema.encode() + b"\0" + info.name.encode() + b"\0"
    out += info.replica_identity.encode()
    out += struct.pack(">H", len(info.columns))
    for c in info.columns:
        out += bytes([1 if c.is_key else 0]) + c.name.encode() + b"\0"
        out += struct.pack(">Ii", c.type_oid, c.type_modifier)
    return bytes(out)


def tuple_data(values: list[bytes | None]) -> bytes:
    out = bytearray(struct.pack(">H", len(values)))
    for v in values:
        if v is None:
            out += b"n"
        else:
            out += b"b" + struct.pack(">i", len(v)) + v
    return bytes(out)


def decode_insert(
    shapes: dict[str, TableShape], info: RelationInfo, values: list[bytes | None], native: bool
) -> RowChange:
    spec = fastrow.NativeRows(shapes, enabled=True).spec if native else None
    dec = PgOutputDecoder(binary=True, native=spec)
    dec.decode(relation_message(info))
    dec.decode(b"B" + struct.pack(">QqI", 100, 0, 9))
    dec.decode(b"I" + struct.pack(">I", info.relid) + b"N" + tuple_data(values))
    txn = dec.decode(b"C" + struct.pack(">BQQq", 0, 100, 101, 0))
    assert isinstance(txn, SourceTransaction)
    ch = txn.changes[0]
    assert isinstance(ch, RowChange)
    return ch


ROWS = st.fixed_dictionaries(
    {
        "id": st.one_of(INT8, EDGE_INTS),
        "c_int2": st.one_of(st.none(), st.integers(-(2**15), 2**15 - 1)),
        "c_int4": st.one_of(
            st.none(),
            st.integers(-(2**31), 2**31 - 1),
            EDGE_INTS.filter(lambda v: -(2**31) <= v < 2**31),
        ),
        "c_text": TEXT,
        "c_varchar": st.one_of(st.none(), TEXT),
        "c_bool": st.one_of(st.none(), st.booleans()),
        "c_bytea": st.one_of(st.none(), BYTEA),
        "c_f4": st.one_of(st.none(), FLOAT4),
        "c_f8": st.one_of(st.none(), FLOAT8),
        "emb": st.lists(FLOAT4.filter(math.isfinite), min_size=DIM, max_size=DIM),
    }
)


@pytest.mark.parametrize("vector_in_rows", [True, False])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=ROWS)
def test_generated_rows_are_stored_the_same_either_way(
    vector_in_rows: bool, row: dict[str, Any]
) -> None:
    cfg = config(
        [
            {
                "name": "public.gen",
                "vector_column": "emb",
                "vector_dim": DIM,
                "vector_in_rows": vector_in_rows,
            }
        ]
    )
    shapes = {"public.gen": shape_of(cfg, INFO, ("id",))}
    values = [_value(c, row[c.name]) for c in COLUMNS]
    fast = decode_insert(shapes, INFO, values, native=True)
    slow = decode_insert(shapes, INFO, values, native=False)
    assert slow.new is not None
    assert native_image(fast) == python_image(cfg, shapes["public.gen"], slow.new)
    # And the payload reads back as the row (the hidden column apart).
    back = decode_row(fast.image.payload)  # type: ignore[union-attr]
    assert ("emb" in back) is vector_in_rows


KEYS = st.one_of(
    st.tuples(st.integers(-(2**31), 2**31 - 1), TEXT),
    st.tuples(st.sampled_from([-(2**31), 0, 2**31 - 1]), st.sampled_from(['"', "\\", "x"])),
)


@settings(max_examples=150, deadline=None)
@given(key=KEYS, flag=st.booleans(), small=st.integers(-(2**15), 2**15 - 1))
def test_composite_text_and_bool_keys_match_encode_key(
    key: tuple[int, str], flag: bool, small: int
) -> None:
    cols = (
        ColumnInfo("a", 23, "int4", is_key=True),
        ColumnInfo("b", 25, "text", is_key=True),
        ColumnInfo("c", 16, "bool", is_key=True),
        ColumnInfo("d", 21, "int2", is_key=True),
    )
    info = RelationInfo(8, "public", "keyed", "d", cols)
    cfg = config([{"name": "public.keyed"}])
    shapes = {"public.keyed": shape_of(cfg, info, ("b", "a", "c", "d"))}
    values = [_value(c, v) for c, v in zip(cols, (key[0], key[1], flag, small), strict=True)]
    fast = decode_insert(shapes, info, values, native=True)
    slow = decode_insert(shapes, info, values, native=False)
    assert slow.new is not None
    assert native_image(fast) == python_image(cfg, shapes["public.keyed"], slow.new)


def _gen_shapes(dim: int = DIM, vector_in_rows: bool = True) -> tuple[Any, dict[str, TableShape]]:
    cfg = config(
        [
            {
                "name": "public.gen",
                "vector_column": "emb",
                "vector_dim": dim,
                "vector_in_rows": vector_in_rows,
            }
        ]
    )
    return cfg, {"public.gen": shape_of(cfg, INFO, ("id",))}


def _gen_values(**over: Any) -> list[bytes | None]:
    row: dict[str, Any] = {
        "id": 5,
        "c_int2": 1,
        "c_int4": 2,
        "c_text": "t",
        "c_varchar": "v",
        "c_bool": True,
        "c_bytea": b"b",
        "c_f4": 1.5,
        "c_f8": 2.5,
        "emb": [1.0, 0.0, 0.0, 0.0],
    }
    out = [_value(c, row[c.name]) for c in COLUMNS]
    for name, raw in over.items():
        out[[c.name for c in COLUMNS].index(name)] = raw
    return out


@pytest.mark.parametrize(
    "why, over",
    [
        ("a NULL vector (counted as such)", {"emb": None}),
        ("a vector of another dimension", {"emb": dump_float4_array(np.ones(3, np.float32))}),
        (
            "a vector with a NULL element",
            {"emb": struct.pack(">iiIii", 1, 1, 700, DIM, 1) + b"\xff\xff\xff\xff" * DIM},
        ),
        ("text that is not UTF-8", {"c_text": b"\xff\xfe"}),
        ("text with a surrogate", {"c_text": b"\xed\xa0\x80"}),
        ("an int4 of the wrong width", {"c_int4": b"\x00\x01"}),
    ],
)
def test_rows_the_codec_must_not_encode_are_handed_back(why: str, over: dict[str, Any]) -> None:
    _cfg, shapes = _gen_shapes()
    fast_spec = fastrow.NativeRows(shapes, enabled=True).spec(INFO)
    msg = b"I" + struct.pack(">I", INFO.relid) + b"N" + tuple_data(_gen_values(**over))
    assert fastrow.encode_tuple(fast_spec, msg, 6) is None, why
    ok = b"I" + struct.pack(">I", INFO.relid) + b"N" + tuple_data(_gen_values())
    assert fastrow.encode_tuple(fast_spec, ok, 6) is not None


def test_unchanged_toast_and_text_format_values_are_handed_back() -> None:
    _cfg, shapes = _gen_shapes()
    spec = fastrow.NativeRows(shapes, enabled=True).spec(INFO)
    good = tuple_data(_gen_values())
    i = good.index(b"b\x00\x00\x00\x01t")  # c_text's value
    toast = good[:i] + b"u" + good[i + 6 :]
    text = good[:i] + b"t" + good[i + 1 :]
    for body in (toast, text):
        assert fastrow.encode_tuple(spec, b"I\x00\x00\x00\x07N" + body, 6) is None


# -- binary COPY ------------------------------------------------------------------------


def copy_data(rows: list[list[bytes | None]]) -> bytes:
    out = bytearray(fastrow.COPY_SIGNATURE + struct.pack(">ii", 0, 0))
    for values in rows:
        out += struct.pack(">h", len(values))
        for v in values:
            out += struct.pack(">i", -1) if v is None else struct.pack(">i", len(v)) + v
    out += struct.pack(">h", -1)
    return bytes(out)


@pytest.mark.parametrize("vector_in_rows", [True, False])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(ROWS, min_size=1, max_size=30, unique_by=lambda r: r["id"]),
    cut=st.integers(1, 500),
    null_vector=st.sets(st.integers(0, 29)),
)
def test_copy_rows_are_stored_the_same_either_way(
    vector_in_rows: bool, rows: list[dict[str, Any]], cut: int, null_vector: set[int]
) -> None:
    cfg, shapes = _gen_shapes(vector_in_rows=vector_in_rows)
    shape = shapes["public.gen"]
    for i in null_vector & set(range(len(rows))):
        rows[i] = {**rows[i], "emb": None}  # handed back: decoded in Python
    data = copy_data([[_value(c, r[c.name]) for c in COLUMNS] for r in rows])
    spec = fastrow.NativeRows(shapes, enabled=True).spec(INFO)
    loaders = ColumnLoaders("numpy", [("public.gen", "emb")]).for_relation(INFO)[1]
    decode = fastrow.copy_row_decoder(COLUMNS, loaders)
    # Blocks of any size, as the connection may hand them out.
    blocks = [data[i : i + cut] for i in range(0, len(data), cut)]
    got: dict[str, tuple[bytes, bytes | None, bytes | None]] = {}
    vectorizer = Vectorizer(cfg, {t.tenant: b"k" * 32 for t in cfg.tables})
    encoder = RowEncoder(vectorizer)
    for batch in fastrow.copy_batches(spec, blocks, decode, batch=7):
        eb = encoder.snapshot(shape, batch, 1)
        for k, p, v, h in zip(eb.keys, eb.payloads, eb.vectors, eb.hidden, strict=False):
            assert k not in got
            assert p is not None
            got[k] = (p, v, h)
        if isinstance(batch, EncodedRows):
            assert batch.vectors is not None and len(batch.vectors) == 4 * DIM * len(batch)
    expected = encoder.live(shape, [decode_py(r) for r in rows], 1)
    assert len(got) == len(rows)
    want = {
        k: (p, v, h)
        for k, p, v, h in zip(
            expected.keys, expected.payloads, expected.vectors, expected.hidden, strict=False
        )
    }
    assert got.keys() == want.keys()
    for k, (p, v, h) in got.items():
        assert (p, h) == (want[k][0], want[k][2]), k
        assert _same_stored_vector(v, want[k][1]), k
    # Without the vector in rows, every row's vector sits in its hidden value.
    assert all((h is None) is vector_in_rows for _p, _v, h in got.values())


def _same_stored_vector(a: bytes | None, b: bytes | None) -> bool:
    """A stored vector of the copy and of the live path: a reference byte for
    byte; a projected one up to the product's float32 rounding, since BLAS
    sums the copy's batches of 7 rows and the live path's one batch in
    different orders (a 1-ulp difference that hypothesis found at 1e16)."""
    if a is None or b is None or is_ref(a) or is_ref(b):
        return a == b
    x, y = np.frombuffer(a, "<f4"), np.frombuffer(b, "<f4")
    scale = float(np.linalg.norm(y.astype(np.float64)))
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=0, atol=1e-6 * scale))


def decode_py(row: dict[str, Any]) -> dict[str, Any]:
    """The row as the Python path's loaders give it (in column order)."""
    out = {c.name: row[c.name] for c in COLUMNS}
    if out["emb"] is not None:
        out["emb"] = np.asarray(out["emb"], dtype=np.float32)
    for c in ("c_f4",):
        if out[c] is not None:
            out[c] = struct.unpack(">f", _f4(out[c]))[0]
    return out


def test_copy_data_that_does_not_parse_is_an_error() -> None:
    _cfg, shapes = _gen_shapes()
    spec = fastrow.NativeRows(shapes, enabled=True).spec(INFO)
    decode = fastrow.copy_row_decoder(COLUMNS, [])
    good = copy_data([_gen_values()])
    for bad, says in (
        (good[:-2], "without its trailer"),
        (good + b"x", "after the binary COPY trailer"),
        (b"NOTCOPY" + good[7:], "signature"),
        (good[:19] + struct.pack(">h", 3) + good[21:], "3 fields"),
    ):
        with pytest.raises(ValueError, match=says):
            list(fastrow.copy_batches(spec, [bad], decode))
