"""FrameView (prism.fabric.frameview) against protobuf's own parser: the same
fields from the same bytes, the same refusals, and open_frame's result the
same whichever read the frame."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_frames import SEALER, make, sealers

from prism.fabric import wrapper_pb2
from prism.fabric.errors import FrameError
from prism.fabric.frames import open_frame, parse_frame, read_frame
from prism.fabric.frameview import VIEW_FROM_BYTES, WIRE_FIELDS, FrameView
from prism.fabric.payload import encode_row

FIELDS = FrameView.__slots__
ROWS = 2_000  # test_frames' rows are small: this many make a frame read in place


def _frame(count: int = ROWS, **over: Any) -> wrapper_pb2.Frame:
    """test_frames.make's frame, upserts only (so open_frame leaves the
    vectors where they lie), with a non-ASCII stream and an envelope."""
    upserts: dict[str, Any] = dict(
        ops=b"U" * count,
        vector_mask=np.ones(count, dtype=bool),
        payloads=[encode_row({"id": i}) for i in range(count)],
    )
    frame = make(count, **(upserts | {"stream_id": "stream-ü"} | over))
    frame.subscription = b"s" * 16
    frame.binding = b"b" * 32
    return frame


def _fields(frame: Any) -> dict[str, Any]:
    out = {}
    for name in FIELDS:
        v = getattr(frame, name)
        out[name] = bytes(v) if isinstance(v, memoryview) else v
    return out


LARGE = _frame().SerializeToString()


def test_a_large_frame_reads_as_protobuf_parses_it_and_its_blocks_are_not_copied() -> None:
    assert len(LARGE) >= VIEW_FROM_BYTES
    view = read_frame(LARGE)
    assert isinstance(view, FrameView)
    assert _fields(view) == _fields(parse_frame(LARGE))
    assert isinstance(view.vectors, memoryview) and view.vectors.obj is LARGE
    assert isinstance(view.sealed_rows, memoryview) and view.sealed_rows.obj is LARGE
    small = _frame(2).SerializeToString()
    assert isinstance(read_frame(small), wrapper_pb2.Frame)


@pytest.mark.parametrize(
    "over",
    [
        {"kind": wrapper_pb2.RESET, "commit_time_us": 2**62},
        {"commit_time_us": -(2**63)},
        {"commit_position": 2**64 - 1, "head_position": 0},
    ],
)
def test_edge_values_read_as_protobuf_reads_them(over: dict[str, Any]) -> None:
    data = _frame(**over).SerializeToString()
    assert _fields(FrameView(data)) == _fields(parse_frame(data))


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def test_wide_varints_repeats_and_a_negative_enum_read_as_protobuf_reads_them() -> None:
    """uint32 fields keep the low 32 bits of a wider varint, int32 (the kind)
    reads sign-extended, and a field given twice keeps its last value."""
    extra = b"".join(
        [
            _varint(1 << 3) + _varint(2**32 + 5),  # format_version: 5
            _varint(5 << 3) + _varint(2**64 - 1),  # kind: -1
            _varint((6 << 3) | 2) + _varint(3) + b"abc",  # table again: the last wins
            _varint((17 << 3) | 2) + _varint(0),  # vectors again, empty
        ]
    )
    data = LARGE + extra
    view, parsed = FrameView(data), parse_frame(data)
    assert _fields(view) == _fields(parsed)
    assert (view.format_version, view.kind, view.table, bytes(view.vectors)) == (5, -1, "abc", b"")


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (_varint((40 << 3) | 2) + _varint(1) + b"x", "does not define: [40]"),
        (_varint(1 << 3 | 2) + _varint(1) + b"x", "does not define: [1]"),  # wrong wire type
        (_varint((13 << 3) | 5) + b"abcd", "does not define: [13]"),
        (_varint((13 << 3) | 2) + _varint(50) + b"short", "runs past the end"),
        (_varint(7 << 3) + b"\xff" * 10 + b"\x01", "past 10 bytes"),
        (_varint(7 << 3) + b"\xff", "cut off"),
        (_varint((2 << 3) | 2) + _varint(2) + b"\xc3\x28", "not UTF-8"),
        (_varint(0) + _varint(1), "does not define: [0]"),
    ],
)
def test_bytes_protobuf_refuses_are_refused(extra: bytes, why: str) -> None:
    data = LARGE + extra
    with pytest.raises(FrameError):
        parse_frame(data)
    with pytest.raises(FrameError, match=why.replace("[", r"\[").replace("]", r"\]")):
        FrameView(data)


def test_mangled_frames_raise_frame_error_or_read_as_protobuf_reads_them() -> None:
    """Cut short or with a byte changed anywhere in its first 300 bytes or its
    last 200 (the field headers and the small fields), a frame is refused by
    both readers alike, or read by both to the same fields; nothing else is
    raised."""
    rng = np.random.default_rng(0)
    cases = [LARGE[:n] for n in rng.integers(0, len(LARGE), 60)]
    for at in [*range(300), *range(len(LARGE) - 200, len(LARGE))]:
        mangled = bytearray(LARGE)
        mangled[at] ^= int(rng.integers(1, 256))
        cases.append(bytes(mangled))
    for data in cases:
        try:
            parsed = _fields(parse_frame(data))
        except FrameError:
            parsed = None
        try:
            viewed = _fields(FrameView(data))
        except FrameError:
            viewed = None
        assert viewed == parsed


def test_open_frame_gives_the_same_frame_from_either_reader() -> None:
    a = open_frame(parse_frame(LARGE), sealers, tenant_id="acme", stream_id=None, unseal=False)
    b = open_frame(FrameView(LARGE), sealers, tenant_id="acme", stream_id=None, unseal=False)
    assert (a.keys, a.ops, a.payloads, a.old_keys) == (b.keys, b.ops, b.payloads, b.old_keys)
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(a.vectors, b.vectors) and a.vectors.shape == (ROWS, SEALER.dim)
    assert (a.commit_position, a.stream_id, a.table) == (b.commit_position, b.stream_id, b.table)


def test_a_held_frame_keeps_its_vectors_not_the_message_they_were_read_from() -> None:
    """A frame of a transaction still open is held until its last frame: its
    vectors are then copied out of the received message (which holds the
    sealed rows too); a frame applied at once keeps the view."""
    from prism.driver.follow import Follower

    def opened(frame: wrapper_pb2.Frame) -> Any:
        data = frame.SerializeToString()
        return open_frame(FrameView(data), sealers, tenant_id="acme", stream_id=None, unseal=False)

    follower = Follower(stream_id="stream-ü", position=5)
    first = opened(_frame(sequence=1, commit_position=0, positions=list(range(10, 10 + ROWS))))
    assert not first.vectors.flags.owndata
    assert follower.on_frame(first) is None
    assert first.vectors.flags.owndata  # held: copied
    last = opened(_frame(sequence=2, positions=list(range(10 + ROWS, 10 + 2 * ROWS))))
    batch = follower.on_frame(last)
    assert batch is not None and batch.frames == [first, last]
    assert not last.vectors.flags.owndata  # applied at once: still the view


def test_the_views_declared_fields_are_the_messages() -> None:
    """FrameView reads every field wrapper.proto's Frame has (WIRE_FIELDS,
    from protobuf's descriptor); its annotations, for the type checker, name
    the same fields."""
    names = [name for name, _, _ in WIRE_FIELDS]
    assert list(FrameView.__slots__) == names
    assert sorted(FrameView.__annotations__) == sorted(names)
