"""Frame building, watermarking and opening (prism.fabric.frames)."""

from __future__ import annotations

import contextlib
import struct
import time
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism.fabric import wrapper_pb2
from prism.fabric.errors import FabricError, FrameError, WatermarkError
from prism.fabric.frames import DecodedFrame, build_frame, canonical_bytes, open_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.fabric.sealing import Sealer

SECRET = b"f" * 32
DIM = 8
SEALER = Sealer(derive_epoch_keys(SECRET, "acme", 3), DIM)
OTHER = Sealer(derive_epoch_keys(b"g" * 32, "acme", 3), DIM)
BLOCKS = ("keys", "ops", "positions", "vector_mask", "vectors", "payloads")


def sealers(epoch: int) -> Sealer:
    if epoch != 3:
        raise KeyError(epoch)
    return SEALER


def make(count: int = 5, *, kind: int = wrapper_pb2.CHANGES, **over: Any) -> wrapper_pb2.Frame:
    rng = np.random.default_rng(count)
    ops = (b"UUDUU" * count)[:count]
    args: dict[str, Any] = dict(
        sealer=SEALER,
        tenant_id="acme",
        stream_id="stream-1",
        kind=kind,
        table="public.items",
        sequence=7,
        commit_position=100 + count,
        head_position=500,
        commit_time_us=1_700_000_000_000_000,
        keys=[encode_key([i, f"k{i}"]) for i in range(count)],
        ops=ops,
        positions=[100 + i for i in range(count)],
        vectors=rng.standard_normal((count, DIM)).astype(np.float32),
        vector_mask=np.array([op == ord("U") for op in ops], dtype=bool),
        payloads=[encode_row({"id": i}) if op == ord("U") else b"" for i, op in enumerate(ops)],
        vector_dim=DIM,
    )
    args.update(over)
    return build_frame(**args)


def resign(frame: wrapper_pb2.Frame, sealer: Sealer = SEALER) -> wrapper_pb2.Frame:
    frame.watermark = sealer.watermark(canonical_bytes(frame))
    return frame


def open_(frame: wrapper_pb2.Frame, stream_id: str | None = "stream-1") -> DecodedFrame:
    return open_frame(frame, sealers, tenant_id="acme", stream_id=stream_id)


def test_round_trip() -> None:
    vectors = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    frame = make(vectors=vectors)
    assert frame.key_epoch == 3 and frame.format_version == 1 and frame.count == 5
    assert len(frame.watermark) == 32
    # What travels is sealed, not the plain vectors.
    sent = np.frombuffer(frame.vectors, dtype="<f4").reshape(5, DIM)
    assert not np.allclose(sent[0], vectors[0], atol=0.1)
    d = open_(wrapper_pb2.Frame.FromString(frame.SerializeToString()))
    assert (d.kind, d.tenant_id, d.stream_id, d.key_epoch, d.table) == (
        wrapper_pb2.CHANGES,
        "acme",
        "stream-1",
        3,
        "public.items",
    )
    assert (d.sequence, d.commit_position, d.head_position) == (7, 105, 500)
    assert d.commit_time_us == 1_700_000_000_000_000
    assert d.keys == [encode_key([i, f"k{i}"]) for i in range(5)]
    assert d.ops == b"UUDUU" and d.count == 5 and d.vector_dim == DIM
    assert d.positions.dtype == np.uint64 and d.positions.tolist() == [100, 101, 102, 103, 104]
    assert d.vector_mask.tolist() == [True, True, False, True, True]
    assert d.vectors.dtype == np.float32 and d.vectors.shape == (5, DIM)
    np.testing.assert_allclose(d.vectors[d.vector_mask], vectors[d.vector_mask], atol=1e-5)
    assert not d.vectors[2].any()
    assert d.payloads[2] == b"" and decode_row(d.payloads[0]) == {"id": 0}


def test_heartbeat_is_watermarked() -> None:
    hb = make(
        0,
        kind=wrapper_pb2.HEARTBEAT,
        keys=[],
        ops=b"",
        positions=[],
        vectors=None,
        vector_mask=None,
        payloads=[],
        commit_position=0,
    )
    assert hb.count == 0 and hb.watermark
    d = open_(hb)
    assert d.kind == wrapper_pb2.HEARTBEAT and d.count == 0 and d.head_position == 500
    assert d.vectors.shape == (0, 0) and d.positions.shape == (0,)
    hb.head_position = 501
    with pytest.raises(WatermarkError):
        open_(hb)


def test_table_without_vectors() -> None:
    frame = make(3, vectors=None, vector_mask=None)
    assert frame.vector_dim == 0 and frame.vectors == b"" and frame.vector_mask == b"\0\0\0"
    d = open_(frame)
    assert d.vector_dim == 0 and d.vectors.shape == (3, 0) and not d.vector_mask.any()


def test_mask_none_means_every_row() -> None:
    d = open_(make(2, ops=b"UU", payloads=[b"{}", b"{}"], vector_mask=None))
    assert d.vector_mask.all()


def test_negative_commit_time_and_big_positions() -> None:
    big = 2**64 - 2
    d = open_(
        make(2, commit_time_us=-5, positions=[big, big + 1], ops=b"UU", payloads=[b"{}", b"{}"])
    )
    assert d.commit_time_us == -5 and d.positions.tolist() == [big, big + 1]


def test_canonical_bytes_as_documented() -> None:
    frame = make(2, ops=b"UD", payloads=[b"{}", b""])
    expected = b""
    for field in frame.DESCRIPTOR.fields:
        if field.name == "watermark":
            continue
        value = getattr(frame, field.name)
        if isinstance(value, int):
            data = struct.pack("<q" if value < 0 else "<Q", value)
        elif isinstance(value, str):
            data = value.encode()
        else:
            data = value
        expected += struct.pack("<IQ", field.number, len(data)) + data
    assert [f.number for f in frame.DESCRIPTOR.fields][:18] == list(range(1, 19))
    assert canonical_bytes(frame) == expected
    assert frame.watermark == SEALER.watermark(expected)


def test_keys_block_layout() -> None:
    frame = make(2, keys=['["a"]', '["é"]'], ops=b"UU", payloads=[b"{}", b"{}"])
    assert frame.keys == b'\x05\x00\x00\x00["a"]\x06\x00\x00\x00["\xc3\xa9"]'
    assert frame.ops == b"UU"
    assert frame.positions == struct.pack("<2Q", 100, 101)
    assert frame.vector_mask == b"\x01\x01"
    assert frame.payloads == b"\x02\x00\x00\x00{}" * 2


# -- tampering ---------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS)
def test_flip_any_byte_of_any_block(block: str) -> None:
    frame = make(4)
    data = getattr(frame, block)
    assert data
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = wrapper_pb2.Frame()
            tampered.CopyFrom(frame)
            setattr(tampered, block, data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :])
            with pytest.raises(WatermarkError):
                open_(tampered)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format_version", 2),
        ("tenant_id", "acmf"),
        ("stream_id", "stream-2"),
        ("kind", wrapper_pb2.RESET),
        ("table", "public.itemz"),
        ("sequence", 8),
        ("commit_position", 0),
        ("head_position", 1),
        ("commit_time_us", 0),
        ("count", 4),
        ("vector_dim", 4),
    ],
)
def test_changed_field_fails_watermark(field: str, value: Any) -> None:
    frame = make(5)
    setattr(frame, field, value)
    with pytest.raises(WatermarkError):
        open_frame(frame, sealers, tenant_id=frame.tenant_id, stream_id=None)


def test_moving_bytes_between_blocks_fails_watermark() -> None:
    # Same concatenation, different split: the lengths in canonical() catch it.
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    frame.vector_mask, frame.vectors = frame.vector_mask + frame.vectors[:1], frame.vectors[1:]
    with pytest.raises(WatermarkError):
        open_(frame)


def test_wrong_key_and_unknown_epoch() -> None:
    with pytest.raises(WatermarkError, match="watermark"):
        open_(resign(make(), OTHER))
    frame = make()
    frame.key_epoch = 4
    with pytest.raises(WatermarkError, match="epoch 4"):
        open_(resign(frame))
    frame = make()
    frame.watermark = b""
    with pytest.raises(WatermarkError):
        open_(frame)


def test_unsigned_frames_are_rejected() -> None:
    frame = make(2, sealer=None, vectors=None, vector_mask=None, ops=b"UU", payloads=[b"{}", b"{}"])
    assert frame.watermark == b"" and frame.key_epoch == 0
    with pytest.raises(WatermarkError):
        open_frame(frame, lambda e: SEALER, tenant_id="acme", stream_id=None)


# -- re-signed but malformed -------------------------------------------------


def _mutations() -> list[tuple[str, Any]]:
    f = make(5)
    return [
        ("keys", f.keys[:-1]),
        ("keys", f.keys + b"x"),
        ("keys", f.keys[:3]),
        ("keys", f.keys[:4] + b"\xff" + f.keys[5:]),
        ("keys", b"\xff\xff\xff\xff" + f.keys[4:]),
        ("keys", b""),
        ("ops", f.ops[:-1]),
        ("ops", b"UUXUU"),
        ("positions", f.positions[:-1]),
        ("positions", f.positions[8:16] + f.positions[:8] + f.positions[16:]),
        ("vector_mask", f.vector_mask[:-1]),
        ("vector_mask", b"\x01\x02\x00\x01\x01"),
        ("vectors", f.vectors[:-4]),
        ("vectors", f.vectors + b"\0\0\0\0"),
        ("payloads", f.payloads[:-1]),
        ("payloads", f.payloads + b"\0"),
        ("payloads", f.payloads[:2]),
        ("count", 6),
        ("count", 4),
        ("count", 2**32 - 1),
        ("vector_dim", 4),
        ("vector_dim", 2**32 - 1),
        ("format_version", 2),
        ("format_version", 0),
        ("kind", 0),
        ("kind", 9),
        ("kind", wrapper_pb2.HEARTBEAT),
        ("tenant_id", "other"),
        ("stream_id", "stream-2"),
    ]


@pytest.mark.parametrize(("field", "value"), _mutations(), ids=lambda x: str(x)[:20])
def test_resigned_malformed_frame_is_frame_error(field: str, value: Any) -> None:
    frame = make(5)
    setattr(frame, field, value)
    with pytest.raises(FrameError) as ei:
        open_(resign(frame))
    assert not isinstance(ei.value, WatermarkError)


def test_delete_with_payload_is_frame_error() -> None:
    frame = make(3, ops=b"UUU")
    frame.ops = b"UDU"
    with pytest.raises(FrameError, match="delete"):
        open_(resign(frame))


def test_vector_dim_differs_from_sealer() -> None:
    other_dim = Sealer(derive_epoch_keys(SECRET, "acme", 3), DIM * 2)
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    with pytest.raises(FrameError, match="vector_dim"):
        open_frame(frame, lambda e: other_dim, tenant_id="acme", stream_id=None)


def test_stream_none_skips_stream_check() -> None:
    assert open_(make(), stream_id=None).stream_id == "stream-1"


def test_format_version_error_is_not_retriable() -> None:
    frame = make()
    frame.format_version = 2
    with pytest.raises(FrameError) as ei:
        open_(resign(frame))
    assert not ei.value.retriable
    with pytest.raises(FrameError) as ei2:
        open_(resign(make(keys=["x"] * 5, tenant_id="other")))
    assert ei2.value.retriable


# -- building errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "over",
    [
        {"ops": b"UU"},
        {"ops": b"UUXUU"},
        {"positions": [1, 2, 3]},
        {"positions": [5, 4, 3, 2, 1]},
        {"payloads": [b"{}"] * 5},  # a delete with a payload
        {"payloads": [b"{}"]},
        {"vectors": np.zeros((5, DIM + 1), dtype=np.float32)},
        {"vector_mask": np.ones(4, dtype=bool)},
        {"vectors": None, "vector_mask": np.ones(5, dtype=bool)},
        {"sealer": None},
        {"sealer": Sealer(derive_epoch_keys(SECRET, "acme", 3), DIM + 1)},
        {"kind": 0},
        {"kind": wrapper_pb2.HEARTBEAT},
    ],
    ids=lambda o: ",".join(o),
)
def test_build_rejects_bad_arguments(over: dict[str, Any]) -> None:
    with pytest.raises(FabricError):
        make(5, **over)


# -- fuzzing -----------------------------------------------------------------

frames = st.builds(
    wrapper_pb2.Frame,
    format_version=st.sampled_from([0, 1, 1, 1, 2]),
    tenant_id=st.sampled_from(["acme", "acme", "x"]),
    stream_id=st.sampled_from(["stream-1", "s"]),
    key_epoch=st.sampled_from([3, 3, 3, 0, 2**32 - 1]),
    kind=st.integers(0, 4),
    table=st.text(max_size=5),
    sequence=st.integers(0, 2**64 - 1),
    commit_position=st.integers(0, 2**64 - 1),
    head_position=st.integers(0, 2**64 - 1),
    commit_time_us=st.integers(-(2**63), 2**63 - 1),
    count=st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
    vector_dim=st.one_of(st.sampled_from([0, DIM]), st.integers(0, 2**32 - 1)),
    keys=st.binary(max_size=40),
    ops=st.one_of(st.binary(max_size=5), st.text("UD", max_size=5).map(str.encode)),
    positions=st.binary(max_size=40),
    vector_mask=st.binary(max_size=5),
    vectors=st.binary(max_size=200),
    payloads=st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.booleans())
def test_fuzz_random_frames(frame: wrapper_pb2.Frame, sign: bool) -> None:
    if sign:  # get past the watermark to exercise the structural checks
        resign(frame)
    with contextlib.suppress(FrameError):
        open_(frame, stream_id=None)


VALID = make(4).SerializeToString()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, len(VALID))),
    st.booleans(),
)
def test_fuzz_mutated_bytes(edits: list[tuple[int, int]], cut: int | None, sign: bool) -> None:
    data = bytearray(VALID)
    for i, b in edits:
        data[i] = b
    try:
        frame = wrapper_pb2.Frame.FromString(bytes(data[:cut]))
    except DecodeError:
        return  # the protobuf layer's own error, before open_frame
    if sign:
        resign(frame)
    try:
        d = open_(frame, stream_id=None)
    except FrameError:
        return
    assert len(d.keys) == len(d.payloads) == len(d.ops) == d.positions.shape[0]


def test_open_speed_1000_rows_384d() -> None:
    n, dim = 1000, 384
    sealer = Sealer(derive_epoch_keys(SECRET, "acme", 3), dim)
    frame = build_frame(
        sealer=sealer,
        tenant_id="acme",
        stream_id="s",
        kind=wrapper_pb2.CHANGES,
        table="t",
        sequence=1,
        commit_position=n,
        head_position=n,
        commit_time_us=0,
        keys=[encode_key([i]) for i in range(n)],
        ops=b"U" * n,
        positions=range(1, n + 1),
        vectors=np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32),
        vector_mask=None,
        payloads=[encode_row({"id": i, "name": f"n{i}"}) for i in range(n)],
        vector_dim=dim,
    )
    data = frame.SerializeToString()
    best = 1.0
    for _ in range(5):
        t = time.perf_counter()
        open_frame(
            wrapper_pb2.Frame.FromString(data), lambda e: sealer, tenant_id="acme", stream_id="s"
        )
        best = min(best, time.perf_counter() - t)
    assert best < 0.05, f"{best * 1e3:.1f} ms"
