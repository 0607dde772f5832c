"""A large frame's fields read straight from its wire bytes (link → open_frame).

The driver receives each Subscribe message as raw bytes. protobuf's parser
(upb) copies them into its arena, and every read of a bytes field copies
again: for a 1,024-row bootstrap frame, 3.3 MB parsed and 3.3 MB more for
the vector block and the sealed rows, about a tenth of the event loop's time
in a 2nd driver's bootstrap (benchmark/README.md, "Issue 12"). `FrameView`
decodes the same wire format (proto3, `Frame` in wrapper.proto) by hand and
leaves those two blocks as memoryviews of the received bytes; the other
fields are small and become bytes, str and int as protobuf gives them.

Hand-written rather than a library because the one library here is the
one that copies; the format is a flat message of 23 scalar and bytes
fields. What it accepts is what protobuf accepts, field by field: varints of
at most 10 bytes, uint32 and int32 taken from their low 32 bits, int64 as
two's complement, the last occurrence of a field winning, strings strict
UTF-8. Anything else (truncation, a field number this format does not
define, a known field with another wire type) is a FrameError, as
parse_frame says of the same bytes. Nothing here is trusted before
open_frame verifies the frame's watermark over the values read.
"""

from __future__ import annotations

from prism.fabric.errors import FrameError

# Frames from this size on are read as a view (a bootstrap frame is ~3 MB);
# protobuf's C parser is quicker for the small ones a live stream carries.
VIEW_FROM_BYTES = 64 * 1024

_UINT32 = {1: "format_version", 4: "key_epoch", 11: "count", 12: "vector_dim"}
_UINT64 = {7: "sequence", 8: "commit_position", 9: "head_position"}
_STRINGS = {2: "tenant_id", 3: "stream_id", 6: "table"}
_BYTES = {
    13: "keys",
    14: "ops",
    15: "positions",
    16: "vector_mask",
    18: "payloads",
    20: "aead_nonce",
    21: "subscription",
    30: "watermark",
    31: "binding",
}
_VIEWS = {17: "vectors", 19: "sealed_rows"}  # the large blocks: never copied
_KIND, _COMMIT_TIME = 5, 10
_VARINT, _LENGTH = 0, 2
_MASK64 = (1 << 64) - 1


class FrameView:
    """The fields of one Frame, named as wrapper_pb2.Frame names them."""

    __slots__ = (
        "aead_nonce",
        "binding",
        "commit_position",
        "commit_time_us",
        "count",
        "format_version",
        "head_position",
        "key_epoch",
        "keys",
        "kind",
        "ops",
        "payloads",
        "positions",
        "sealed_rows",
        "sequence",
        "stream_id",
        "subscription",
        "table",
        "tenant_id",
        "vector_dim",
        "vector_mask",
        "vectors",
        "watermark",
    )

    format_version: int
    tenant_id: str
    stream_id: str
    key_epoch: int
    kind: int
    table: str
    sequence: int
    commit_position: int
    head_position: int
    commit_time_us: int
    count: int
    vector_dim: int
    keys: bytes
    ops: bytes
    positions: bytes
    vector_mask: bytes
    vectors: bytes | memoryview
    payloads: bytes
    sealed_rows: bytes | memoryview
    aead_nonce: bytes
    subscription: bytes
    watermark: bytes
    binding: bytes

    def __init__(self, data: bytes) -> None:
        for name in (*_UINT32.values(), *_UINT64.values(), "kind", "commit_time_us"):
            setattr(self, name, 0)
        for name in _STRINGS.values():
            setattr(self, name, "")
        for name in (*_BYTES.values(), *_VIEWS.values()):
            setattr(self, name, b"")
        _read_fields(self, data)


def _read_fields(view: FrameView, data: bytes) -> None:
    buf = memoryview(data)
    n = len(data)
    i = 0
    while i < n:
        tag, i = _varint(data, i, n)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, i = _varint(data, i, n)
            if number in _UINT32:
                setattr(view, _UINT32[number], value & 0xFFFFFFFF)
            elif number in _UINT64:
                setattr(view, _UINT64[number], value & _MASK64)
            elif number == _KIND:  # an int32 enum
                low = value & 0xFFFFFFFF
                view.kind = low - (1 << 32) if low >= 1 << 31 else low
            elif number == _COMMIT_TIME:  # int64
                v = value & _MASK64
                view.commit_time_us = v - (1 << 64) if v >= 1 << 63 else v
            else:
                raise _undefined(number)
            continue
        if wire_type != _LENGTH:
            raise _undefined(number)
        length, i = _varint(data, i, n)
        end = i + length
        if end > n:
            raise FrameError(f"{n} bytes do not parse as a Frame: field {number} runs past the end")
        if number in _VIEWS:
            setattr(view, _VIEWS[number], buf[i:end])
        elif number in _BYTES:
            setattr(view, _BYTES[number], data[i:end])
        elif number in _STRINGS:
            try:
                setattr(view, _STRINGS[number], data[i:end].decode("utf-8"))
            except UnicodeDecodeError:
                raise FrameError(
                    f"{n} bytes do not parse as a Frame: field {number} is not UTF-8"
                ) from None
        else:
            raise _undefined(number)
        i = end


def _varint(data: bytes, i: int, n: int) -> tuple[int, int]:
    """The varint at data[i:] and the index after it (at most 10 bytes)."""
    value = 0
    for shift in range(0, 70, 7):
        if i >= n:
            raise FrameError(f"{n} bytes do not parse as a Frame: a varint is cut off")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
    raise FrameError(f"{n} bytes do not parse as a Frame: a varint runs past 10 bytes")


def _undefined(number: int) -> FrameError:
    return FrameError(f"frame carries fields this format does not define: [{number}]")
