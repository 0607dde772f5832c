"""Row images and primary keys as they travel and rest (row format 3).

Between the sources and everything downstream. The wrapper encodes each
decoded source row (a column -> Python value mapping from psycopg, the
pgoutput decoder or the MySQL decoder) once, stores those bytes, frames them
for drivers, and the driver keeps them as they came and decodes a row only
when a reader asks for it (`get`, a match's `row`).

The encoding is MessagePack (the `msgpack` C extension): a map of column name
to value. MessagePack carries None, bool, int (-2**63 .. 2**64-1), float64
(every bit, NaN and infinities included), str, bytes, lists and maps
natively and exactly, at about 1-2 µs a row in C. That replaced tagged JSON
with base64 (row format 2), which cost 30+ µs a row
each way and a third more bytes. A hand-written struct codec would be slower
in Python than msgpack's C, and a columnar layout would make every `get`
assemble a row from several arrays.

Values MessagePack does not carry exactly travel as extension types, each a
fixed little-endian layout:

    code  type                         data
    1     1-D float32 numpy array      the raw little-endian float32s (decodes
                                       to a read-only float32 array)
    2     decimal.Decimal              str(d), ASCII: keeps exponent, trailing
                                       zeros, NaN, sNaN, infinities
    3     naive datetime.datetime      <q  microseconds since 0001-01-01T00:00
    4     aware datetime.datetime      <qq local wall time as code 3, UTC offset
                                       in microseconds
    5     datetime.date                <i  proleptic Gregorian ordinal
    6     naive datetime.time          <q  microseconds since midnight
    7     aware datetime.time          <qq as code 6, UTC offset in microseconds
    8     datetime.timedelta           <iii days, seconds, microseconds
    9     uuid.UUID                    the 16 bytes
    10    int outside -2**63..2**64-1  big-endian two's complement
    11    tuple                        a MessagePack array of its items

Decoding gives back the same types and values, except that bytearray and
memoryview come back as bytes, other float numpy arrays as lists of floats,
subclasses of the builtin types as the builtin type, and time zones as fixed
offsets. Strings may hold lone surrogates (they pass through as
"surrogatepass" UTF-8). Maps nested in values (json columns) have str keys.

Reading (read_row, read_rows) is on every read's path in the driver (`get`,
`find`, a match's row, the change feed) and in its column indexes. It uses
ormsgpack (a Rust MessagePack codec that caches map keys): 0.27 µs for a
5-column row where decode_row takes 1.0 (benchmark/codecs.py; on a row
dominated by a list of floats both cost the same, building the floats). It
falls back to decode_row whenever ormsgpack refuses a payload: non-str map
keys, an extension it leaves to us that our hook refuses, malformed bytes.
So a row read is the row decode_row gives, and every refusal is
decode_row's PayloadError. One difference remains:
ormsgpack ignores bytes after a complete row, which decode_row refuses.
encode_row never writes any, and the payloads read this way came from it
(sealed in frames, or from the wrapper's own store); bytes from outside the
fabric (a driver's write at the wrapper) go through decode_row.

Primary keys travel separately (encode_key), as canonical compact JSON
arrays: the same logical key gives the same string whatever types it was
given in, which is what makes it a dictionary key in the store and driver.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import threading
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import msgpack
import numpy as np
import ormsgpack

from prism.fabric.errors import PayloadError

ROW_FORMAT = 3  # 2: tagged JSON with base64; 3: MessagePack (this module)

EXT_F4 = 1
EXT_DECIMAL = 2
EXT_DATETIME = 3
EXT_DATETIME_TZ = 4
EXT_DATE = 5
EXT_TIME = 6
EXT_TIME_TZ = 7
EXT_TIMEDELTA = 8
EXT_UUID = 9
EXT_BIGINT = 10
EXT_TUPLE = 11

_Q = struct.Struct("<q")
_QQ = struct.Struct("<qq")
_I = struct.Struct("<i")
_III = struct.Struct("<iii")
_EPOCH = dt.datetime(1, 1, 1)
# A dtype object, not the string: np.frombuffer parses "<f4" on every call,
# a sixth of decoding a row with a 384-d vector (measured 2.51 -> 2.18 µs).
_F4 = np.dtype("<f4")
_US = dt.timedelta(microseconds=1)


def _time_us(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond


def _time_of(us: int) -> dt.time:
    s, micro = divmod(us, 1_000_000)
    m, sec = divmod(s, 60)
    h, minute = divmod(m, 60)
    return dt.time(h, minute, sec, micro)


def _default(v: Any) -> Any:
    """MessagePack's hook for everything it does not pack by itself (with
    strict_types, subclasses of the builtin types come here too)."""
    t = type(v)
    if t is np.ndarray:
        if v.ndim == 1 and v.dtype == np.float32:
            return msgpack.ExtType(EXT_F4, v.astype("<f4", copy=False).tobytes())
        if v.ndim == 1 and v.dtype.kind == "f":
            return v.astype(np.float64).tolist()
        raise TypeError(f"only 1-D float numpy arrays, got shape {v.shape} dtype {v.dtype}")
    if t is Decimal:
        return msgpack.ExtType(EXT_DECIMAL, str(v).encode("ascii"))
    if t is dt.datetime:
        off = v.utcoffset()
        local = (v.replace(tzinfo=None) - _EPOCH) // _US
        if off is None:
            return msgpack.ExtType(EXT_DATETIME, _Q.pack(local))
        return msgpack.ExtType(EXT_DATETIME_TZ, _QQ.pack(local, off // _US))
    if t is dt.date:
        return msgpack.ExtType(EXT_DATE, _I.pack(v.toordinal()))
    if t is dt.time:
        off = v.utcoffset()
        if off is None:
            return msgpack.ExtType(EXT_TIME, _Q.pack(_time_us(v)))
        return msgpack.ExtType(EXT_TIME_TZ, _QQ.pack(_time_us(v), off // _US))
    if t is dt.timedelta:
        return msgpack.ExtType(EXT_TIMEDELTA, _III.pack(v.days, v.seconds, v.microseconds))
    if t is uuid.UUID:
        return msgpack.ExtType(EXT_UUID, v.bytes)
    if t is int:  # only ints msgpack cannot carry reach here
        return msgpack.ExtType(
            EXT_BIGINT, v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)
        )
    if t is tuple:
        return msgpack.ExtType(EXT_TUPLE, _pack_nested(list(v)))
    if t is bytearray or t is memoryview:
        return bytes(v)
    return _builtin(v)


def _builtin(v: Any) -> Any:
    """``v`` as its builtin base type (an IntEnum as int, a numpy scalar as its
    Python value, a str subclass as str); TypeError when it has none."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, uuid.UUID):
        return uuid.UUID(int=v.int)
    base: Any
    for base in (bool, int, float, str, bytes, Decimal):
        if isinstance(v, base):
            return base(v)
    if isinstance(v, dt.datetime):
        return dt.datetime(
            v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo
        )
    if isinstance(v, dt.date):
        return dt.date(v.year, v.month, v.day)
    if isinstance(v, dt.time):
        return dt.time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo)
    if isinstance(v, dt.timedelta):
        return dt.timedelta(days=v.days, seconds=v.seconds, microseconds=v.microseconds)
    if isinstance(v, list):
        return list(v)
    if isinstance(v, tuple):
        return tuple(v)
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"cannot encode a value of type {type(v).__module__}.{type(v).__qualname__}")


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(
        default=_default, strict_types=True, use_bin_type=True, unicode_errors="surrogatepass"
    )


# A Packer keeps its output buffer between calls, so threads must not share
# one: the wrapper encodes rows on its decoding thread and its store writer's.
_local = threading.local()


def _thread_packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = _new_packer()
    return packer


def _pack_nested(v: Any) -> bytes:
    # A fresh packer: the module's one may be in the middle of a row.
    return bytes(_new_packer().pack(v))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_F4:
        if len(data) % 4:
            raise ValueError("float32 array of a length not divisible by 4")
        return np.frombuffer(data, dtype=_F4)
    if code == EXT_DECIMAL:
        return Decimal(data.decode("ascii"))
    if code == EXT_DATETIME:
        return _EPOCH + _Q.unpack(data)[0] * _US
    if code == EXT_DATETIME_TZ:
        local, off = _QQ.unpack(data)
        return (_EPOCH + local * _US).replace(tzinfo=dt.timezone(off * _US))
    if code == EXT_DATE:
        return dt.date.fromordinal(_I.unpack(data)[0])
    if code == EXT_TIME:
        return _time_of(_Q.unpack(data)[0])
    if code == EXT_TIME_TZ:
        us, off = _QQ.unpack(data)
        return _time_of(us).replace(tzinfo=dt.timezone(off * _US))
    if code == EXT_TIMEDELTA:
        days, seconds, micro = _III.unpack(data)
        return dt.timedelta(days=days, seconds=seconds, microseconds=micro)
    if code == EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == EXT_TUPLE:
        items = _unpack(data)
        if type(items) is not list:
            raise ValueError("tuple extension does not hold an array")
        return tuple(items)
    raise ValueError(f"unknown extension type {code}")


def _unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(
        data,
        ext_hook=_ext_hook,
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogatepass",
        use_list=True,
    )


_CONTAINERS = frozenset({dict, list, tuple})


def _check_map_keys(column: str, v: Any) -> None:
    """Maps inside values (json columns) must have str keys, as JSON's do:
    MessagePack would carry others, but no source produces them and a
    driver's write of one would not mean what it says."""
    if type(v) is dict:
        for k, x in v.items():
            if type(k) is not str:
                raise PayloadError(
                    f"column {column!r}: map key {k!r} of type {type(k).__name__} is not a "
                    "str; only str keys can be encoded"
                )
            _check_map_keys(column, x)
    # set(map(type, ...)) runs in C: a long list of scalars (a real[] column)
    # costs a few microseconds, not a Python loop.
    elif (type(v) is list or type(v) is tuple) and not _CONTAINERS.isdisjoint(set(map(type, v))):
        for x in v:
            _check_map_keys(column, x)


def encode_row(row: Mapping[str, Any]) -> bytes:
    """The payload bytes of a row image; decode_row gives it back exactly.

    Raises PayloadError naming the column when a value cannot be encoded.
    """
    if type(row) is not dict:
        row = dict(row)
    for column, v in row.items():
        if type(column) is not str:
            raise PayloadError(f"column name {column!r} is not a str")
        t = type(v)
        if t is dict or t is list or t is tuple:
            _check_map_keys(column, v)
    packer = _thread_packer()
    try:
        return bytes(packer.pack(row))
    except (TypeError, ValueError, OverflowError) as exc:
        packer.reset()
        raise _explain(row, exc) from None


def _explain(row: Mapping[str, Any], exc: Exception) -> PayloadError:
    """Which column made encoding fail, found by encoding them one by one."""
    for column, value in row.items():
        if type(column) is not str:
            return PayloadError(f"column name {column!r} is not a str")
        try:
            _new_packer().pack(value)
        except (TypeError, ValueError, OverflowError) as col_exc:
            return PayloadError(f"column {column!r}: {col_exc}")
    return PayloadError(f"row cannot be encoded: {exc}")


def decode_row(data: bytes | memoryview) -> dict[str, Any]:
    """The row image encoded by encode_row. Raises PayloadError on bad bytes."""
    try:
        row = _unpack(data)
    except (ValueError, TypeError, KeyError, struct.error, OverflowError) as exc:
        raise PayloadError(f"malformed row payload: {type(exc).__name__}: {exc}") from None
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise PayloadError(f"malformed row payload: {exc}") from None
    except ArithmeticError as exc:  # Decimal's InvalidOperation
        raise PayloadError(f"malformed row payload: {exc!r}") from None
    if type(row) is not dict:
        raise PayloadError(f"malformed row payload: a {type(row).__name__}, not a map")
    return row


_read = ormsgpack.unpackb
_DICT_ONLY = {dict}


def read_row(data: bytes) -> dict[str, Any]:
    """A row encode_row wrote (see the module docstring): decode_row's
    result, faster. Raises PayloadError on bad bytes."""
    try:
        row = _read(data, ext_hook=_ext_hook)
    except Exception:  # ormsgpack refused it: decode_row decides, and names why
        return decode_row(data)
    if type(row) is not dict:
        return decode_row(data)
    return row


def read_rows(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    """read_row of each payload, in order."""
    try:
        rows = [_read(p, ext_hook=_ext_hook) for p in payloads]
    except Exception:
        return [read_row(p) for p in payloads]
    if not _DICT_ONLY.issuperset(map(type, rows)):  # a C loop, unlike a for
        rows = [read_row(p) for p in payloads]
    return rows


# -- keys -------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode

_dumps_key = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_UTC = dt.UTC
_MAX_EXACT_FLOAT_INT = 2**53


def _key_decimal(d: Decimal) -> str:
    if not d.is_finite():
        return str(d)
    if d.is_zero():
        return "0"
    # 1.50 and 1.5 are one key in PostgreSQL's numeric; give them one string.
    # Strip zeros by hand: Decimal.normalize() would round to the context.
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    n = len(digits)
    while n > 1 and digits[n - 1] == 0:
        n -= 1
    exp += len(digits) - n
    return format(Decimal((sign, digits[:n], exp)), "f")


def _key_datetime(v: dt.datetime) -> str:
    if v.utcoffset() is None:
        return v.isoformat()
    # One instant is one key whatever offset the session displayed it in.
    try:
        return v.astimezone(_UTC).isoformat()
    except OverflowError:  # year 1 / 9999 at the edge of the range
        return v.isoformat()


def _plain_key_value(v: Any, i: int) -> Any:
    t = type(v)
    if t is str or t is bool or t is int or v is None:
        return v
    if t is uuid.UUID:
        return str(v)
    if t is Decimal:
        return _key_decimal(v)
    if t is dt.datetime:
        return _key_datetime(v)
    if t is dt.date or t is dt.time:
        return v.isoformat()
    if t is bytes or t is bytearray or t is memoryview:
        return bytes(v).hex()
    if t is float:
        if not math.isfinite(v):
            raise PayloadError(f"key value {i} is {v}; a key must be finite")
        # 2.0 and 2 compare and hash equal in Python; make them one key.
        if v.is_integer() and abs(v) < _MAX_EXACT_FLOAT_INT:
            return int(v)
        return v
    try:
        b = _builtin(v)
    except TypeError:
        b = None
    if b is None or type(b) in (list, tuple, dict, dt.timedelta):
        raise PayloadError(
            f"key value {i} has type {type(v).__module__}.{type(v).__qualname__}, "
            f"which cannot be part of a primary key"
        )
    return _plain_key_value(b, i)


def encode_key(values: Sequence[Any]) -> str:
    """Canonical string of a primary key: a compact JSON array of plain values.

    The same logical key always gives the same string, whether its parts come
    from the database (UUID, Decimal, datetime) or from a caller (their str
    forms): UUIDs become their canonical str, Decimals a plain decimal str
    without trailing zeros, aware datetimes their UTC isoformat, bytes hex,
    integral floats ints.
    """
    return _dumps_key([_plain_key_value(v, i) for i, v in enumerate(values)])


def decode_key(key: str) -> tuple[Any, ...]:
    """The plain values of a key made by encode_key."""
    try:
        values = _loads(key)
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"malformed key {key[:80]!r}: {exc}") from None
    if type(values) is not list:
        raise PayloadError(f"malformed key {key[:80]!r}: not a JSON array")
    return tuple(values)
