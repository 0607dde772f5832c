"""Unit tests of the pgoutput decoder (PostgreSQL WAL → **decoder** → pipeline
→ store) over messages recorded from a real PostgreSQL 16 by
tests/fixtures/capture_pgoutput.py, plus hand-built messages for error paths.
No server needed."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import struct
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import (
    UNCHANGED_TOAST,
    RowChange,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder
from prism.wrapper.sources.postgres.values import binary_supported, pg_type_name
from prism.wrapper.sources.postgres.walstream import PG_EPOCH_OFFSET_US

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pgoutput"
MODES = ["text", "binary"]
TOAST_SHA256 = "1af3699b09756ce508b865d5e3b6774c31f699ac6e1c36108827789a161023e3"
FLOAT32_0_001 = struct.unpack(">f", struct.pack(">f", 0.001))[0]


def load_messages(mode: str) -> list[bytes]:
    data = (FIXTURES / f"{mode}.bin").read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def decode_all(mode: str) -> list[SourceTransaction]:
    dec = PgOutputDecoder(binary=mode == "binary")
    return [t for m in load_messages(mode) if (t := dec.decode(m)) is not None]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def txns(mode: str) -> list[SourceTransaction]:
    return decode_all(mode)


def rows(txn: SourceTransaction) -> list[RowChange]:
    out = [c for c in txn.changes if isinstance(c, RowChange)]
    assert len(out) == len(txn.changes)
    return out


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal values *and* equal types (1 == 1.0 == True would hide a wrong loader)."""
    assert actual == expected
    for k, v in expected.items():
        assert type(actual[k]) is type(v), (k, actual[k], v)


ROW1 = {
    "id": 1,
    "c_int2": -32768,
    "c_int4": 2147483647,
    "c_numeric": Decimal("12345678.1234"),
    "c_text": "héllo ✓",
    "c_varchar": "short",
    "c_bool": True,
    "c_json": {"a": [1, 2.5, None], "b": "x"},
    "c_jsonb": {"k": {"n": 1}},
    "c_ts": dt.datetime(2024, 2, 29, 13, 14, 15, 123456),
    "c_tstz": dt.datetime(2024, 2, 29, 11, 14, 15, 123456, tzinfo=dt.UTC),
    "c_date": dt.date(2024, 2, 29),
    "c_uuid": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "c_bytea": b"\xde\xad\xbe\xef\x00",
    "c_int4arr": [1, None, -3],
    "c_textarr": ["a b", "c,d", None],
    "c_float4arr": [0.5, -1.25, 3.0],
    "c_float8": 0.1,
    "c_vec": [1.5, -2.0, 0.25],
}

TYPE_NAMES = {
    "id": "int8",
    "c_int2": "int2",
    "c_int4": "int4",
    "c_numeric": "numeric",
    "c_text": "text",
    "c_varchar": "varchar",
    "c_bool": "bool",
    "c_json": "json",
    "c_jsonb": "jsonb",
    "c_ts": "timestamp",
    "c_tstz": "timestamptz",
    "c_date": "date",
    "c_uuid": "uuid",
    "c_bytea": "bytea",
    "c_int4arr": "_int4",
    "c_textarr": "_text",
    "c_float4arr": "_float4",
    "c_float8": "float8",
    "c_vec": "vector",
}


# -- recorded stream ----------------------------------------------------------


def test_transaction_grouping_and_positions(txns: list[SourceTransaction]) -> None:
    tables = [
        sorted({c.table if isinstance(c, RowChange) else c.tables[0] for c in t.changes})
        for t in txns
    ]
    assert tables == [
        ["public.types_t"],  # T1 two inserts
        ["public.types_t"],  # T2 update
        ["public.docs"],  # T3 TOAST insert
        ["public.docs"],  # T4 'u'
        ["public.docs"],  # T5 PK change
        ["public.full_t"],  # T6 identity full
        ["public.types_t"],  # T7 delete
        ["public.types_t"],  # T8 after ADD COLUMN
        ["public.types_t"],  # T9 after DROP COLUMN
        ["public.docs"],  # T10 truncate
        ["public.full_t"],  # T11 truncate
        ["public.marker"],
    ]
    assert [len(t.changes) for t in txns] == [2, 1, 1, 1, 1, 4, 1, 1, 1, 1, 1, 1]
    for prev, cur in itertools.pairwise(txns):
        assert cur.xid > prev.xid
        assert cur.commit_lsn > prev.end_lsn - 1
    for t in txns:
        assert t.commit_lsn < t.end_lsn
        # Recorded in this decade: the PG-epoch → unix conversion happened.
        assert 1_600_000_000_000_000 < t.commit_time_us < 2_500_000_000_000_000


def test_text_and_binary_decode_the_same_stream() -> None:
    text, binary = decode_all("text"), decode_all("binary")
    assert [(t.xid, t.commit_lsn, t.end_lsn) for t in text] == [
        (t.xid, t.commit_lsn, t.end_lsn) for t in binary
    ]


def test_rolled_back_transaction_never_appears(txns: list[SourceTransaction]) -> None:
    ids = [
        (c.new or c.old or {}).get("id")
        for t in txns
        for c in t.changes
        if isinstance(c, RowChange) and c.table == "public.types_t"
    ]
    assert 99 not in ids
    xids = [t.xid for t in txns]
    # The rolled-back transaction took an xid between T2 and T3.
    assert xids[2] - xids[1] == 2


def test_all_types_decode_exactly(txns: list[SourceTransaction]) -> None:
    first, second = rows(txns[0])
    assert first.op == "insert" and first.old is None
    assert_same(first.new or {}, ROW1)
    assert second.new == {k: (2 if k == "id" else None) for k in ROW1}


def test_relation_description(txns: list[SourceTransaction]) -> None:
    rel = txns[0].relations["public.types_t"]
    assert (rel.schema, rel.name, rel.replica_identity) == ("public", "types_t", "d")
    assert {c.name: c.type_name for c in rel.columns} == TYPE_NAMES
    assert [c.name for c in rel.columns if c.is_key] == ["id"]
    by_name = {c.name: c for c in rel.columns}
    assert by_name["c_vec"].type_modifier == 3
    assert by_name["c_varchar"].type_modifier == 24  # varchar(20): 20 + VARHDRSZ
    assert by_name["c_float4arr"].type_oid == 1021
    # Relations are only reported when (re)described, not with every change.
    assert txns[1].relations == {}


def test_update_without_old_image(txns: list[SourceTransaction]) -> None:
    (upd,) = rows(txns[1])
    assert upd.op == "update" and upd.old is None
    assert_same(upd.new or {}, {**ROW1, "c_text": "changed", "c_int4arr": [[1, 2], [3, 4]]})


def test_toast_value_and_unchanged_sentinel(txns: list[SourceTransaction]) -> None:
    (ins,) = rows(txns[2])
    body = (ins.new or {})["body"]
    assert len(body) == 20_000
    assert hashlib.sha256(body.encode()).hexdigest() == TOAST_SHA256
    (upd,) = rows(txns[3])
    assert upd.new == {"id": 1, "body": UNCHANGED_TOAST, "n": 1}
    assert (upd.new or {})["body"] is UNCHANGED_TOAST
    assert upd.old is None


def test_primary_key_change_sends_old_key(txns: list[SourceTransaction]) -> None:
    (upd,) = rows(txns[4])
    assert upd.op == "update"
    assert upd.old == {"id": 1}  # only the key: non-key columns came as 'n'
    assert upd.new == {"id": 2, "body": UNCHANGED_TOAST, "n": 2}


def test_replica_identity_full_sends_old_rows(txns: list[SourceTransaction]) -> None:
    t = txns[5]
    assert t.relations["public.full_t"].replica_identity == "f"
    assert [(c.op, c.new, c.old) for c in rows(t)] == [
        ("insert", {"id": 1, "v": "one"}, None),
        ("insert", {"id": 2, "v": None}, None),
        ("update", {"id": 1, "v": "uno"}, {"id": 1, "v": "one"}),
        ("delete", None, {"id": 2, "v": None}),
    ]


def test_delete_sends_key_only(txns: list[SourceTransaction]) -> None:
    (d,) = rows(txns[6])
    assert (d.op, d.new, d.old) == ("delete", None, {"id": 2})


def test_relation_changes_mid_stream(mode: str, txns: list[SourceTransaction]) -> None:
    added = txns[7].relations["public.types_t"]
    assert added.column_names == (*TYPE_NAMES, "extra")
    (ins3,) = rows(txns[7])
    new3 = ins3.new or {}
    assert new3["extra"] == "added"
    assert new3["c_numeric"].is_nan()

    dropped = txns[8].relations["public.types_t"]
    assert "c_varchar" not in dropped.column_names
    assert dropped.column_names[-1] == "extra"
    (ins4,) = rows(txns[8])
    new4 = ins4.new or {}
    assert set(new4) == set(dropped.column_names)
    assert new4["c_tstz"] == dt.datetime(2000, 1, 1, 7, 59, 59, tzinfo=dt.UTC)
    assert new4["c_float4arr"] == []
    # Binary carries the float32 itself; text its shortest decimal form.
    assert new4["c_vec"] == [0.0, 0.0, FLOAT32_0_001 if mode == "binary" else 0.001]


def test_truncate_options(txns: list[SourceTransaction]) -> None:
    assert txns[9].changes == [TruncateChange(("public.docs",), True, True)]
    assert txns[10].changes == [TruncateChange(("public.full_t",), False, False)]


def test_decoder_state_between_messages(mode: str) -> None:
    dec = PgOutputDecoder(binary=mode == "binary")
    msgs = load_messages(mode)
    assert dec.decode(msgs[0]) is None
    assert dec.in_transaction
    for m in msgs[1:5]:
        assert dec.decode(m) is None
    txn = dec.decode(msgs[5])
    assert txn is not None and not dec.in_transaction
    rel = txn.relations["public.types_t"]
    assert dec.relation(rel.relid) == rel


def test_reset_drops_partial_transaction(mode: str) -> None:
    dec = PgOutputDecoder(binary=mode == "binary")
    msgs = load_messages(mode)
    for m in msgs[:4]:
        dec.decode(m)
    with pytest.raises(SourceError, match="still open"):
        dec.decode(msgs[0])
    dec.reset()
    txn = None
    for m in msgs[:6]:
        txn = dec.decode(m) or txn
    assert txn is not None and len(txn.changes) == 2


# -- hand-built messages ------------------------------------------------------


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def begin(xid: int = 7) -> bytes:
    return b"B" + struct.pack(">QqI", 0x100, 0, xid)


def commit() -> bytes:
    return b"C" + struct.pack(">BQQq", 0, 0x100, 0x128, 1_000_000)


def type_msg(oid: int, name: str) -> bytes:
    return b"Y" + struct.pack(">I", oid) + _cstr("public") + _cstr(name)


def relation(relid: int, cols: list[tuple[str, int, bool]], name: str = "t") -> bytes:
    out = b"R" + struct.pack(">I", relid) + _cstr("public") + _cstr(name) + b"d"
    out += struct.pack(">H", len(cols))
    for col, oid, key in cols:
        out += bytes([1 if key else 0]) + _cstr(col) + struct.pack(">Ii", oid, -1)
    return out


def tuple_data(values: list[tuple[bytes, bytes | None]]) -> bytes:
    out = struct.pack(">H", len(values))
    for kind, data in values:
        out += kind
        if data is not None:
            out += struct.pack(">i", len(data)) + data
    return out


def insert(relid: int, values: list[tuple[bytes, bytes | None]]) -> bytes:
    return b"I" + struct.pack(">I", relid) + b"N" + tuple_data(values)


def run(dec: PgOutputDecoder, msgs: list[bytes]) -> SourceTransaction:
    out = [t for m in msgs if (t := dec.decode(m)) is not None]
    assert len(out) == 1
    return out[0]


def test_commit_fields_and_epoch_conversion() -> None:
    dec = PgOutputDecoder(binary=False)
    txn = run(dec, [begin(42), commit()])
    assert (txn.xid, txn.commit_lsn, txn.end_lsn) == (42, 0x100, 0x128)
    assert txn.commit_time_us == PG_EPOCH_OFFSET_US + 1_000_000
    assert txn.changes == []


def test_origin_and_message_are_ignored() -> None:
    dec = PgOutputDecoder(binary=False)
    origin = b"O" + struct.pack(">Q", 5) + _cstr("node1")
    message = b"M" + b"\x01" + struct.pack(">Q", 5) + _cstr("pfx") + struct.pack(">i", 2) + b"hi"
    txn = run(dec, [begin(), origin, message, commit()])
    assert txn.changes == []


def test_unknown_custom_type_is_str_in_text_mode() -> None:
    dec = PgOutputDecoder(binary=False)
    txn = run(
        dec,
        [
            begin(),
            type_msg(70000, "mood"),
            relation(9, [("id", 23, True), ("m", 70000, False)]),
            insert(9, [(b"t", b"5"), (b"t", b"happy")]),
            commit(),
        ],
    )
    assert txn.changes == [RowChange("public.t", "insert", {"id": 5, "m": "happy"})]
    assert txn.relations["public.t"].columns[1].type_name == "mood"


def test_unknown_custom_type_in_binary_names_table_column_type() -> None:
    dec = PgOutputDecoder(binary=True)
    msgs = [
        begin(),
        type_msg(70000, "mood"),
        relation(9, [("id", 23, True), ("m", 70000, False)]),
    ]
    for m in msgs:
        dec.decode(m)
    with pytest.raises(SourceError, match=r"public\.t\.m of type mood"):
        dec.decode(insert(9, [(b"b", struct.pack(">i", 5)), (b"b", b"happy")]))


def test_builtin_type_without_binary_loader_is_rejected() -> None:
    dec = PgOutputDecoder(binary=True)
    for m in [begin(), relation(9, [("p", 600, False)])]:
        dec.decode(m)
    with pytest.raises(SourceError, match=r"public\.t\.p of type point"):
        dec.decode(insert(9, [(b"b", b"\0" * 16)]))


def test_loader_failure_is_source_error_naming_column() -> None:
    dec = PgOutputDecoder(binary=False)
    for m in [begin(), relation(9, [("ts", 1114, False)])]:
        dec.decode(m)
    with pytest.raises(SourceError, match=r"public\.t\.ts \(type timestamp\)"):
        dec.decode(insert(9, [(b"t", b"infinity")]))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (struct.pack(">hh3f", 3, 0, 1.0, -2.5, 0.0), [1.0, -2.5, 0.0]),
        (struct.pack(">hh", 0, 0), []),
    ],
)
def test_vector_binary(data: bytes, expected: list[float]) -> None:
    dec = PgOutputDecoder(binary=True)
    txn = run(
        dec,
        [
            begin(),
            type_msg(70001, "vector"),
            relation(9, [("v", 70001, False)]),
            insert(9, [(b"b", data)]),
            commit(),
        ],
    )
    assert txn.changes == [RowChange("public.t", "insert", {"v": expected})]


@pytest.mark.parametrize(
    "data", [struct.pack(">hh", 3, 0), b"\0", struct.pack(">hh2f", 3, 0, 1.0, 2.0)]
)
def test_vector_binary_malformed(data: bytes) -> None:
    dec = PgOutputDecoder(binary=True)
    for m in [begin(), type_msg(70001, "vector"), relation(9, [("v", 70001, False)])]:
        dec.decode(m)
    with pytest.raises(SourceError, match=r"public\.t\.v"):
        dec.decode(insert(9, [(b"b", data)]))


def test_binary_supported() -> None:
    assert binary_supported(20, "int8")
    assert binary_supported(1021, "_float4")
    assert binary_supported(3802, "jsonb")
    assert binary_supported(70001, "vector")
    assert not binary_supported(70000, "mood")
    assert not binary_supported(600, "point")
    # psycopg's generic array loader exists, but not for the element.
    assert not binary_supported(1017, "_point")


def test_pg_type_name() -> None:
    assert pg_type_name(20) == "int8"
    assert pg_type_name(1021) == "_float4"
    assert pg_type_name(70000, {70000: "mood"}) == "mood"
    assert pg_type_name(70000) == "oid:70000"


@pytest.mark.parametrize(
    ("msgs", "match"),
    [
        ([b""], "empty"),
        ([b"Z"], "unknown message type"),
        ([commit()], "Commit without Begin"),
        ([insert(9, [])], "outside a transaction"),
        ([begin(), insert(9, [])], "never described"),
        ([begin(), begin()], "still open"),
        ([begin()[:-1]], "Begin"),
        ([begin() + b"x"], "Begin"),
        ([begin(), relation(9, [("a", 23, False)]), insert(9, [])], "0 columns"),
        ([begin(), relation(9, [("a", 23, False)]), insert(9, [(b"x", None)])], "kind"),
        (
            [begin(), relation(9, [("a", 23, False)]), insert(9, [(b"t", b"1")])[:-1]],
            "claims 1 bytes",
        ),
        ([begin(), b"T" + struct.pack(">iBI", 1, 0, 9)], "never described"),
        ([begin(), b"R" + struct.pack(">I", 9) + b"public"], "unterminated"),
    ],
)
def test_malformed_messages(msgs: list[bytes], match: str) -> None:
    dec = PgOutputDecoder(binary=False)
    with pytest.raises(SourceError, match=match):
        for m in msgs:
            dec.decode(m)


def test_every_truncation_is_rejected_without_changing_state(mode: str) -> None:
    msgs = load_messages(mode)
    dec = PgOutputDecoder(binary=mode == "binary")
    out = []
    for m in msgs:
        cuts = range(len(m)) if len(m) < 400 else [*range(0, 400), *range(400, len(m), 997)]
        for n in cuts:
            with pytest.raises(SourceError):
                dec.decode(m[:n])
        if (t := dec.decode(m)) is not None:
            out.append(t)
    # repr: Decimal('NaN') in T8 is not equal to itself.
    assert repr(out) == repr(decode_all(mode))


def _primed(mode: str) -> tuple[PgOutputDecoder, list[bytes]]:
    """A decoder inside T1 that knows types_t, and the recorded messages."""
    msgs = load_messages(mode)
    dec = PgOutputDecoder(binary=mode == "binary")
    for m in msgs[:3]:
        dec.decode(m)
    return dec, msgs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), data=st.binary(max_size=200))
def test_random_bytes_only_raise_source_error(mode: str, data: bytes) -> None:
    dec, _ = _primed(mode)
    with contextlib.suppress(SourceError):
        dec.decode(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.sampled_from(MODES),
    index=st.integers(min_value=0, max_value=50),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
        min_size=1,
        max_size=4,
    ),
    cut=st.integers(min_value=0, max_value=8),
)
def test_mutated_messages_only_raise_source_error(
    mode: str, index: int, edits: list[tuple[int, int]], cut: int
) -> None:
    dec, msgs = _primed(mode)
    msg = bytearray(msgs[index % len(msgs)])
    for pos, value in edits:
        msg[pos % len(msg)] = value
    if cut:
        del msg[-cut:]
    with contextlib.suppress(SourceError):
        dec.decode(bytes(msg))


def test_vectors_as_numpy(mode: str) -> None:
    dec = PgOutputDecoder(binary=mode == "binary", vectors="numpy")
    txns = [t for m in load_messages(mode) if (t := dec.decode(m)) is not None]
    vec = (rows(txns[0])[0].new or {})["c_vec"]
    assert isinstance(vec, np.ndarray)
    assert vec.dtype == np.float32 and vec.dtype.isnative
    assert vec.tolist() == [1.5, -2.0, 0.25]


def _array(elem_oid: int, dims: list[int], elems: list[bytes | None]) -> bytes:
    out = struct.pack(">iiI", len(dims), int(any(e is None for e in elems)), elem_oid)
    for d in dims:
        out += struct.pack(">ii", d, 1)
    for e in elems:
        out += struct.pack(">i", -1) if e is None else struct.pack(">i", len(e)) + e
    return out


def _decode_array(type_oid: int, data: bytes) -> Any:
    dec = PgOutputDecoder(binary=True)
    txn = run(
        dec, [begin(), relation(9, [("a", type_oid, False)]), insert(9, [(b"b", data)]), commit()]
    )
    return (rows(txn)[0].new or {})["a"]


def test_binary_arrays() -> None:
    f4 = [struct.pack(">f", v) for v in (0.5, -1.0, 2.0, 4.0)]
    assert _decode_array(1021, _array(700, [4], list(f4))) == [0.5, -1.0, 2.0, 4.0]
    assert _decode_array(1021, _array(700, [2, 2], list(f4))) == [[0.5, -1.0], [2.0, 4.0]]
    assert _decode_array(1021, _array(700, [3], [f4[0], None, f4[1]])) == [0.5, None, -1.0]
    assert _decode_array(1009, _array(25, [1, 2], [b"x", None])) == [["x", None]]
    assert _decode_array(1000, _array(16, [2], [b"\x01", b"\x00"])) == [True, False]
    assert _decode_array(1021, _array(700, [], [])) == []


@pytest.mark.parametrize(
    "data",
    [
        # The input that crashes psycopg's C array loader: a corrupt element length.
        bytes.fromhex("00000001000000010000001700000003000000010000000400000001ffb8ffff00000004"),
        _array(23, [3], [b"\0\0\0\1", b"\0\0\0\2"]),  # fewer elements than declared
        _array(23, [1], [b"\0\0\0\1"]) + b"x",  # trailing bytes
        _array(25, [1], [b"x"]),  # element oid is not int4's
        _array(23, [7, 1, 1, 1, 1, 1, 1], [b"\0\0\0\1"] * 7),  # more than MAXDIM
        _array(23, [-1], []),
    ],
)
def test_binary_array_malformed(data: bytes) -> None:
    with pytest.raises(SourceError, match=r"public\.t\.a|malformed"):
        _decode_array(1007, data)


@pytest.mark.parametrize("mode_", ["binary", "text"])
def test_float32_columns_decode_to_exact_float32_arrays(mode_: str) -> None:
    cols = [("public.types_t", "c_float4arr"), ("public.types_t", "c_vec")]
    plain = PgOutputDecoder(binary=mode_ == "binary")
    fast = PgOutputDecoder(binary=mode_ == "binary", float32_columns=cols)
    seen = 0
    for msg in load_messages(mode_):
        a, b = plain.decode(msg), fast.decode(msg)
        assert (a is None) == (b is None)
        if a is None or b is None:
            continue
        for ca, cb in zip(a.changes, b.changes, strict=True):
            if not isinstance(ca, RowChange) or ca.new is None or ca.table != "public.types_t":
                continue
            assert isinstance(cb, RowChange) and cb.new is not None
            for col in ("c_float4arr", "c_vec"):
                va, vb = ca.new.get(col), cb.new.get(col)
                if isinstance(va, list) and va:
                    assert isinstance(vb, np.ndarray) and vb.dtype == np.float32
                    assert vb.tobytes() == np.asarray(va, dtype=np.float32).tobytes()
                    seen += 1
                else:
                    assert vb == va  # NULL, empty arrays and TOAST markers unchanged
    assert seen >= 3


def _decode_float32(data: bytes) -> Any:
    dec = PgOutputDecoder(binary=True, float32_columns=[("public.t", "a")])
    txn = run(
        dec, [begin(), relation(9, [("a", 1021, False)]), insert(9, [(b"b", data)]), commit()]
    )
    return (rows(txn)[0].new or {})["a"]


def test_float32_fast_path_is_exact_and_falls_back_for_anything_else() -> None:
    values = np.array([0.5, -0.0, np.inf, -np.inf, 1e-45, 3.4028235e38, 0.1], dtype=">f4")
    elems = [values[i : i + 1].tobytes() for i in range(len(values))]  # big-endian, as sent
    got = _decode_float32(_array(700, [len(values)], elems))
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.tobytes() == values.astype(np.float32).tobytes()
    nan = _decode_float32(_array(700, [1], [np.array([np.nan], dtype=">f4").tobytes()]))
    assert np.isnan(nan).all()
    f4 = [struct.pack(">f", v) for v in (0.5, -1.0)]
    # NULL elements or two dimensions: the general loader's lists.
    assert _decode_float32(_array(700, [3], [f4[0], None, f4[1]])) == [0.5, None, -1.0]
    assert _decode_float32(_array(700, [1, 2], f4)) == [[0.5, -1.0]]
    # A length word that is not 4 (the NULL flag not set) is not read as a
    # value: the general loader refuses the array.
    bad = _array(700, [2], f4)
    bad = bad[:20] + struct.pack(">i", 5) + bad[24:]
    with pytest.raises(SourceError):
        _decode_float32(bad)
