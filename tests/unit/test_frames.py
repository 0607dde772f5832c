"""Frame building, sealing, watermarking and opening (prism.fabric.frames).

Format version 3: in a signed frame the keys and payloads blocks travel only
inside sealed_rows (AES-256-GCM, associated data = the canonical form without
field 19), the HMAC watermark covers every field but the call's envelope
(sequence 7, subscription 21, binding 31), and the binding MAC ties the
watermarked frame to one Subscribe call and one sequence number in it.
Fuzzing of open_frame lives in test_fuzz.py.
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from prism.fabric import FRAME_FORMAT_VERSION, wrapper_pb2
from prism.fabric.errors import (
    ExpiredEpochError,
    FabricError,
    FrameError,
    ReplayedFrameError,
    UnknownEpochError,
    WatermarkError,
)
from prism.fabric.frames import (
    AEAD_NONCE_BYTES,
    DecodedFrame,
    bind_frame,
    build_frame,
    build_shared_frame,
    canonical_bytes,
    envelope_bytes,
    frame_watermark,
    open_frame,
    open_rows,
    parse_frame,
    seal_frame,
    shared_frame_bytes,
)
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.fabric.sealing import Sealer

SECRET = b"f" * 32
DIM = 8
KEYS3 = derive_epoch_keys(SECRET, "acme", 3)
SEALER = Sealer(KEYS3, DIM)
SEALER4 = Sealer(derive_epoch_keys(SECRET, "acme", 4), DIM)
OTHER = Sealer(derive_epoch_keys(b"g" * 32, "acme", 3), DIM)
# Blocks that a signed frame carries in the clear (keys and payloads are empty).
CLEAR_BLOCKS = ("ops", "positions", "vector_mask", "vectors")
AEAD_FAILURE = "AES-GCM"


def sealers(epoch: int) -> Sealer:
    if epoch != 3:
        raise KeyError(epoch)
    return SEALER


def sealers_3_and_4(epoch: int) -> Sealer:
    return {3: SEALER, 4: SEALER4}[epoch]


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


def copy(frame: wrapper_pb2.Frame) -> wrapper_pb2.Frame:
    out = wrapper_pb2.Frame()
    out.CopyFrom(frame)
    return out


def resign(frame: wrapper_pb2.Frame, sealer: Sealer = SEALER) -> wrapper_pb2.Frame:
    """Recompute the HMAC watermark and binding: an attacker who knows the
    HMAC key (but not the AEAD key)."""
    frame.watermark = frame_watermark(sealer, frame)
    frame.binding = bind_frame(sealer, frame.subscription, frame.sequence, frame.watermark)
    return frame


def open_(frame: wrapper_pb2.Frame, stream_id: str | None = "stream-1") -> DecodedFrame:
    return open_frame(
        frame, sealers, tenant_id="acme", stream_id=stream_id, subscription=frame.subscription
    )


def documented_canonical(frame: wrapper_pb2.Frame, skip: frozenset[int]) -> bytes:
    """canonical(frame) as wrapper.proto documents it, leaving out ``skip``."""
    out = b""
    for field in sorted(frame.DESCRIPTOR.fields, key=lambda f: f.number):
        if field.number in skip:
            continue
        value = getattr(frame, field.name)
        if isinstance(value, int):
            data = struct.pack("<q" if value < 0 else "<Q", value)
        elif isinstance(value, str):
            data = value.encode()
        else:
            data = value
        out += struct.pack("<IQ", field.number, len(data)) + data
    return out


ENVELOPE = frozenset({7, 21, 30, 31})


def documented_aad(frame: wrapper_pb2.Frame) -> bytes:
    return documented_canonical(frame, ENVELOPE | {19})


def seal_raw(frame: wrapper_pb2.Frame, plaintext: bytes, sealer: Sealer = SEALER) -> None:
    """Encrypt ``plaintext`` as sealed_rows as documented, then watermark."""
    frame.keys = frame.payloads = b""
    frame.aead_nonce = os.urandom(AEAD_NONCE_BYTES)
    frame.sealed_rows = sealer.encrypt(frame.aead_nonce, plaintext, documented_aad(frame))
    resign(frame, sealer)


# -- round trips and layout --------------------------------------------------


def test_round_trip() -> None:
    vectors = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    frame = make(vectors=vectors)
    assert frame.key_epoch == 3 and frame.format_version == FRAME_FORMAT_VERSION == 5
    assert frame.count == 5 and len(frame.watermark) == 32
    # The row data travels only encrypted.
    assert frame.keys == b"" and frame.payloads == b""
    assert len(frame.aead_nonce) == AEAD_NONCE_BYTES and len(frame.sealed_rows) > 16
    wire = frame.SerializeToString()
    assert b'"k1"' not in wire and b'"id"' not in wire
    # What travels is sealed, not the plain vectors.
    sent = np.frombuffer(frame.vectors, dtype="<f4").reshape(5, DIM)
    assert not np.allclose(sent[0], vectors[0], atol=0.1)
    d = open_(wrapper_pb2.Frame.FromString(wire))
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


def test_heartbeat_is_watermarked_and_sealed() -> None:
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
    # u64 keys length (0), u64 old keys length (0), no rows, the 16-byte tag.
    assert len(hb.sealed_rows) == 8 + 8 + 16
    assert open_rows(hb, SEALER) == (b"", b"", b"")
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
    numbers = sorted(f.number for f in frame.DESCRIPTOR.fields)
    assert numbers == [*range(1, 22), 30, 31]
    expected = documented_canonical(frame, ENVELOPE)
    assert canonical_bytes(frame) == expected
    # Format 5, as wrapper.proto documents it: HMAC-SHA256 over a label and
    # the GMAC of canonical(frame) under a key derived from the HMAC key.
    digest_key = hmac.digest(KEYS3.hmac_key, b"prism/frame-digest-key/v5", "sha256")
    digest = AESGCM(digest_key).encrypt(frame.aead_nonce, b"", expected)
    assert frame.format_version == 5
    assert frame.watermark == SEALER.watermark(b"prism/frame-watermark/v5" + digest)
    # Fields 19 and 20 are covered by the watermark.
    assert struct.pack("<IQ", 19, len(frame.sealed_rows)) + frame.sealed_rows in expected
    assert struct.pack("<IQ", 20, 12) + frame.aead_nonce in expected


def test_vectors_sealed_by_the_sender_open_to_the_same_vectors() -> None:
    """The wrapper may hand build_shared_frame vectors it sealed itself
    (projection and seal in one multiplication): the frame is the same."""
    vectors = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
    mask = np.array([True, False, True])
    ours = make(3, vectors=SEALER.seal(vectors), vector_mask=mask, vectors_sealed=True)
    theirs = make(3, vectors=vectors, vector_mask=mask)
    assert ours.vectors == theirs.vectors
    d = open_(ours)
    np.testing.assert_allclose(d.vectors[[0, 2]], vectors[[0, 2]], rtol=1e-5, atol=1e-5)
    assert not d.vectors[1].any()


def test_format_4_watermark_is_hmac_of_canonical_bytes() -> None:
    """A driver that asked for format 4 gets frames watermarked as before."""
    frame = make(2, ops=b"UD", payloads=[b"{}", b""], format_version=4)
    assert frame.watermark == SEALER.watermark(documented_canonical(frame, ENVELOPE))
    assert open_(frame).payloads == [b"{}", b""]


@pytest.mark.parametrize(("built", "claimed"), [(5, 4), (4, 5), (5, 3)])
def test_another_format_version_fails_the_watermark(built: int, claimed: int) -> None:
    """Relabelling a frame's format (to pick the other watermark rule) is
    tampering like any other."""
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"], format_version=built)
    frame.format_version = claimed
    with pytest.raises(WatermarkError):
        open_(frame)


def test_frame_is_bound_to_its_subscribe_call() -> None:
    mine, other = b"m" * 16, b"o" * 16
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"], subscription=mine)
    assert frame.subscription == mine
    d = open_frame(frame, sealers, tenant_id="acme", stream_id=None, subscription=mine)
    assert d.count == 2
    # The same frame replayed into another call verifies, but is refused.
    with pytest.raises(ReplayedFrameError, match="another Subscribe call"):
        open_frame(frame, sealers, tenant_id="acme", stream_id=None, subscription=other)
    # Relabelling it for the other call breaks the binding.
    frame.subscription = other
    with pytest.raises(ReplayedFrameError, match="binding"):
        open_frame(frame, sealers, tenant_id="acme", stream_id=None, subscription=other)
    # So does moving it to another place of its own call, or a bad binding.
    frame.subscription = mine
    for field, value in (("sequence", 8), ("binding", b""), ("binding", b"\0" * 32)):
        moved = copy(frame)
        setattr(moved, field, value)
        with pytest.raises(ReplayedFrameError, match="binding"):
            open_frame(moved, sealers, tenant_id="acme", stream_id=None, subscription=mine)
    # Without a call to check against (tools), the envelope is not checked.
    assert open_frame(frame, sealers, tenant_id="acme", stream_id=None).count == 2


def test_one_shared_frame_serves_every_call() -> None:
    shared = build_shared_frame(
        sealer=SEALER,
        tenant_id="acme",
        stream_id="stream-1",
        kind=wrapper_pb2.CHANGES,
        table="public.items",
        commit_position=9,
        head_position=9,
        commit_time_us=1,
        keys=[encode_key([1])],
        ops=b"U",
        positions=[9],
        vectors=np.ones((1, DIM), dtype=np.float32),
        vector_mask=None,
        payloads=[encode_row({"id": 1})],
        vector_dim=DIM,
    )
    assert shared.sequence == 0 and not shared.subscription and not shared.binding
    body = shared.SerializeToString()
    for sub, seq in ((b"a" * 16, 1), (b"b" * 32, 7)):
        binding = bind_frame(SEALER, sub, seq, shared.watermark)
        wire = body + envelope_bytes(seq, sub, binding)
        frame = parse_frame(wire)
        assert (frame.sequence, frame.subscription, frame.binding) == (seq, sub, binding)
        d = open_frame(frame, sealers, tenant_id="acme", stream_id="stream-1", subscription=sub)
        assert d.sequence == seq and decode_row(d.payloads[0]) == {"id": 1}


def test_sealed_rows_as_documented() -> None:
    # Decrypt with nothing but the documented recipe and the epoch's AEAD key.
    frame = make(2, keys=['["a"]', '["é"]'], ops=b"UU", payloads=[b"{}", b"{}"])
    plain = AESGCM(KEYS3.aead_key).decrypt(
        frame.aead_nonce, frame.sealed_rows, documented_aad(frame)
    )
    keys_block = b'\x05\x00\x00\x00["a"]\x06\x00\x00\x00["\xc3\xa9"]'
    payloads_block = b"\x02\x00\x00\x00{}" * 2
    assert plain == (
        struct.pack("<Q", len(keys_block)) + keys_block + struct.pack("<Q", 0) + payloads_block
    )
    assert open_rows(frame, SEALER) == (keys_block, b"", payloads_block)


def test_blocks_layout() -> None:
    frame = make(
        2,
        keys=['["a"]', '["é"]'],
        ops=b"UD",
        payloads=[b'{"x":1}', b""],
        vector_mask=np.array([True, False]),
    )
    keys_block, _old_keys_block, payloads_block = open_rows(frame, SEALER)
    # count x (u32 little-endian length, bytes)
    assert keys_block == b'\x05\x00\x00\x00["a"]\x06\x00\x00\x00["\xc3\xa9"]'
    assert payloads_block == b'\x07\x00\x00\x00{"x":1}' + b"\x00\x00\x00\x00"
    assert frame.ops == b"UD"
    assert frame.positions == struct.pack("<2Q", 100, 101)
    assert frame.vector_mask == b"\x01\x00"
    assert len(frame.vectors) == 2 * DIM * 4


def test_old_keys_round_trip_inside_sealed_rows() -> None:
    # A primary-key change: row 1 replaced key ["old"]. The old key is row
    # data, so it travels only inside sealed_rows, never in the clear.
    old = ["old-key-é"]
    frame = make(
        3, ops=b"UUD", payloads=[b"\x80", b"\x80", b""], old_keys=[None, encode_key(old), None]
    )
    assert encode_key(old).encode() not in frame.SerializeToString()
    d = open_(frame)
    assert d.old_keys == [None, encode_key(old), None]
    _, old_block, _ = open_rows(frame, SEALER)
    assert old_block.count(b"\x00\x00\x00\x00") >= 2  # empty entries for rows 0 and 2
    # No key changes: no block at all, and the decoded frame says None.
    assert open_(make(3)).old_keys is None
    assert open_rows(make(3), SEALER)[1] == b""


def test_old_keys_tampered_fail_the_frame() -> None:
    frame = make(2, ops=b"UU", payloads=[b"\x80", b"\x80"], old_keys=[encode_key([9]), None])
    raw = bytearray(frame.sealed_rows)
    raw[20] ^= 1  # inside the ciphertext, where the old keys block lies
    frame.sealed_rows = bytes(raw)
    with pytest.raises(WatermarkError):
        open_(frame)
    with pytest.raises(FrameError, match=AEAD_FAILURE):
        open_(resign(frame))


def test_format_3_for_older_drivers_has_no_old_keys_and_opens() -> None:
    # A wrapper sends format 3 to a driver that reads no newer one: the
    # sealed plaintext is exactly format 3's (keys, payloads), the old keys
    # are left out, and this driver reads such frames too (an older wrapper).
    old = [None, encode_key(["was"])]
    frame = make(2, ops=b"UU", payloads=[b"\x80", b"\x81"], old_keys=old, format_version=3)
    assert frame.format_version == 3
    keys_block = b"".join(
        struct.pack("<I", len(k)) + k for k in (encode_key([i, f"k{i}"]).encode() for i in range(2))
    )
    payloads_block = b"".join(struct.pack("<I", 1) + p for p in (b"\x80", b"\x81"))
    plain = AESGCM(KEYS3.aead_key).decrypt(
        frame.aead_nonce, frame.sealed_rows, documented_aad(frame)
    )
    assert plain == struct.pack("<Q", len(keys_block)) + keys_block + payloads_block
    d = open_(frame)
    assert d.payloads == [b"\x80", b"\x81"] and d.old_keys is None
    assert open_(make(2, ops=b"UU", payloads=[b"\x80", b"\x81"], old_keys=old)).old_keys == old
    with pytest.raises(FabricError, match="format 2"):
        make(2, format_version=2)


def test_bad_old_keys_are_refused_when_building() -> None:
    with pytest.raises(FabricError, match="old keys for"):
        make(2, ops=b"UU", payloads=[b"\x80", b"\x80"], old_keys=[encode_key([1])])
    with pytest.raises(FabricError, match="needs an upsert"):
        make(2, ops=b"UD", payloads=[b"\x80", b""], old_keys=[None, encode_key([1])])
    with pytest.raises(FabricError, match="without a sealer"):
        make(
            1,
            ops=b"U",
            payloads=[b"\x80"],
            sealer=None,
            vectors=None,
            vector_mask=None,
            old_keys=[encode_key([1])],
        )


def test_same_rows_get_fresh_nonce_and_ciphertext() -> None:
    a, b = make(3), make(3)
    assert len(a.aead_nonce) == len(b.aead_nonce) == AEAD_NONCE_BYTES
    assert a.aead_nonce != b.aead_nonce
    assert a.sealed_rows != b.sealed_rows and a.watermark != b.watermark
    assert open_rows(a, SEALER) == open_rows(b, SEALER)
    # Re-sealing the same frame draws a new nonce too.
    nonce = a.aead_nonce
    seal_frame(a, SEALER, *open_rows(a, SEALER))
    assert a.aead_nonce != nonce
    assert open_(a).keys == open_(b).keys


def test_seal_frame_round_trip_and_epoch() -> None:
    frame = make(3)
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    seal_frame(frame, SEALER4, keys_block, old_keys_block, payloads_block)
    assert frame.key_epoch == 4 and frame.keys == frame.payloads == b""
    assert open_rows(frame, SEALER4) == (keys_block, old_keys_block, payloads_block)
    d = open_frame(frame, sealers_3_and_4, tenant_id="acme", stream_id=None)
    assert d.key_epoch == 4 and d.keys == [encode_key([i, f"k{i}"]) for i in range(3)]
    with pytest.raises(FrameError, match=AEAD_FAILURE):
        open_rows(frame, SEALER)  # the epoch-3 AEAD key does not open it


def test_seal_frame_clears_clear_rows() -> None:
    frame = make(2, sealer=None, vectors=None, vector_mask=None, ops=b"UU", payloads=[b"{}"] * 2)
    assert frame.keys and frame.payloads and not frame.sealed_rows
    keys_block, payloads_block = frame.keys, frame.payloads
    seal_frame(frame, SEALER, keys_block, b"", payloads_block)
    assert frame.keys == frame.payloads == b""
    assert open_(frame).payloads == [b"{}", b"{}"]


# -- tampering: watermark only -----------------------------------------------


@pytest.mark.parametrize("block", [*CLEAR_BLOCKS, "sealed_rows", "aead_nonce", "watermark"])
def test_flip_any_byte_of_any_block(block: str) -> None:
    frame = make(4)
    data = getattr(frame, block)
    assert data
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = copy(frame)
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
        ("commit_position", 0),
        ("head_position", 1),
        ("commit_time_us", 0),
        ("count", 4),
        ("vector_dim", 4),
        ("keys", b"\x01\x00\x00\x00x"),
        ("payloads", b"\x00\x00\x00\x00"),
        ("sealed_rows", b""),
        ("aead_nonce", b"\x00" * 12),
        ("aead_nonce", b""),
    ],
)
def test_changed_field_fails_watermark(field: str, value: Any) -> None:
    frame = make(5)
    assert getattr(frame, field) != value
    setattr(frame, field, value)
    with pytest.raises(WatermarkError):
        open_frame(frame, sealers, tenant_id=frame.tenant_id, stream_id=None)


@pytest.mark.parametrize("cut", ["truncate", "extend"])
@pytest.mark.parametrize("block", ["sealed_rows", "aead_nonce"])
def test_truncated_or_extended_sealed_fields_fail_watermark(block: str, cut: str) -> None:
    frame = make(3)
    data = getattr(frame, block)
    setattr(frame, block, data[:-1] if cut == "truncate" else data + b"\0")
    with pytest.raises(WatermarkError):
        open_(frame)


def test_moving_bytes_between_blocks_fails_watermark() -> None:
    # Same concatenation, different split: the lengths in canonical() catch it.
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    frame.vector_mask, frame.vectors = frame.vector_mask + frame.vectors[:1], frame.vectors[1:]
    with pytest.raises(WatermarkError):
        open_(frame)
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    rows, nonce = frame.sealed_rows, frame.aead_nonce
    frame.sealed_rows, frame.aead_nonce = rows[:-1], rows[-1:] + nonce
    with pytest.raises(WatermarkError):
        open_(frame)


def test_wrong_key_and_unknown_epoch() -> None:
    with pytest.raises(WatermarkError, match="watermark"):
        open_(resign(make(), OTHER))
    frame = make()
    seal_frame(frame, OTHER, *open_rows(frame, SEALER))
    with pytest.raises(WatermarkError, match="watermark"):
        open_(frame)
    frame = make()
    frame.key_epoch = 4
    with pytest.raises(WatermarkError, match="epoch 4"):
        open_(resign(frame))
    frame = make()
    frame.watermark = b""
    with pytest.raises(WatermarkError):
        open_(frame)


@pytest.mark.parametrize("error", [ExpiredEpochError, UnknownEpochError])
def test_epoch_errors_of_the_key_lookup_pass_through(error: type[FrameError]) -> None:
    def lookup(epoch: int) -> Sealer:
        raise error(f"epoch {epoch} refused")

    with pytest.raises(error, match="epoch 3 refused"):
        open_frame(make(), lookup, tenant_id="acme", stream_id=None)


def test_unsigned_frames_are_rejected() -> None:
    frame = make(2, sealer=None, vectors=None, vector_mask=None, ops=b"UU", payloads=[b"{}", b"{}"])
    assert frame.watermark == b"" and frame.key_epoch == 0
    assert frame.keys and not frame.sealed_rows and not frame.aead_nonce
    with pytest.raises(WatermarkError):
        open_frame(frame, lambda e: SEALER, tenant_id="acme", stream_id=None)


# -- tampering: the attacker re-computes the watermark -----------------------
# With only the HMAC key (or a watermark bug), the AEAD still binds the rows to
# every other field: the frame must fail with FrameError, not open or crash.


@pytest.mark.parametrize(
    ("field", "value", "tenant"),
    [
        ("table", "public.other", "acme"),
        ("positions", struct.pack("<5Q", 100, 101, 102, 103, 105), "acme"),
        ("tenant_id", "other", "other"),
        ("stream_id", "stream-2", "acme"),
        ("kind", wrapper_pb2.RESET, "acme"),
        ("commit_position", 0, "acme"),
        ("head_position", 501, "acme"),
        ("commit_time_us", -1, "acme"),
        ("ops", b"UUUUU", "acme"),
        ("vector_mask", b"\x01\x01\x00\x01\x00", "acme"),
        ("vectors", None, "acme"),
        ("aead_nonce", b"\x00" * 12, "acme"),
    ],
)
def test_resigned_field_change_fails_aead(field: str, value: Any, tenant: str) -> None:
    frame = make(5)
    if value is None:  # vectors: flip one bit of the first float
        value = bytes([frame.vectors[0] ^ 1]) + frame.vectors[1:]
    assert getattr(frame, field) != value
    setattr(frame, field, value)
    resign(frame)
    with pytest.raises(FrameError, match=AEAD_FAILURE) as ei:
        open_frame(frame, sealers, tenant_id=tenant, stream_id=None)
    assert not isinstance(ei.value, WatermarkError)


def test_resigned_epoch_change_fails_aead() -> None:
    frame = make(5)
    frame.key_epoch = 4
    resign(frame, SEALER4)  # the epoch-4 HMAC key, rows still under epoch 3's AEAD key
    with pytest.raises(FrameError, match=AEAD_FAILURE):
        open_frame(frame, sealers_3_and_4, tenant_id="acme", stream_id=None)


@pytest.mark.parametrize("block", ["sealed_rows", "aead_nonce"])
def test_resigned_flip_of_sealed_fields_fails_aead(block: str) -> None:
    frame = make(3)
    data = getattr(frame, block)
    for i in range(len(data)):
        tampered = copy(frame)
        setattr(tampered, block, data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
        with pytest.raises(FrameError, match=AEAD_FAILURE) as ei:
            open_(resign(tampered))
        assert not isinstance(ei.value, WatermarkError)


@pytest.mark.parametrize("rows", [b"", b"\0" * 15, b"\0" * 16])
def test_resigned_short_sealed_rows_is_frame_error(rows: bytes) -> None:
    frame = make(2)
    frame.sealed_rows = rows
    with pytest.raises(FrameError, match=AEAD_FAILURE):
        open_(resign(frame))


@pytest.mark.parametrize("nonce", [b"", b"\0" * 11, b"\0" * 13])
def test_resigned_bad_nonce_length_is_frame_error(nonce: bytes) -> None:
    frame = make(2)
    frame.aead_nonce = nonce
    with pytest.raises(FrameError, match="aead_nonce"):
        open_(resign(frame))


def test_rows_cannot_be_spliced_into_another_frame() -> None:
    victim, other = make(5), make(5, head_position=501)
    other.sealed_rows, other.aead_nonce = victim.sealed_rows, victim.aead_nonce
    with pytest.raises(FrameError, match=AEAD_FAILURE):
        open_(resign(other))


def test_rows_sealed_with_another_aead_key_fail() -> None:
    # A valid watermark does not make up for rows under another AEAD key.
    frame = make(3)
    seal_frame(frame, OTHER, *open_rows(frame, SEALER))
    with pytest.raises(FrameError, match=AEAD_FAILURE) as ei:
        open_(resign(frame))
    assert not isinstance(ei.value, WatermarkError)


@pytest.mark.parametrize("block", ["keys", "payloads", "both"])
def test_signed_frame_with_clear_rows_is_rejected(block: str) -> None:
    frame = make(3)
    keys_block, _old_keys_block, payloads_block = open_rows(frame, SEALER)
    if block in ("keys", "both"):
        frame.keys = keys_block
    if block in ("payloads", "both"):
        frame.payloads = payloads_block
    with pytest.raises(FrameError, match="outside sealed_rows") as ei:
        open_(resign(frame))
    assert not isinstance(ei.value, WatermarkError)


def test_signed_frame_with_only_clear_rows_is_rejected() -> None:
    # A downgrade to the version-1 layout: clear rows, no sealed_rows at all.
    frame = make(3, format_version=4)
    frame.keys, _, frame.payloads = open_rows(frame, SEALER)
    frame.sealed_rows = frame.aead_nonce = b""
    with pytest.raises(FrameError) as ei:
        open_(resign(frame))
    assert not isinstance(ei.value, WatermarkError)


def test_format_5_frame_without_a_nonce_cannot_be_watermarked() -> None:
    """Format 5's digest needs the frame's nonce: without one, not even the
    HMAC key's holder can sign the frame, and the driver refuses it."""
    frame = make(3)
    frame.keys, _, frame.payloads = open_rows(frame, SEALER)
    frame.sealed_rows = frame.aead_nonce = b""
    with pytest.raises(WatermarkError, match="aead_nonce has 0 bytes"):
        frame_watermark(SEALER, frame)
    with pytest.raises(WatermarkError, match="aead_nonce has 0 bytes"):
        open_(frame)


# -- re-sealed but malformed -------------------------------------------------
# seal_frame with the right keys gets past the watermark and the AEAD, so the
# structure checks behind them must reject the frame.

_F = make(5)
_KB, _OKB, _PB = open_rows(_F, SEALER)


def _mutations() -> list[tuple[str, Any]]:
    f, kb, pb = _F, _KB, _PB
    return [
        ("keys", kb[:-1]),
        ("keys", kb + b"x"),
        ("keys", kb[:3]),
        ("keys", kb[:4] + b"\xff" + kb[5:]),
        ("keys", b"\xff\xff\xff\xff" + kb[4:]),
        ("keys", b""),
        # Old keys (format 4): a count that disagrees, bad UTF-8, one on a delete.
        ("old_keys", b'\x05\x00\x00\x00["a"]'),
        ("old_keys", b"\x00\x00\x00\x00" * 4 + b"\x02\x00\x00\x00\xff\xfe"),
        ("old_keys", b"\x00" * 8 + b'\x05\x00\x00\x00["a"]' + b"\x00" * 8),  # row 2: a delete
        ("old_keys", b"\x00\x00\x00\x00" * 4 + b"\x09\x00\x00\x00[1]"),
        ("payloads", pb[:-1]),
        ("payloads", pb + b"\0"),
        ("payloads", pb[:2]),
        ("payloads", b""),
        ("ops", f.ops[:-1]),
        ("ops", b"UUXUU"),
        ("positions", f.positions[:-1]),
        ("positions", f.positions[8:16] + f.positions[:8] + f.positions[16:]),
        ("vector_mask", f.vector_mask[:-1]),
        ("vector_mask", b"\x01\x02\x00\x01\x01"),
        ("vectors", f.vectors[:-4]),
        ("vectors", f.vectors + b"\0\0\0\0"),
        ("count", 6),
        ("count", 4),
        ("count", 2**32 - 1),
        ("vector_dim", 4),
        ("vector_dim", 2**32 - 1),
        ("format_version", 2),
        ("format_version", 1),
        ("format_version", 0),
        ("kind", 0),
        ("kind", 9),
        ("kind", wrapper_pb2.HEARTBEAT),
        ("tenant_id", "other"),
        ("stream_id", "stream-2"),
    ]


@pytest.mark.parametrize(("field", "value"), _mutations(), ids=lambda x: str(x)[:20])
def test_resealed_malformed_frame_is_frame_error(field: str, value: Any) -> None:
    frame = copy(_F)
    keys_block, old_keys_block, payloads_block = _KB, _OKB, _PB
    if field == "keys":
        keys_block = value
    elif field == "old_keys":
        old_keys_block = value
    elif field == "payloads":
        payloads_block = value
    else:
        setattr(frame, field, value)
    seal_frame(frame, SEALER, keys_block, old_keys_block, payloads_block)
    with pytest.raises(FrameError) as ei:
        open_(frame)
    assert not isinstance(ei.value, WatermarkError)
    assert AEAD_FAILURE not in str(ei.value)


@pytest.mark.parametrize(
    ("plaintext", "match"),
    [
        (b"", "fewer than 16"),
        (b"\x00" * 15, "fewer than 16"),
        (struct.pack("<Q", 1) + b"\x00" * 8, "keys length runs past"),
        (struct.pack("<Q", 2**64 - 1) + b"abcdefghijk", "keys length runs past"),
        (struct.pack("<QQ", 0, 1), "old keys length runs past"),
        (struct.pack("<QQ", 0, 2**64 - 1) + b"abc", "old keys length runs past"),
    ],
)
def test_malformed_sealed_plaintext_is_frame_error(plaintext: bytes, match: str) -> None:
    frame = make(0, keys=[], ops=b"", positions=[], vectors=None, vector_mask=None, payloads=[])
    seal_raw(frame, plaintext)
    with pytest.raises(FrameError, match=match) as ei:
        open_(frame)
    assert not isinstance(ei.value, WatermarkError)


def test_documented_sealing_opens() -> None:
    # The recipe in wrapper.proto is enough to produce frames the driver opens.
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    seal_raw(
        frame,
        struct.pack("<Q", len(keys_block))
        + keys_block
        + struct.pack("<Q", len(old_keys_block))
        + old_keys_block
        + payloads_block,
    )
    assert open_(frame).payloads == [b"{}", b"{}"]


@pytest.mark.parametrize("mask", [b"\x01\x02\x01", b"\xff\x01\x01", b"\x01\x01\x80"])
def test_vector_mask_other_than_0_and_1_is_frame_error(mask: bytes) -> None:
    # Sealed and signed by a sender holding both keys: the mask still decides.
    frame = make(3, ops=b"UUU")
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    frame.vector_mask = mask
    seal_frame(frame, SEALER, keys_block, old_keys_block, payloads_block)
    with pytest.raises(FrameError, match="other than 0 and 1") as ei:
        open_(frame)
    assert not isinstance(ei.value, WatermarkError)


def test_rows_left_out_of_the_mask_open_as_zeros_whatever_was_sent() -> None:
    vectors = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
    frame = make(3, ops=b"UUU", vectors=vectors, vector_mask=np.ones(3, dtype=bool))
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    frame.vector_mask = b"\x01\x00\x01"  # the middle row's vector bytes stay as sent
    seal_frame(frame, SEALER, keys_block, old_keys_block, payloads_block)
    for unseal in (True, False):  # the driver's path keeps them sealed
        d = open_frame(
            frame,
            sealers,
            tenant_id="acme",
            stream_id="stream-1",
            subscription=frame.subscription,
            unseal=unseal,
        )
        assert d.vector_mask.tolist() == [True, False, True]
        assert not d.vectors[1].any() and d.vectors[0].any() and d.vectors[2].any()
    # Every row with a vector: the sealed vectors as sent, none zeroed.
    whole = make(3, ops=b"UUU", vectors=vectors, vector_mask=np.ones(3, dtype=bool))
    kept = open_frame(
        whole,
        sealers,
        tenant_id="acme",
        stream_id="stream-1",
        subscription=whole.subscription,
        unseal=False,
    )
    assert kept.vectors.tobytes() == whole.vectors


def test_delete_with_payload_is_frame_error() -> None:
    frame = make(3, ops=b"UUU")
    keys_block, old_keys_block, payloads_block = open_rows(frame, SEALER)
    frame.ops = b"UDU"
    seal_frame(frame, SEALER, keys_block, old_keys_block, payloads_block)
    with pytest.raises(FrameError, match="delete"):
        open_(frame)


def test_vector_dim_differs_from_sealer() -> None:
    other_dim = Sealer(derive_epoch_keys(SECRET, "acme", 3), DIM * 2)
    frame = make(2, ops=b"UU", payloads=[b"{}", b"{}"])
    with pytest.raises(FrameError, match="vector_dim"):
        open_frame(frame, lambda e: other_dim, tenant_id="acme", stream_id=None)


def test_stream_none_skips_stream_check() -> None:
    assert open_(make(), stream_id=None).stream_id == "stream-1"
    with pytest.raises(FrameError, match="stream"):
        open_(make(), stream_id="stream-2")


@pytest.mark.parametrize("version", [1, 2, 6])
def test_format_version_error_is_not_retriable(version: int) -> None:
    frame = make()
    assert version != FRAME_FORMAT_VERSION
    frame.format_version = version
    seal_frame(frame, SEALER, *open_rows(make(), SEALER))
    with pytest.raises(FrameError, match="format version") as ei:
        open_(frame)
    assert not ei.value.retriable
    # It names the side to upgrade: the driver for a newer format, else the wrapper.
    side = "prismlib on this app node" if version > FRAME_FORMAT_VERSION else "prism-wrapper"
    assert f"upgrade {side}" in str(ei.value)
    with pytest.raises(FrameError) as ei2:
        open_(make(keys=["x"] * 5, tenant_id="other"))
    assert ei2.value.retriable


# -- building errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "over",
    [
        {"ops": b"UU"},
        {"ops": b"UUXUU"},
        {"positions": [1, 2, 3]},
        {"positions": [5, 4, 3, 2, 1]},
        {"positions": np.array([5, 4, 3, 2, 1], dtype=np.uint64)},
        {"positions": [-1, 2, 3, 4, 5]},
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


def test_few_and_many_rows_pack_their_blocks_alike() -> None:
    """A few rows' positions are packed without numpy, a frame's worth with
    it: the same bytes either way. Masked rows travel as zeros, and the
    caller's vectors are left as they were."""
    vectors = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    given = vectors.copy()
    listed = make(5, vectors=vectors, positions=[100, 101, 101, 103, 104])
    arrayed = make(5, vectors=vectors, positions=np.array([100, 101, 101, 103, 104]))
    assert listed.positions == arrayed.positions
    assert np.frombuffer(listed.positions, "<u8").tolist() == [100, 101, 101, 103, 104]
    np.testing.assert_array_equal(vectors, given)
    d = open_(listed)
    assert not d.vectors[~d.vector_mask].any() and d.vector_mask.tolist() == [
        True,
        True,
        False,
        True,
        True,
    ]
    many = make(40, positions=list(range(40)))
    assert np.frombuffer(many.positions, "<u8").tolist() == list(range(40))


def test_a_1000_row_frame_opens_whole() -> None:
    """Its speed (at 384-d) is in benchmark/codecs.py."""
    d = open_(make(1000))
    assert d.count == 1000 and d.keys[-1] == encode_key([999, "k999"])
    assert decode_row(d.payloads[999]) == {"id": 999}


# -- the wrapper's serializer ------------------------------------------------


def test_shared_frame_bytes_open_like_the_message() -> None:
    args: dict[str, Any] = dict(
        sealer=SEALER,
        tenant_id="acme",
        stream_id="stream-1",
        kind=wrapper_pb2.CHANGES,
        table="public.items",
        commit_position=9,
        head_position=9,
        commit_time_us=-5,
        keys=[encode_key([1]), encode_key([2])],
        ops=b"UD",
        positions=[8, 9],
        vectors=np.ones((2, DIM), dtype=np.float32),
        vector_mask=np.array([True, False]),
        payloads=[encode_row({"id": 1}), b""],
        vector_dim=DIM,
    )
    sub = b"s" * 16
    wire, watermark = shared_frame_bytes(**args)
    frame = parse_frame(wire + envelope_bytes(3, sub, bind_frame(SEALER, sub, 3, watermark)))
    assert frame.watermark == watermark
    d = open_frame(frame, sealers, tenant_id="acme", stream_id="stream-1", subscription=sub)
    assert d.keys == args["keys"] and d.sequence == 3 and d.commit_time_us == -5
    assert d.vector_mask.tolist() == [True, False]
