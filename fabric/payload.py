"""Row images and primary keys as they travel inside frames.

The wrapper encodes each decoded source row (a column -> Python value mapping
from psycopg or the MySQL decoder) with encode_row into a frame's payload
block, and its primary key with encode_key into the keys block; the driver
decodes them back into exactly the same Python values.

Row format (UTF-8 JSON, an object):

    {"v": {column: value, ...}, "t": {column: tag, ...}}

"v" holds every column. A value that JSON carries exactly by itself (None,
bool, an int of at most 64 bits, a finite float, a str, and lists/dicts made
only of those, e.g. a json/jsonb column) is stored as is, with no tag. Any
other value is stored in an encoded form and its column is named in "t" with
the tag that says how to read it. Column names and the keys of user dicts
are only ever keys, never interpreted, so no user data can be mistaken for a
tag. "t" is left out when no column needs one. Tags:

    "f"   float nan/inf/-inf           "nan", "inf", "-inf"
    "I"   int wider than 64 bits       hex string, e.g. "-0x1f..."
    "d"   decimal.Decimal              str(d): keeps exponent, trailing zeros, NaN
    "b"   bytes                        base64 (standard alphabet, padded)
    "dt"  datetime.datetime            isoformat(); aware ones keep their offset
    "dz"  datetime, sub-second offset  [naive isoformat, offset in microseconds]
    "da"  datetime.date                isoformat()
    "ti"  datetime.time                isoformat()
    "tz"  time, sub-second offset      [naive isoformat, offset in microseconds]
    "td"  datetime.timedelta           [days, seconds, microseconds]
    "u"   uuid.UUID                    canonical 36-char str
    "F8"  non-empty list of floats     base64 of little-endian float64s (exact)
    "F4"  1-D float32 numpy array      base64 of little-endian float32s (decodes
                                       to a read-only float32 array)
    "x"   any other list/tuple/dict    a tagged tree, see below

In a tagged tree every JSON array is a node ["<tag>", ...]: ["L", n1, n2...]
a list, ["T", ...] a tuple, ["M", {key: node}] a dict with str keys, and
["<scalar tag>", value] one of the scalar tags above; JSON scalars (null,
bool, number, string) stand for themselves. Decoding gives back the same types
and values, except that bytearray/memoryview come back as bytes, numpy arrays
as lists of floats, subclasses of the builtin types as the builtin type, and
time zones as fixed offsets.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from prism.fabric.errors import PayloadError

_dumps_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# Used only when a str holds a lone surrogate, which UTF-8 cannot carry raw.
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode
# The C escapers json.dumps itself uses for str values.
_quote_utf8: Callable[[str], str] = json.encoder.encode_basestring
_quote_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_loads = json.JSONDecoder(parse_constant=_reject_constant).decode

_INT64_BITS = 64


# -- scalar tags ------------------------------------------------------------


def _enc_float(v: float) -> str:
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def _dec_float(s: Any) -> float:
    if s not in ("nan", "inf", "-inf"):
        raise ValueError(f"bad non-finite float {s!r}")
    return float(s)


def _dec_bigint(s: Any) -> int:
    if not isinstance(s, str):
        raise ValueError("bad wide int")
    return int(s, 16)


def _enc_bytes(v: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(v).decode("ascii")


def _dec_bytes(s: Any) -> bytes:
    return base64.b64decode(s, validate=True)


def _dec_decimal(s: Any) -> Decimal:
    if not isinstance(s, str):
        raise ValueError("bad decimal")
    return Decimal(s)


def _dec_timedelta(v: Any) -> dt.timedelta:
    days, seconds, micros = v
    if not all(type(x) is int for x in v):
        raise ValueError("bad timedelta")
    return dt.timedelta(days=days, seconds=seconds, microseconds=micros)


def _enc_f8(v: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(v)}d", *v)).decode("ascii")


def _dec_f8(s: Any) -> list[float]:
    raw = base64.b64decode(s, validate=True)
    if not raw or len(raw) % 8:
        raise ValueError("bad float64 list")
    return np.frombuffer(raw, dtype="<f8").tolist()


def _dec_f4(s: Any) -> np.ndarray:
    # A float32 array comes back as one (read-only): a 384-d vector column
    # then costs 1.5 kB in the driver's rows instead of 12 kB of floats.
    raw = base64.b64decode(s, validate=True)
    if len(raw) % 4:
        raise ValueError("bad float32 list")
    return np.frombuffer(raw, dtype=np.float32)


def _dec_iso(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def dec(s: Any) -> Any:
        if not isinstance(s, str):
            raise ValueError("bad iso value")
        return parse(s)

    return dec


_US = dt.timedelta(microseconds=1)


def _dec_zoned(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    # Python 3.11's fromisoformat misreads offsets with a fraction of a second
    # ("+00:00:00.000001"), so those travel as [naive isoformat, offset in us].
    def dec(v: Any) -> Any:
        naive, off = v
        if not isinstance(naive, str) or type(off) is not int:
            raise ValueError("bad zoned value")
        return parse(naive).replace(tzinfo=dt.timezone(dt.timedelta(microseconds=off)))

    return dec


def _dec_uuid(s: Any) -> uuid.UUID:
    if not isinstance(s, str):
        raise ValueError("bad uuid")
    return uuid.UUID(s)


# Decoders of the tags; the tree tag "x" is handled separately.
_SCALAR_DECODERS: dict[str, Callable[[Any], Any]] = {
    "f": _dec_float,
    "I": _dec_bigint,
    "d": _dec_decimal,
    "b": _dec_bytes,
    "dt": _dec_iso(dt.datetime.fromisoformat),
    "da": _dec_iso(dt.date.fromisoformat),
    "ti": _dec_iso(dt.time.fromisoformat),
    "dz": _dec_zoned(dt.datetime.fromisoformat),
    "tz": _dec_zoned(dt.time.fromisoformat),
    "td": _dec_timedelta,
    "u": _dec_uuid,
    "F8": _dec_f8,
    "F4": _dec_f4,
}


# -- encoding ---------------------------------------------------------------


def _is_plain(v: Any) -> bool:
    """True when json.dumps/loads gives ``v`` back with the same types."""
    t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return v.bit_length() <= _INT64_BITS
    if t is float:
        return math.isfinite(v)
    if t is list:
        return all(map(_is_plain, v))
    if t is dict:
        return all(type(k) is str for k in v) and all(map(_is_plain, v.values()))
    return False


def _encode_scalar(v: Any) -> tuple[str, Any] | None:
    """(tag, encoded) for an exact builtin/stdlib scalar that plain JSON would
    not give back; None for anything else."""
    t = type(v)
    if t is float:
        return "f", _enc_float(v)
    if t is int:
        return "I", hex(v)
    if t is Decimal:
        return "d", str(v)
    if t is bytes or t is bytearray or t is memoryview:
        return "b", _enc_bytes(v)
    if t is dt.datetime:
        off = v.utcoffset()
        if off is not None and off.microseconds:
            return "dz", [v.replace(tzinfo=None).isoformat(), off // _US]
        return "dt", v.isoformat()
    if t is dt.date:
        return "da", v.isoformat()
    if t is dt.time:
        off = v.utcoffset()
        if off is not None and off.microseconds:
            return "tz", [v.replace(tzinfo=None).isoformat(), off // _US]
        return "ti", v.isoformat()
    if t is dt.timedelta:
        return "td", [v.days, v.seconds, v.microseconds]
    if t is uuid.UUID:
        return "u", str(v)
    return None


def _builtin(v: Any) -> Any:
    """``v`` as its builtin base type (an IntEnum as int, a numpy scalar as
    its Python value), or _NOT_SUPPORTED. Only reached off the fast paths."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, int):
        return bool(v) if isinstance(v, bool) else int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    if isinstance(v, Decimal):
        return Decimal(v)
    if isinstance(v, bytes):
        return bytes(v)
    if isinstance(v, uuid.UUID):
        return uuid.UUID(int=v.int)
    if isinstance(v, dt.datetime):
        return dt.datetime(
            v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.tzinfo, fold=v.fold
        )
    if isinstance(v, dt.date):
        return dt.date(v.year, v.month, v.day)
    if isinstance(v, dt.time):
        return dt.time(v.hour, v.minute, v.second, v.microsecond, v.tzinfo, fold=v.fold)
    if isinstance(v, dt.timedelta):
        return dt.timedelta(days=v.days, seconds=v.seconds, microseconds=v.microseconds)
    if isinstance(v, list):
        return list(v)
    if isinstance(v, tuple):
        return tuple(v)
    if isinstance(v, Mapping):
        return dict(v)
    return _NOT_SUPPORTED


_NOT_SUPPORTED = object()


def _unsupported(column: str, v: Any) -> PayloadError:
    return PayloadError(
        f"column {column!r}: cannot encode a value of type {type(v).__module__}."
        f"{type(v).__qualname__} into a row payload"
    )


def _tree(v: Any, column: str) -> Any:
    """The tagged-tree form of ``v`` (see the module docstring)."""
    t = type(v)
    if t is str or t is bool or v is None or (t is int and v.bit_length() <= _INT64_BITS):
        return v
    if t is float and math.isfinite(v):
        return v
    if t is list:
        return ["L", *(_tree(x, column) for x in v)]
    if t is tuple:
        return ["T", *(_tree(x, column) for x in v)]
    if t is dict:
        for k in v:
            if type(k) is not str:
                raise PayloadError(
                    f"column {column!r}: dict key {k!r} of type {type(k).__name__} "
                    f"is not a str; only str keys can be encoded"
                )
        return ["M", {k: _tree(x, column) for k, x in v.items()}]
    if t is np.ndarray:
        return ["L", *(_tree(x, column) for x in v.tolist())]
    enc = _encode_scalar(v)
    if enc is not None:
        return list(enc)
    b = _builtin(v)
    if b is _NOT_SUPPORTED:
        raise _unsupported(column, v)
    return _tree(b, column)


def _encode_value(column: str, v: Any) -> tuple[str | None, Any]:
    t = type(v)
    if t is list:
        if v and list(map(type, v)).count(float) == len(v):
            return "F8", _enc_f8(v)
        if _is_plain(v):
            return None, v
        return "x", _tree(v, column)
    if t is dict:
        if _is_plain(v):
            return None, v
        return "x", _tree(v, column)
    if t is tuple:
        return "x", _tree(v, column)
    if t is np.ndarray:
        if v.ndim == 1 and v.dtype == np.float32:
            return "F4", base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        if v.ndim == 1 and v.dtype.kind == "f" and v.size:
            return "F8", base64.b64encode(v.astype("<f8").tobytes()).decode("ascii")
        raise PayloadError(
            f"column {column!r}: only 1-D float numpy arrays can be encoded, "
            f"got shape {v.shape} dtype {v.dtype}"
        )
    enc = _encode_scalar(v)
    if enc is not None:
        return enc
    b = _builtin(v)
    if b is _NOT_SUPPORTED:
        raise _unsupported(column, v)
    if _is_plain(b):
        return None, b
    return _encode_value(column, b)


# Tags whose encoded value is a str of JSON-safe ASCII (base64, hex, digits,
# isoformat): it can be quoted without going through the escaping encoder,
# which matters for the multi-KB strings of float lists.
_SAFE_STR_TAGS = frozenset({"f", "I", "d", "b", "dt", "da", "ti", "u", "F8", "F4"})


def _row_text(
    row: Mapping[str, Any], quote: Callable[[str], str], dumps: Callable[[Any], str]
) -> str:
    # Assembled by hand rather than with one json.dumps of a dict so that
    # large, already-safe strings are not scanned for escaping.
    parts: list[str] = []
    tags: dict[str, str] = {}
    for column, v in row.items():
        if type(column) is not str:
            # json would silently turn an int name into a str one.
            raise PayloadError(f"column name {column!r} is not a str")
        t = type(v)
        if t is str:
            parts.append(f"{quote(column)}:{quote(v)}")
        elif v is None:
            parts.append(f"{quote(column)}:null")
        elif t is bool:
            parts.append(f"{quote(column)}:{'true' if v else 'false'}")
        elif t is int and v.bit_length() <= _INT64_BITS:
            parts.append(f"{quote(column)}:{int.__repr__(v)}")
        elif t is float and math.isfinite(v):
            parts.append(f"{quote(column)}:{float.__repr__(v)}")
        else:
            tag, e = _encode_value(column, v)
            if tag is None:
                parts.append(f"{quote(column)}:{dumps(e)}")
            else:
                tags[column] = tag
                if tag in _SAFE_STR_TAGS:
                    parts.append(f'{quote(column)}:"{e}"')
                else:
                    parts.append(f"{quote(column)}:{dumps(e)}")
    body = ",".join(parts)
    if tags:
        return f'{{"v":{{{body}}},"t":{dumps(tags)}}}'
    return f'{{"v":{{{body}}}}}'


def encode_row(row: Mapping[str, Any]) -> bytes:
    """The payload bytes of a row image; decode_row gives it back exactly.

    Raises PayloadError naming the column when a value's type is unsupported.
    """
    try:
        return _row_text(row, _quote_utf8, _dumps_utf8).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate somewhere: only \u escapes can carry it in UTF-8.
        return _row_text(row, _quote_ascii, _dumps_ascii).encode("ascii")


# -- decoding ---------------------------------------------------------------


def _untree(node: Any) -> Any:
    if type(node) is not list:
        if type(node) is dict:
            raise ValueError("bare object in tagged tree")
        return node
    if not node:
        raise ValueError("empty node in tagged tree")
    tag = node[0]
    if tag == "L":
        return [_untree(x) for x in node[1:]]
    if tag == "T":
        return tuple(_untree(x) for x in node[1:])
    if tag == "M":
        if len(node) != 2 or type(node[1]) is not dict:
            raise ValueError("bad dict node")
        return {k: _untree(x) for k, x in node[1].items()}
    if len(node) != 2 or type(tag) is not str:
        raise ValueError("bad scalar node")
    return _SCALAR_DECODERS[tag](node[1])


def decode_row(data: bytes) -> dict[str, Any]:
    """The row image encoded by encode_row. Raises PayloadError on bad bytes."""
    try:
        doc = _loads(data.decode("utf-8"))
        values = doc["v"]
        if type(values) is not dict:
            raise ValueError('"v" is not an object')
        tags = doc.get("t")
        if tags:
            for column, tag in tags.items():
                if tag == "x":
                    values[column] = _untree(values[column])
                else:
                    values[column] = _SCALAR_DECODERS[tag](values[column])
        return values
    except PayloadError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, ArithmeticError) as exc:
        # Decimal's InvalidOperation is an ArithmeticError; binascii.Error a ValueError.
        raise PayloadError(f"malformed row payload: {type(exc).__name__}: {exc}") from None
    except RecursionError:
        raise PayloadError("malformed row payload: nested too deeply") from None


# -- keys -------------------------------------------------------------------

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
    b = _builtin(v)
    if b is _NOT_SUPPORTED or type(b) in (list, tuple, dict, dt.timedelta):
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
