"""Property-based fuzzing of what crosses the wire: open_frame and the pure
handshake functions of prism.fabric.auth.

Whatever bytes arrive, open_frame raises FrameError (or a subclass) or
returns a DecodedFrame whose parts agree with each other; the handshake
functions raise AuthError. Anything else (struct.error, IndexError,
InvalidTag, ValueError, ...) is a bug. Bytes that do not even parse as a
protobuf Frame raise DecodeError in wrapper_pb2, the gRPC layer's typed
rejection, before open_frame sees them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prism.fabric import wrapper_pb2
from prism.fabric.auth import (
    MAX_CLIENT_NONCE,
    MIN_CLIENT_NONCE,
    NONCE_BYTES,
    check_nonces,
    client_proof,
    proof_matches,
    unwrap_projection_key,
    wrap_projection_key,
)
from prism.fabric.errors import AuthError, FrameError, ReplayedFrameError, WatermarkError
from prism.fabric.frames import (
    DecodedFrame,
    bind_frame,
    build_frame,
    frame_watermark,
    open_frame,
    open_rows,
    parse_frame,
    seal_frame,
    serialize_fields,
)
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer

SECRET = b"f" * 32
DIM = 4
SEALER = Sealer(derive_epoch_keys(SECRET, "acme", 3), DIM)
SUB = b"s" * 16  # the Subscribe call every valid frame is bound to
AEAD_FAILURE = "AES-GCM"

# A generous per-example deadline: it catches a pathological slowdown (e.g.
# allocating for a huge claimed count) without flaking on a busy CI machine.
FUZZ = settings(
    max_examples=250,
    deadline=timedelta(milliseconds=1000),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
INT_FIELDS: dict[str, st.SearchStrategy[int]] = {
    "format_version": U32,
    "key_epoch": U32,
    "kind": st.integers(-(2**31), 2**31 - 1),  # an open enum: any int32
    "sequence": U64,
    "commit_position": U64,
    "head_position": U64,
    "commit_time_us": st.integers(-(2**63), 2**63 - 1),
    "count": st.one_of(st.integers(0, 8), U32),
    "vector_dim": st.one_of(st.sampled_from([0, DIM]), U32),
}
STR_FIELDS = ("tenant_id", "stream_id", "table")
BYTES_FIELDS = (
    "keys",
    "ops",
    "positions",
    "vector_mask",
    "vectors",
    "payloads",
    "sealed_rows",
    "aead_nonce",
    "subscription",
    "watermark",
    "binding",
)
# What a re-sealing sender controls: seal_frame overwrites key_epoch, keys,
# payloads, sealed_rows, aead_nonce and watermark.
RESEAL_FIELDS = (
    *(f for f in INT_FIELDS if f != "key_epoch"),
    *STR_FIELDS,
    "ops",
    "positions",
    "vector_mask",
    "vectors",
    "keys_plain",
    "old_keys_plain",
    "payloads_plain",
)


def sealers(epoch: int) -> Sealer:
    if epoch != 3:
        raise KeyError(epoch)
    return SEALER


def _build(count: int, *, vectors: bool = True, kind: int = wrapper_pb2.CHANGES) -> bytes:
    ops = (b"UDUU" * count)[:count]
    mask = np.array([op == ord("U") for op in ops], dtype=bool)
    frame = build_frame(
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
        vectors=np.ones((count, DIM), dtype=np.float32) if vectors else None,
        vector_mask=mask if vectors else None,
        payloads=[encode_row({"id": i}) if op == ord("U") else b"" for i, op in enumerate(ops)],
        vector_dim=DIM if vectors else 0,
        subscription=SUB,
    )
    return frame.SerializeToString()


VALID = (
    _build(4),
    _build(3, vectors=False),
    _build(0),
    _build(0, vectors=False, kind=wrapper_pb2.HEARTBEAT),
    _build(1, kind=wrapper_pb2.RESET),
)


def open_(frame: wrapper_pb2.Frame) -> DecodedFrame:
    return open_frame(frame, sealers, tenant_id="acme", stream_id=None, subscription=SUB)


def signable(frame: wrapper_pb2.Frame) -> bool:
    """Whether any key can watermark ``frame``: a negative kind has no
    canonical form, a format-5 frame without a 12-byte nonce no digest."""
    return frame.kind >= 0 and (frame.format_version < 5 or len(frame.aead_nonce) == 12)


def resign(frame: wrapper_pb2.Frame) -> None:
    """Recompute the watermark and the binding, as a sender with the HMAC key
    (who cannot sign what is not signable: the frame is left as it is)."""
    if not signable(frame):
        return
    frame.watermark = frame_watermark(SEALER, frame)
    frame.binding = bind_frame(SEALER, frame.subscription, frame.sequence, frame.watermark)


def assert_consistent(d: DecodedFrame, frame: wrapper_pb2.Frame) -> None:
    n = d.count
    assert n == frame.count and d.vector_dim == frame.vector_dim
    assert len(d.keys) == len(d.payloads) == len(d.ops) == n
    assert d.positions.shape == d.vector_mask.shape == (n,)
    assert d.vectors.shape == (n, d.vector_dim) and d.vectors.dtype == np.float32
    assert d.positions.dtype == np.uint64 and d.vector_mask.dtype == bool
    assert all(isinstance(k, str) for k in d.keys)
    assert set(d.ops) <= set(b"UD")
    assert all(not p for p, op in zip(d.payloads, d.ops, strict=True) if op == ord("D"))
    assert not d.vectors[~d.vector_mask].any()
    assert n < 2 or bool(np.all(d.positions[1:] >= d.positions[:-1]))


def open_checked(frame: wrapper_pb2.Frame) -> FrameError | None:
    """Open ``frame``: the FrameError it raises, or None once the decoded
    frame is checked to be consistent. Any other exception fails the test."""
    try:
        d = open_(frame)
    except FrameError as exc:
        return exc
    assert_consistent(d, frame)
    return None


def mutate_bytes(data: st.DataObject, value: bytes) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace", "empty"]))
    if how == "flip" and value:
        i = data.draw(st.integers(0, len(value) - 1))
        bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
        return value[:i] + bytes([value[i] ^ bit]) + value[i + 1 :]
    if how == "truncate" and value:
        return value[: data.draw(st.integers(0, len(value) - 1))]
    if how == "extend":
        return value + data.draw(st.binary(min_size=1, max_size=16))
    if how == "empty":
        return b""
    return data.draw(st.binary(max_size=64))


def mutate_field(data: st.DataObject, frame: wrapper_pb2.Frame, field: str) -> None:
    if field in INT_FIELDS:
        setattr(frame, field, data.draw(INT_FIELDS[field]))
    elif field in STR_FIELDS:
        setattr(frame, field, data.draw(st.text(max_size=12)))
    else:
        setattr(frame, field, mutate_bytes(data, getattr(frame, field)))


# -- (a) random bytes and random frames --------------------------------------


@pytest.mark.timeout(60)
@FUZZ
@given(st.one_of(st.binary(max_size=600), st.sampled_from(VALID).map(lambda v: v[:-40])))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except FrameError:
        return  # bytes that are no Frame: the typed rejection, before open_frame
    exc = open_checked(frame)
    # Nothing here carries a valid watermark: random bytes never open.
    assert isinstance(exc, FrameError)


frames = st.builds(
    wrapper_pb2.Frame,
    format_version=st.sampled_from([0, 1, 2, 2, 2, 3]),
    tenant_id=st.sampled_from(["acme", "acme", "x"]),
    stream_id=st.sampled_from(["stream-1", "s"]),
    key_epoch=st.sampled_from([3, 3, 3, 0, 2**32 - 1]),
    kind=st.integers(-1, 4),
    table=st.text(max_size=5),
    sequence=U64,
    commit_position=U64,
    head_position=U64,
    commit_time_us=st.integers(-(2**63), 2**63 - 1),
    count=st.one_of(st.integers(0, 4), U32),
    vector_dim=st.one_of(st.sampled_from([0, DIM]), U32),
    keys=st.one_of(st.just(b""), st.binary(max_size=40)),
    ops=st.one_of(st.binary(max_size=5), st.text("UD", max_size=5).map(str.encode)),
    positions=st.binary(max_size=40),
    vector_mask=st.one_of(st.binary(max_size=5), st.sampled_from([b"", b"\1", b"\0\1\1"])),
    vectors=st.binary(max_size=80),
    payloads=st.one_of(st.just(b""), st.binary(max_size=40)),
    sealed_rows=st.binary(max_size=60),
    aead_nonce=st.one_of(st.binary(min_size=12, max_size=12), st.binary(max_size=16)),
)


@pytest.mark.timeout(60)
@FUZZ
@given(frames, st.sampled_from(["none", "resign", "seal"]), st.binary(max_size=40), st.data())
def test_fuzz_random_frames(frame: wrapper_pb2.Frame, how: str, plain: bytes, data: Any) -> None:
    can_sign = signable(frame)
    if how == "resign" and can_sign:  # the attacker knows the HMAC key
        frame.watermark = frame_watermark(SEALER, frame)
    elif how == "seal" and frame.kind >= 0:  # ... or every key
        cut = data.draw(st.integers(0, len(plain)))
        seal_frame(frame, SEALER, plain[:cut], b"", plain[cut:])
    exc = open_checked(frame)
    if how == "none" or (how == "resign" and not can_sign):
        assert isinstance(exc, WatermarkError)


# -- (b) valid frames mutated ------------------------------------------------


@pytest.mark.timeout(60)
@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_fuzz_mutated_fields(valid: bytes, data: st.DataObject) -> None:
    frame = wrapper_pb2.Frame.FromString(valid)
    fields = data.draw(
        st.lists(st.sampled_from([*INT_FIELDS, *STR_FIELDS, *BYTES_FIELDS]), min_size=1, max_size=3)
    )
    for field in fields:
        mutate_field(data, frame, field)
    resign = data.draw(st.booleans()) and signable(frame) and "subscription" not in fields
    if resign:
        globals()["resign"](frame)
    exc = open_checked(frame)
    if frame.SerializeToString() == valid:
        assert exc is None  # a no-op mutation of a valid frame still opens
    elif not resign:
        # The watermark catches the frame's fields, the binding the envelope.
        assert isinstance(exc, WatermarkError | ReplayedFrameError), exc
    else:
        # Past the watermark, the AEAD or the structure checks must catch it,
        # unless only the envelope was touched: a sender with the HMAC key may
        # bind a frame to another place in the call (the follower's sequence
        # check is what orders frames; see SECURITY.md).
        original = wrapper_pb2.Frame.FromString(valid)
        changed = {f for f in fields if getattr(frame, f) != getattr(original, f)}
        assert exc is not None or changed <= {"watermark", "binding", "sequence"}


@pytest.mark.timeout(60)
@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.integers(0, 10_000)),
    st.binary(max_size=8),
    st.booleans(),
)
def test_fuzz_mutated_bytes(
    valid: bytes, edits: list[tuple[int, int]], cut: int | None, tail: bytes, resign: bool
) -> None:
    raw = bytearray(valid)
    for i, b in edits:
        raw[i % len(raw)] = b
    raw = raw[:cut] + tail
    try:
        frame = parse_frame(bytes(raw))
    except FrameError:
        return
    # A frame no key can sign (no 12-byte nonce, a negative kind) stays as
    # mutated, and must then fail like any other unsigned change.
    signed = resign and signable(frame)
    if signed:
        globals()["resign"](frame)
    exc = open_checked(frame)
    if not signed and bytes(raw) != valid and frame.SerializeToString() != valid:
        assert isinstance(exc, FrameError)


# -- (c) valid frames mutated, then re-sealed with the right keys --------------


@pytest.mark.timeout(60)
@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_fuzz_mutated_and_resealed(valid: bytes, data: st.DataObject) -> None:
    frame = wrapper_pb2.Frame.FromString(valid)
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    fields = data.draw(st.lists(st.sampled_from(RESEAL_FIELDS), min_size=1, max_size=3))
    for field in fields:
        if field == "kind":  # the sender side refuses a negative enum value
            frame.kind = data.draw(st.integers(0, 2**31 - 1))  # type: ignore[assignment]
        elif field == "keys_plain":
            keys_block = mutate_bytes(data, keys_block)
        elif field == "payloads_plain":
            payloads_block = mutate_bytes(data, payloads_block)
        elif field == "old_keys_plain":
            old_keys_block = mutate_bytes(data, old_keys_block)
        else:
            mutate_field(data, frame, field)
    seal_frame(frame, SEALER, keys_block, old_keys_block, payloads_block)
    exc = open_checked(frame)
    if exc is not None:
        # Correctly sealed: only the structure checks may reject it.
        assert not isinstance(exc, WatermarkError), exc
        assert AEAD_FAILURE not in str(exc), exc


# -- the handshake's pure functions ----------------------------------------------


@FUZZ
@given(st.binary(max_size=80), st.binary(max_size=80))
def test_fuzz_check_nonces(server_nonce: bytes, client_nonce: bytes) -> None:
    valid = (
        len(server_nonce) == NONCE_BYTES
        and MIN_CLIENT_NONCE <= len(client_nonce) <= MAX_CLIENT_NONCE
    )
    try:
        check_nonces(server_nonce, client_nonce)
    except AuthError:
        assert not valid
    else:
        assert valid


@FUZZ
@given(
    st.binary(max_size=64),
    st.text(max_size=16),
    st.binary(max_size=64),
    st.binary(max_size=64),
    st.binary(max_size=120),
)
def test_fuzz_unwrap_random_input(
    secret: bytes, tenant: str, server_nonce: bytes, client_nonce: bytes, wrapped: bytes
) -> None:
    with pytest.raises(AuthError):
        unwrap_projection_key(secret, tenant, server_nonce, client_nonce, wrapped)


SN, CN, PKEY = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
WRAPPED = wrap_projection_key(SECRET, "acme", SN, CN, PKEY)


@FUZZ
@given(st.data())
def test_fuzz_unwrap_mutated(data: st.DataObject) -> None:
    args: list[Any] = [SECRET, "acme", SN, CN, WRAPPED]
    i = data.draw(st.sampled_from([0, 1, 2, 3, 4]))
    if i == 1:
        args[1] = data.draw(st.text(max_size=16))
    else:
        args[i] = mutate_bytes(data, args[i])
    if args == [SECRET, "acme", SN, CN, WRAPPED]:
        assert unwrap_projection_key(*args) == PKEY
    else:
        with pytest.raises(AuthError):
            unwrap_projection_key(*args)


@FUZZ
@given(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=40))
def test_fuzz_proofs(server_nonce: bytes, client_nonce: bytes, given_proof: bytes) -> None:
    expected = client_proof(SECRET, "acme", server_nonce, client_nonce)
    assert len(expected) == 32
    assert proof_matches(expected, expected)
    assert proof_matches(expected, given_proof) == (given_proof == expected)


# -- (d) the wrapper's own serializer ----------------------------------------


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            **INT_FIELDS,
            **{name: st.text() for name in STR_FIELDS},
            **{name: st.binary(max_size=300) for name in BYTES_FIELDS},
        },
    )
)
def test_serialize_fields_writes_what_protobuf_writes(fields: dict[str, Any]) -> None:
    """shared_frame_bytes serializes frames by hand: the bytes must be
    protobuf's own, negative int64 and enum values included."""
    assert serialize_fields(fields) == wrapper_pb2.Frame(**fields).SerializeToString()
