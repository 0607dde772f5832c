"""Row payloads and primary keys on the wire (prism.fabric.payload)."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.fabric.errors import PayloadError
from prism.fabric.payload import decode_key, decode_row, encode_key, encode_row, read_row, read_rows


def same(a: Any, b: Any) -> bool:
    """Equal in type and value, with nan == nan, -0.0 != 0.0, Decimal exponents
    and datetime offsets compared too."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, Decimal):
        return str(a) == str(b)
    if isinstance(a, (dt.datetime, dt.time)):
        return a.isoformat() == b.isoformat() and a.utcoffset() == b.utcoffset()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return bool(a == b)


def roundtrip(row: dict[str, Any]) -> dict[str, Any]:
    data = encode_row(row)
    assert isinstance(data, bytes)
    # Always one MessagePack map, readable by any MessagePack library.
    plain = msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors="surrogatepass")
    assert type(plain) is dict and list(plain) == list(row)
    out = decode_row(data)
    # The read path's codec (ormsgpack, falling back to decode_row) reads the same row.
    assert same(read_row(data), out)
    assert all(same(r, out) for r in read_rows([data, data]))
    return out


tzs = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23)).map(
        dt.timezone
    ),
)
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1.00", "-0", "1E+3", "0E-7", "sNaN", "-NaN", "123.4500"]).map(Decimal),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
    max_leaves=12,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    decimals,
    st.datetimes(timezones=tzs),
    st.dates(),
    st.times(timezones=st.one_of(st.none(), st.just(dt.UTC))),
    st.timedeltas(),
    st.uuids(),
)
values = st.one_of(
    scalars,
    json_values,
    st.lists(st.floats(), min_size=1, max_size=20),
    st.lists(st.one_of(st.none(), scalars), max_size=5),
    st.lists(st.lists(st.one_of(st.none(), st.integers(), decimals), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=3),
    st.tuples(scalars, scalars),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), values, max_size=8))
def test_row_round_trip(row: dict[str, Any]) -> None:
    assert same(roundtrip(row), row)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**64 - 1,
        2**64,
        -(2**200),
        10**5000,  # beyond Python's int/str digit limit
        0.1,
        -0.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        1e308,
        5e-324,
        "",
        "a\x00b",
        "\ud800 lone surrogate",
        "日本語 🎉 \u2028",
        Decimal("1.10"),
        Decimal("1E+2"),
        Decimal("-0.000"),
        Decimal("NaN"),
        Decimal("-sNaN"),
        Decimal("-Infinity"),
        Decimal("1.2345678901234567890123456789012345678901234567890"),
        b"",
        b"\x00\xff" * 10,
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(1, 1, 1),
        dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=dt.UTC),
        dt.date(9999, 12, 31),
        dt.time(0, 0),
        dt.time(23, 59, 59, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.timedelta(days=-1, microseconds=1),
        dt.timedelta(days=999999999),
        uuid.uuid4(),
        [],
        [1.5],
        [0.1, float("nan"), -0.0, float("inf")],
        [1, 2.5],
        [None, 1.0],
        [[1, None], [None]],
        [Decimal("1.0"), None],
        [dt.date(2020, 1, 1), None],
        {},
        {"$t": 1},
        {"t": "x", "v": {"L": ["M", "d"]}},
        ["L", "x"],
        ["d", "1.0"],
        {"a": [1, {"b": None}], "c": 2.5},
        {"n": float("nan")},
        {"d": Decimal("2.50"), "nested": {"b": b"x"}},
        (1, "a"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_value_round_trip(value: Any) -> None:
    row = {"col": value, "id": 1}
    assert same(roundtrip(row), row)


def test_tags_cannot_collide_with_user_data() -> None:
    # A json column whose content looks like the encoding itself stays plain.
    row = {"v": {"v": 1, "t": {"v": "d"}}, "t": {"col": "d"}, "col": "1.0"}
    assert same(roundtrip(row), row)
    assert same(roundtrip({"x": ["L", ["d", "1"]]}), {"x": ["L", ["d", "1"]]})


def test_plain_rows_are_plain_messagepack() -> None:
    row = {"id": 1, "name": "x", "score": 1.5, "ok": None, "b": b"\x00", "l": [1, "a"]}
    assert msgpack.unpackb(encode_row(row), raw=False) == row
    # Values MessagePack lacks are extension types with documented layouts.
    doc = msgpack.unpackb(encode_row({"price": Decimal("9.90"), "id": 2}), raw=False)
    assert doc == {"price": msgpack.ExtType(2, b"9.90"), "id": 2}
    day = msgpack.unpackb(encode_row({"d": dt.date(2024, 1, 2)}), raw=False)["d"]
    assert day == msgpack.ExtType(5, struct.pack("<i", dt.date(2024, 1, 2).toordinal()))
    vec = np.arange(3, dtype=np.float32)
    assert msgpack.unpackb(encode_row({"v": vec}), raw=False)["v"] == msgpack.ExtType(
        1, vec.astype("<f4").tobytes()
    )


def test_float32_vectors_come_back_read_only_and_compact() -> None:
    vec = np.linspace(-1, 1, 384, dtype=np.float32)
    data = encode_row({"embedding": vec})
    assert len(data) < 384 * 4 + 20
    out = decode_row(data)["embedding"]
    assert out.dtype == np.float32 and not out.flags.writeable
    assert out.tobytes() == vec.tobytes()


def test_column_order_preserved() -> None:
    row = {"z": 1, "a": Decimal(1), "m": [1.0], "b": "x"}
    assert list(roundtrip(row)) == ["z", "a", "m", "b"]


def test_lenient_inputs_come_back_as_builtins() -> None:
    class Color(enum.IntEnum):
        RED = 1

    class MyStr(str):
        pass

    out = roundtrip(
        {
            "e": Color.RED,
            "s": MyStr("x"),
            "ba": bytearray(b"ab"),
            "mv": memoryview(b"cd"),
            "np32": np.array([1.5, 2.5], dtype=np.float32),
            "np64": np.array([0.1], dtype=np.float64),
            "npint": np.int64(7),
        }
    )
    assert same(
        out,
        {
            "e": 1,
            "s": "x",
            "ba": b"ab",
            "mv": b"cd",
            "np32": np.array([1.5, 2.5], dtype=np.float32),
            "np64": [0.1],
            "npint": 7,
        },
    )


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {1: "a"}, [object()], {"a": {2: 3}}, [{3: 4}], np.zeros((2, 2)), 1j],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_types_name_the_column(value: Any) -> None:
    with pytest.raises(PayloadError, match="bad_col"):
        encode_row({"ok": 1, "bad_col": value})


def test_non_str_column_name() -> None:
    with pytest.raises(PayloadError, match="not a str"):
        encode_row({1: "x"})


def _ext(code: int, data: bytes) -> bytes:
    return bytes(msgpack.packb({"a": msgpack.ExtType(code, data)}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used by MessagePack
        b"\x90",  # an array, not a map
        b"\x01",  # an int
        b"\x81\xa1a",  # a map that ends before its value
        b"\x80\x80",  # extra data after the map
        _ext(1, b"\x00\x00\x00"),  # float32 array of 3 bytes
        _ext(2, b"x"),  # not a decimal
        _ext(2, b"\xff"),  # not ASCII
        _ext(3, b"\x00" * 7),  # datetime of 7 bytes
        _ext(3, struct.pack("<q", 2**62)),  # datetime out of range
        _ext(4, b"\x00" * 8),
        _ext(4, struct.pack("<qq", 0, 86_400_000_000)),  # offset of a whole day
        _ext(5, struct.pack("<i", 0)),  # ordinal 0
        _ext(6, struct.pack("<q", 86_400_000_000)),  # 24:00
        _ext(7, struct.pack("<q", 0)),
        _ext(8, struct.pack("<iii", 2**31 - 1, 0, 0)),  # timedelta out of range
        _ext(9, b"\x00" * 15),  # uuid of 15 bytes
        _ext(11, b"\x81\xa1a\x01"),  # a tuple that holds a map
        _ext(11, b"\xc1"),
        _ext(99, b""),  # unknown extension
        b"\x91" * 100000,  # nested too deeply
    ],
)
def test_malformed_payloads_raise_payload_error(data: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_row(data)
    if data == b"\x80\x80":
        # The one documented difference: the read path ignores bytes after a
        # whole row (encode_row never writes any).
        assert read_row(data) == {} and read_rows([data]) == [{}]
        return
    with pytest.raises(PayloadError):
        read_row(data)
    with pytest.raises(PayloadError):
        read_rows([encode_row({"id": 1}), data])


def _reads_as_decode_row(data: bytes) -> None:
    """read_row refuses what decode_row refuses, and reads decode_row's row,
    or, where decode_row refuses the bytes, the whole row they start with,
    followed by extra bytes."""
    try:
        got = read_row(data)
    except PayloadError:
        with pytest.raises(PayloadError):
            decode_row(data)
        return
    try:
        want = decode_row(data)
    except PayloadError:
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogatepass", ext_hook=_hook
        )
        unpacker.feed(data)
        first = unpacker.unpack()
        assert unpacker.tell() < len(data), data  # refused for its trailing bytes only
        assert same(got, first)
        return
    assert same(got, want)


def _hook(code: int, data: bytes) -> Any:
    return decode_row(bytes(msgpack.packb({"v": msgpack.ExtType(code, data)})))["v"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_read_row_reads_what_decode_row_reads(data: bytes) -> None:
    _reads_as_decode_row(data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), values, max_size=4), st.binary(max_size=8))
def test_fuzz_read_row_on_a_mutated_row(row: dict[str, Any], junk: bytes) -> None:
    """Real rows with bytes flipped and cut: read_row never reads a row that
    decode_row reads differently."""
    data = bytearray(encode_row(row))
    for i, b in enumerate(junk[: len(data)]):
        data[(i * 7919) % len(data)] ^= b
    for candidate in (bytes(data), bytes(data[: len(data) // 2]), bytes(data) + junk):
        _reads_as_decode_row(candidate)


@given(st.binary(max_size=64))
def test_fuzz_decode_row_only_raises_payload_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_row(data)


# -- keys -------------------------------------------------------------------

key_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.uuids(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=tzs),
    st.dates(),
    st.binary(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(key_values, min_size=1, max_size=4))
def test_key_canonical_and_round_trip(values: list[Any]) -> None:
    key = encode_key(values)
    assert isinstance(key, str)
    assert ", " not in key.replace('", "', "")  # compact separators
    plain = decode_key(key)
    assert isinstance(plain, tuple) and len(plain) == len(values)
    # Plain values are a fixed point: re-encoding gives the same string.
    assert encode_key(plain) == key


@given(st.lists(st.one_of(st.integers(), st.text(), st.booleans(), st.none()), max_size=4))
def test_plain_keys_round_trip_exactly(values: list[Any]) -> None:
    assert decode_key(encode_key(values)) == tuple(values)
    assert [type(v) for v in decode_key(encode_key(values))] == [type(v) for v in values]


@given(st.uuids())
def test_uuid_key_equals_its_str(u: uuid.UUID) -> None:
    assert encode_key([u]) == encode_key([str(u)])
    assert encode_key([u, 5]) == encode_key([str(u), 5])


def test_key_forms() -> None:
    assert encode_key([1, "a", True, None]) == '[1,"a",true,null]'
    assert encode_key([Decimal("1.50")]) == encode_key([Decimal("1.5")]) == '["1.5"]'
    assert encode_key([Decimal("100")]) == encode_key([Decimal("1E+2")]) == '["100"]'
    assert encode_key([Decimal("-0.00")]) == '["0"]'
    long = Decimal("1.23456789012345678901234567890123456789")
    assert encode_key([long]) == '["1.23456789012345678901234567890123456789"]'
    assert encode_key([b"\x01\xab"]) == '["01ab"]'
    assert encode_key([dt.date(2024, 1, 2)]) == '["2024-01-02"]'
    assert encode_key([dt.datetime(2024, 1, 2, 3, 4, 5)]) == '["2024-01-02T03:04:05"]'
    plus2 = dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert encode_key([plus2]) == encode_key([plus2.astimezone(dt.UTC)])
    assert encode_key([2.0]) == encode_key([2]) == "[2]"
    assert encode_key([2.5]) == "[2.5]"
    assert encode_key(["é"]) == '["é"]'
    assert encode_key(()) == "[]"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), [1], {"a": 1}])
def test_bad_key_values(value: Any) -> None:
    with pytest.raises(PayloadError):
        encode_key([1, value])


@pytest.mark.parametrize("key", ["", "{}", "1", "[1,", "[NaN]", "nope"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(PayloadError):
        decode_key(key)


@given(st.integers())
def test_int_key_fast_path_matches_encode_key(n: int) -> None:
    """PrismDriver.get builds the key of a single int as f"[{n}]"."""
    assert encode_key([n]) == f"[{n}]"


def test_rows_encode_correctly_from_several_threads_at_once() -> None:
    """The wrapper encodes on its decoding thread and its store writer's at
    once; values that go through the encoder's Python hook (float32 arrays,
    Decimals) let threads switch in the middle of a row."""
    import threading

    failures: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(400):
            row = {
                "id": seed * 100_000 + i,
                "v": rng.standard_normal(64).astype(np.float32),
                "d": Decimal(i) / 7,
                "t": "x" * int(rng.integers(0, 300)),
            }
            try:
                back = decode_row(encode_row(row))
            except Exception as exc:  # a mixed-up buffer may not decode at all
                failures.append(f"thread {seed} row {i}: {exc!r}")
                return
            if back["id"] != row["id"] or back["v"].tobytes() != row["v"].tobytes():
                failures.append(f"thread {seed} row {i}: decoded to another row")
                return

    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
