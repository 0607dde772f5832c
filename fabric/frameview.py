"""A large frame's fields read straight from its wire bytes (link → open_frame).

The driver receives each Subscribe message as raw bytes. protobuf's parser
(upb) copies them into its arena, and every read of a bytes field copies
again: for a 1,024-row bootstrap frame, 3.3 MB parsed and 3.3 MB more for
the vector block and the sealed rows, about a tenth of the event loop's time
in a 2nd driver's bootstrap (benchmark/README.md, "Issue 12"). `FrameView`
decodes the same wire format (proto3, `Frame` in wrapper.proto) by hand and
leaves those two blocks as memoryviews of the received bytes; the other
fields are small and become bytes, str and int as protobuf gives them.

Hand-written rather than a library because the one library here is the one
that copies; the format is a flat message of scalar and bytes fields, listed
here from protobuf's own descriptor of Frame (WIRE_FIELDS, which
prism.fabric.frames' writer, serialize_fields, walks too), so a field added
to wrapper.proto is read without a change here. What it accepts is what
protobuf accepts, field by field: varints of at most 10 bytes, uint32 and
int32 taken from their low 32 bits, int64 as two's complement, the last
occurrence of a field winning, strings strict UTF-8. Anything else
(truncation, a field number this format does not define, a known field with
another wire type) is a FrameError, as parse_frame says of the same bytes.
Nothing here is trusted before open_frame verifies the frame's watermark
over the values read.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from prism.fabric import wrapper_pb2
from prism.fabric.errors import FrameError

# Frames from this size on are read as a view (a bootstrap frame is ~3 MB);
# protobuf's C parser is quicker for the small ones a live stream carries.
VIEW_FROM_BYTES = 64 * 1024

# Frame's fields: (name, field number, type), in field number order.
_FRAME_DESCRIPTOR: Any = wrapper_pb2.Frame.DESCRIPTOR  # typed loosely by the stubs
WIRE_FIELDS: tuple[tuple[str, int, int], ...] = tuple(
    (f.name, f.number, f.type) for f in sorted(_FRAME_DESCRIPTOR.fields, key=lambda f: f.number)
)
_VIEWS = frozenset({"vectors", "sealed_rows"})  # the large blocks: never copied
# How each varint type keeps a decoded value: (bits kept, signed).
_INTEGERS = {
    FieldDescriptor.TYPE_UINT32: (32, False),
    FieldDescriptor.TYPE_INT32: (32, True),
    FieldDescriptor.TYPE_ENUM: (32, True),
    FieldDescriptor.TYPE_UINT64: (64, False),
    FieldDescriptor.TYPE_INT64: (64, True),
}
LENGTH_TYPES = (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING)
if {t for _, _, t in WIRE_FIELDS} - {*_INTEGERS, *LENGTH_TYPES}:
    raise ImportError("wrapper.proto's Frame has a field type FrameView cannot read")
_BY_NUMBER = {number: (name, kind) for name, number, kind in WIRE_FIELDS}
_DEFAULTS = {
    name: "" if kind == FieldDescriptor.TYPE_STRING else b"" if kind in LENGTH_TYPES else 0
    for name, _, kind in WIRE_FIELDS
}
_VARINT, _LENGTH = 0, 2


class FrameView:
    """The fields of one Frame, named as wrapper_pb2.Frame names them (the
    annotations are for the type checker; the fields themselves come from
    WIRE_FIELDS, and a test keeps the two the same)."""

    __slots__ = tuple(name for name, _, _ in WIRE_FIELDS)

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
        for name, default in _DEFAULTS.items():
            setattr(self, name, default)
        _read_fields(self, data)


def _read_fields(view: FrameView, data: bytes) -> None:
    buf = memoryview(data)
    n = len(data)
    i = 0
    while i < n:
        tag, i = _varint(data, i, n)
        number, wire_type = tag >> 3, tag & 7
        name, kind = _BY_NUMBER.get(number, ("", -1))
        if wire_type == _VARINT and kind in _INTEGERS:
            value, i = _varint(data, i, n)
            bits, signed = _INTEGERS[kind]
            value &= (1 << bits) - 1  # protobuf keeps the low bits of a wider varint
            if signed and value >> (bits - 1):
                value -= 1 << bits
            setattr(view, name, value)
            continue
        if wire_type != _LENGTH or kind not in LENGTH_TYPES:
            raise FrameError(f"frame carries fields this format does not define: [{number}]")
        length, i = _varint(data, i, n)
        end = i + length
        if end > n:
            raise FrameError(f"{n} bytes do not parse as a Frame: field {number} runs past the end")
        if name in _VIEWS:
            setattr(view, name, buf[i:end])
        elif kind == FieldDescriptor.TYPE_BYTES:
            setattr(view, name, data[i:end])
        else:
            try:
                setattr(view, name, data[i:end].decode("utf-8"))
            except UnicodeDecodeError:
                raise FrameError(
                    f"{n} bytes do not parse as a Frame: field {number} is not UTF-8"
                ) from None
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
