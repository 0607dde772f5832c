"""Frames: the unit the wrapper serves and the driver applies.

The wrapper's serve step packs a batch of changes of one table into a Frame
(build_frame): it seals the vectors with the epoch's keyed matrix, lays out
the little-endian blocks documented in wrapper.proto and watermarks the
canonical form of every field with HMAC-SHA256 (from format 5, HMAC-SHA256 of
a GMAC digest of it: frame_watermark). The driver's first step on
receipt is open_frame: verify the watermark before trusting any byte, check
that the blocks agree with `count` and `vector_dim`, then unseal the vectors.

The keys and payloads blocks (the row data) travel only inside an AES-GCM
ciphertext (sealed_rows) whose associated data is a digest of every other
field, so rows cannot be moved to another tenant, table, epoch or position.

A frame is built once and sent to many Subscribe calls: the watermark and
the AEAD cover everything but the call's envelope (sequence, subscription),
and a small binding MAC over (subscription, sequence, watermark) ties one
copy to one call and one place in it (bind_frame). The wrapper serializes a
shared frame once and appends each call's envelope as further protobuf
fields; a frame replayed into another call, or at another place of this one,
fails the binding.

Both directions are pure functions over bytes and keys; a frame that fails any
check raises FrameError (WatermarkError when the HMAC does not match), and the
driver drops it whole and resumes from its last applied position.
"""

from __future__ import annotations

import functools
import hmac
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from types import ModuleType
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
from cryptography.exceptions import InvalidTag
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from prism.fabric import FRAME_FORMAT_VERSION, FRAME_FORMATS, wrapper_pb2
from prism.fabric.errors import (
    FabricError,
    FrameError,
    PrismError,
    ReplayedFrameError,
    SealedRowsError,
    WatermarkError,
)
from prism.fabric.frameview import LENGTH_TYPES, VIEW_FROM_BYTES, WIRE_FIELDS, FrameView
from prism.fabric.sealing import Sealer, random_nonce

_prefixed: ModuleType | None
try:  # the native splitter (_prefixed.c); optional: _split_prefixed_py does the same
    from prism.fabric import _prefixed
except ImportError:  # pragma: no cover - only where the extension did not build
    _prefixed = None

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's own from Python 3.12

WATERMARK_BYTES = 32
AEAD_NONCE_BYTES = 12

_U32 = struct.Struct("<I")
_FIELD_HEADER = struct.Struct("<IQ")
_INT_FIELD = struct.Struct("<IQQ")  # field number, length 8, value
_SIGNED_INT_FIELD = struct.Struct("<IQq")
_U64 = struct.Struct("<Q")
_KINDS = frozenset({wrapper_pb2.CHANGES, wrapper_pb2.RESET, wrapper_pb2.HEARTBEAT})


@dataclass
class DecodedFrame:
    """A verified, unsealed frame: what the driver applies to its replica."""

    kind: int  # a wrapper_pb2.FrameKind value
    tenant_id: str
    stream_id: str
    key_epoch: int
    table: str
    sequence: int
    commit_position: int  # != 0: the batch ends here, at this wrapper position
    head_position: int
    commit_time_us: int
    keys: list[str]  # encode_key strings
    ops: bytes  # b"U" / b"D" per row
    positions: np.ndarray  # uint64 (count,)
    vector_mask: np.ndarray  # bool (count,)
    # float32 (count, vector_dim), zeros where mask is False: unsealed, or
    # (open_frame(unseal=False)) still sealed by `sealer`'s matrix.
    vectors: np.ndarray
    payloads: list[bytes]  # encode_row bytes; empty for deletes
    vector_dim: int  # 0 when the table carries no vectors
    # Per row, the key an upsert replaced (a primary-key change), else None;
    # None for the whole frame when no row replaced a key.
    old_keys: list[str | None] | None = None
    # The Sealer whose keyed matrix `vectors` are still sealed with; None
    # when they are unsealed (the projected space).
    sealer: Sealer | None = None

    @property
    def count(self) -> int:
        return len(self.keys)


# -- canonical form and watermark -------------------------------------------

# The frame's fields as plain values, in field number order 1..12.
_Fields = tuple[int, str, str, int, int, str, int, int, int, int, int, int]
# The byte fields that follow them (13..21), by field number.
_Bytes = bytes | memoryview  # a FrameView's large blocks are views of the received bytes
_Blocks = Sequence[tuple[int, _Bytes]]
# What open_frame reads: a parsed Frame, or a large one's fields read in place.
FrameFields = wrapper_pb2.Frame | FrameView
_SEALED_ROWS = 19
_BINDING_LABEL = b"prism/frame-binding/v3"


def _canonical_parts(head: _Fields, blocks: _Blocks) -> list[_Bytes]:
    """canonical(frame) as pieces, so large blocks are hashed without copying."""
    parts: list[_Bytes] = [_canonical_head(head)]
    for number, block in blocks:
        parts.append(_FIELD_HEADER.pack(number, len(block)))
        parts.append(block)
    return parts


# A frame's head is packed twice, for the rows' AAD and for the watermark,
# on both sides: kept for a few frames (a tenth of a small frame's build).
@functools.lru_cache(maxsize=8)
def _canonical_head(head: _Fields) -> bytes:
    (fv, tenant, stream, epoch, kind, table, _seq, commit, head_pos, ctime, count, vdim) = head
    t, s, tb = tenant.encode("utf-8"), stream.encode("utf-8"), table.encode("utf-8")
    fixed = b"".join(
        (
            _INT_FIELD.pack(1, 8, fv),
            _FIELD_HEADER.pack(2, len(t)),
            t,
            _FIELD_HEADER.pack(3, len(s)),
            s,
            _INT_FIELD.pack(4, 8, epoch),
            _INT_FIELD.pack(5, 8, kind),
            _FIELD_HEADER.pack(6, len(tb)),
            tb,
            _INT_FIELD.pack(8, 8, commit),
            _INT_FIELD.pack(9, 8, head_pos),
            # int64 as its two's-complement u64: the same 8 bytes as "<q".
            _SIGNED_INT_FIELD.pack(10, 8, ctime),
            _INT_FIELD.pack(11, 8, count),
            _INT_FIELD.pack(12, 8, vdim),
        )
    )
    return fixed


def _head(frame: FrameFields) -> _Fields:
    return (
        frame.format_version,
        frame.tenant_id,
        frame.stream_id,
        frame.key_epoch,
        int(frame.kind),
        frame.table,
        frame.sequence,
        frame.commit_position,
        frame.head_position,
        frame.commit_time_us,
        frame.count,
        frame.vector_dim,
    )


def _blocks(frame: FrameFields) -> list[tuple[int, _Bytes]]:
    """Fields 13..20, each read once (protobuf copies bytes on every read)."""
    return [
        (13, frame.keys),
        (14, frame.ops),
        (15, frame.positions),
        (16, frame.vector_mask),
        (17, frame.vectors),
        (18, frame.payloads),
        (_SEALED_ROWS, frame.sealed_rows),
        (20, frame.aead_nonce),
    ]


def _rows_aad(head: _Fields, blocks: _Blocks) -> list[_Bytes]:
    """The AEAD's associated data, in parts: canonical(frame) without
    sealed_rows, so the rows are bound to every other field. GCM
    authenticates it at memory speed, so it is passed whole rather than
    hashed first, and in parts (Sealer.encrypt_parts) rather than joined."""
    return _canonical_parts(head, [b for b in blocks if b[0] != _SEALED_ROWS])


_WATERMARK_LABEL = b"prism/frame-watermark/v5"


def _watermark(sealer: Sealer, head: _Fields, blocks: _Blocks) -> bytes:
    """The watermark of a frame of ``head`` and ``blocks`` in its format.

    Formats 3 and 4: HMAC-SHA256 over canonical(frame). Format 5:
    HMAC-SHA256 over a label and the frame's GMAC digest
    (Sealer.frame_digest: a key derived from the HMAC key, the frame's
    aead_nonce, canonical(frame) as the data). The digest covers every byte
    the old watermark covered; SHA-256 over whole frames was a fifth of a
    driver's bootstrap and GHASH is some 15 times faster. WatermarkError
    when the nonce a format-5 frame carries cannot be one."""
    parts = _canonical_parts(head, blocks)
    if head[0] < 5:
        return sealer.watermark_parts(parts)
    nonce = bytes(dict(blocks)[20])  # a bytes field: bytes() returns it as it is
    if len(nonce) != AEAD_NONCE_BYTES:
        raise WatermarkError(
            f"aead_nonce has {len(nonce)} bytes, expected {AEAD_NONCE_BYTES}: "
            "the frame's digest cannot be checked"
        )
    return sealer.watermark(_WATERMARK_LABEL + sealer.frame_digest(nonce, parts))


def frame_watermark(sealer: Sealer, frame: wrapper_pb2.Frame) -> bytes:
    """The watermark ``frame`` must carry in its format, with ``sealer``'s
    keys (for tools and tests that re-sign a frame they changed)."""
    return _watermark(sealer, _head(frame), _blocks(frame))


def canonical_bytes(frame: wrapper_pb2.Frame) -> bytes:
    """The bytes the watermark covers: every field but the call's envelope
    (sequence, subscription, binding) and `watermark`, in field number order,
    each as u32 field number, u64 byte length, bytes; integers as 8
    little-endian bytes, strings as UTF-8 (see wrapper.proto)."""
    return b"".join(_canonical_parts(_head(frame), _blocks(frame)))


def binding_bytes(subscription: bytes, sequence: int, watermark: bytes) -> bytes:
    """What a frame's binding MAC signs: the envelope of one Subscribe call
    (its subscription nonce and the frame's place in it) and the watermark,
    which stands for everything else."""
    return b"".join(
        (_BINDING_LABEL, _U32.pack(len(subscription)), subscription, _U64.pack(sequence), watermark)
    )


def bind_frame(sealer: Sealer, subscription: bytes, sequence: int, watermark: bytes) -> bytes:
    """The binding MAC of a shared frame sent as frame ``sequence`` of the
    Subscribe call ``subscription`` (HMAC-SHA256 with the epoch's HMAC key)."""
    return sealer.watermark(binding_bytes(subscription, sequence, watermark))


def envelope_bytes(sequence: int, subscription: bytes, binding: bytes) -> bytes:
    """The serialized envelope fields. Appended to a shared frame's
    serialization, protobuf's merge rule makes the two one Frame: the wrapper
    serializes a shared frame once and sends it to every call this way."""
    return wrapper_pb2.Frame(
        sequence=sequence, subscription=subscription, binding=binding
    ).SerializeToString()


# -- building ---------------------------------------------------------------


# Frames of up to this many rows pack their positions without numpy.
_FEW_ROWS = 16


def _join_prefixed(items: Sequence[bytes]) -> bytes:
    lengths = list(map(len, items))
    if lengths and max(lengths) > 0xFFFFFFFF:
        raise FabricError("a key or payload is 4 GiB or larger and cannot be framed")
    return b"".join(chain.from_iterable(zip(map(_U32.pack, lengths), items, strict=True)))


def build_frame(
    *,
    sealer: Sealer | None,
    tenant_id: str,
    stream_id: str,
    kind: int,
    table: str,
    sequence: int,
    commit_position: int,
    head_position: int,
    commit_time_us: int,
    keys: Sequence[str],
    ops: bytes,
    positions: Sequence[int] | np.ndarray,
    vectors: np.ndarray | None,
    vector_mask: np.ndarray | None,
    payloads: Sequence[bytes],
    vector_dim: int,
    subscription: bytes = b"",
    old_keys: Sequence[str | None] | None = None,
    format_version: int = FRAME_FORMAT_VERSION,
    vectors_sealed: bool = False,
) -> wrapper_pb2.Frame:
    """Pack, seal and watermark a batch of changes of one table, sent as
    frame ``sequence`` of the Subscribe call that named itself
    ``subscription``: build_shared_frame, then the call's envelope."""
    frame = build_shared_frame(
        sealer=sealer,
        tenant_id=tenant_id,
        stream_id=stream_id,
        kind=kind,
        table=table,
        commit_position=commit_position,
        head_position=head_position,
        commit_time_us=commit_time_us,
        keys=keys,
        ops=ops,
        positions=positions,
        vectors=vectors,
        vector_mask=vector_mask,
        payloads=payloads,
        vector_dim=vector_dim,
        old_keys=old_keys,
        format_version=format_version,
        vectors_sealed=vectors_sealed,
    )
    frame.sequence = sequence
    frame.subscription = subscription
    if sealer is not None:
        frame.binding = bind_frame(sealer, subscription, sequence, frame.watermark)
    return frame


class FrameArgs(TypedDict):
    """_frame_fields' arguments, for the callers that pass them on
    (build_shared_frame, shared_frame_bytes): mypy checks their names and
    types at every call."""

    sealer: Sealer | None
    tenant_id: str
    stream_id: str
    kind: int
    table: str
    commit_position: int
    head_position: int
    commit_time_us: int
    keys: Sequence[str]
    ops: bytes
    positions: Sequence[int] | np.ndarray
    vectors: np.ndarray | None
    vector_mask: np.ndarray | None
    payloads: Sequence[bytes]
    vector_dim: int
    old_keys: NotRequired[Sequence[str | None] | None]
    format_version: NotRequired[int]
    vectors_sealed: NotRequired[bool]


def _frame_fields(
    *,
    sealer: Sealer | None,
    tenant_id: str,
    stream_id: str,
    kind: int,
    table: str,
    commit_position: int,
    head_position: int,
    commit_time_us: int,
    keys: Sequence[str],
    ops: bytes,
    positions: Sequence[int] | np.ndarray,
    vectors: np.ndarray | None,
    vector_mask: np.ndarray | None,
    payloads: Sequence[bytes],
    vector_dim: int,
    old_keys: Sequence[str | None] | None = None,
    format_version: int = FRAME_FORMAT_VERSION,
    vectors_sealed: bool = False,
) -> dict[str, Any]:
    """Pack, seal and watermark a batch of changes of one table, without a
    call's envelope (sequence 0, no subscription, no binding): one frame for
    every Subscribe call that is sent it (see bind_frame, envelope_bytes).

    ``vectors`` are the unsealed float32 (count, vector_dim) vectors (with
    ``vectors_sealed``, already multiplied by ``sealer``'s matrix: the
    wrapper folds its projection into the seal), or None when the table
    carries no vectors; then the frame's vector_dim is 0 and its
    vectors block empty. ``vector_mask`` (None: every row has a vector) marks
    the rows whose vector is meaningful; the others travel as zeros.

    ``old_keys`` (None: no row replaced a key) gives, per row, the key an
    upsert replaced on a primary-key change, or None. They travel inside
    sealed_rows with the keys, so a signed frame is needed to carry them.
    Format 3 (for a driver that reads no newer one) has no place for them:
    there they are left out.

    With ``sealer=None`` the frame is built unsigned (key_epoch 0, empty
    watermark) and may carry neither vectors nor old keys; open_frame
    rejects such frames, so this is only for tools and tests.

    Raises FabricError when the arguments do not describe a valid frame.
    """
    count = len(keys)
    if format_version not in FRAME_FORMATS:
        raise FabricError(
            f"frame format {format_version} is not one this release writes "
            f"({sorted(FRAME_FORMATS)})"
        )
    if kind not in _KINDS:
        raise FabricError(f"frame kind {kind} is not CHANGES, RESET or HEARTBEAT")
    if kind == wrapper_pb2.HEARTBEAT and count:
        raise FabricError(f"a HEARTBEAT frame carries no rows, got {count}")
    if len(ops) != count or len(positions) != count or len(payloads) != count:
        raise FabricError(
            f"frame rows disagree: {count} keys, {len(ops)} ops, "
            f"{len(positions)} positions, {len(payloads)} payloads"
        )
    ops = bytes(ops)
    if ops.translate(None, b"UD"):
        raise FabricError(f"frame ops must be b'U' or b'D', got {ops!r}")
    start = 0
    while (i := ops.find(b"D", start)) >= 0:
        if payloads[i]:
            raise FabricError(f"row {i} ({keys[i]}) is a delete but carries a payload")
        start = i + 1
    if count > _FEW_ROWS or isinstance(positions, np.ndarray):
        pos = np.asarray(positions, dtype=np.uint64)
        if count > 1 and not bool(np.all(pos[1:] >= pos[:-1])):
            raise FabricError("frame positions must be non-decreasing")
        positions_block = pos.astype("<u8", copy=False).tobytes()
    else:
        # A live frame's few rows: packed directly. A numpy round trip per
        # block was a fifth of a one-row frame's build, most of it in the
        # cold caches of a write's path (benchmark/README.md, "Issue 12").
        if any(b < a for a, b in pairwise(positions)):
            raise FabricError("frame positions must be non-decreasing")
        try:
            positions_block = struct.pack(f"<{count}Q", *positions)
        except struct.error as exc:
            raise FabricError(f"frame positions must be 0 to 2**64-1: {exc}") from None
    old_keys_block = _old_keys_block(old_keys, keys, ops) if format_version >= 4 else b""
    if old_keys_block and sealer is None:
        raise FabricError("old keys cannot be framed without a sealer")

    if vectors is None:
        if vector_mask is not None and bool(np.any(vector_mask)):
            raise FabricError("vector_mask marks rows with vectors but no vectors were given")
        frame_dim = 0
        mask_block = bytes(count)
        vectors_block = b""
    else:
        if sealer is None:
            raise FabricError("vectors cannot be framed without a sealer")
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.shape != (count, vector_dim):
            raise FabricError(f"vectors have shape {arr.shape}, expected ({count}, {vector_dim})")
        if sealer.dim != vector_dim:
            raise FabricError(f"sealer dimension {sealer.dim} != vector_dim {vector_dim}")
        sealed = arr if vectors_sealed else sealer.seal(arr)
        if vector_mask is None:
            mask_block = b"\x01" * count
        else:
            m = np.asarray(vector_mask, dtype=bool)
            if m.shape != (count,):
                raise FabricError(f"vector_mask has shape {m.shape}, expected ({count},)")
            # A copy: the caller's sealed vectors are not zeroed in place.
            sealed = np.where(m[:, None], sealed, np.float32(0.0))
            mask_block = m.astype(np.uint8).tobytes()
        frame_dim = vector_dim
        vectors_block = sealed.astype("<f4", copy=False).tobytes()

    try:
        keys_block = _join_prefixed([k.encode("utf-8") for k in keys])
    except UnicodeEncodeError as exc:
        raise FabricError(f"a key is not valid UTF-8 text: {exc}") from None
    payloads_block = _join_prefixed(payloads)
    epoch = sealer.epoch if sealer is not None else 0
    sealed_rows = watermark = aead_nonce = b""
    if sealer is not None:
        aead_nonce = random_nonce(AEAD_NONCE_BYTES)
        head: _Fields = (
            format_version,
            tenant_id,
            stream_id,
            epoch,
            kind,
            table,
            0,
            commit_position,
            head_position,
            commit_time_us,
            count,
            frame_dim,
        )
        blocks: list[tuple[int, _Bytes]] = [
            (13, b""),
            (14, ops),
            (15, positions_block),
            (16, mask_block),
            (17, vectors_block),
            (18, b""),
            (_SEALED_ROWS, b""),
            (20, aead_nonce),
        ]
        sealed_rows, watermark = _seal(
            head, blocks, sealer, keys_block, old_keys_block, payloads_block
        )
        keys_block = payloads_block = b""
    return dict(
        format_version=format_version,
        tenant_id=tenant_id,
        stream_id=stream_id,
        key_epoch=epoch,
        kind=kind,
        table=table,
        commit_position=commit_position,
        head_position=head_position,
        commit_time_us=commit_time_us,
        count=count,
        vector_dim=frame_dim,
        keys=keys_block,
        ops=ops,
        positions=positions_block,
        vector_mask=mask_block,
        vectors=vectors_block,
        payloads=payloads_block,
        sealed_rows=sealed_rows,
        aead_nonce=aead_nonce,
        watermark=watermark,
    )


def build_shared_frame(**args: Unpack[FrameArgs]) -> wrapper_pb2.Frame:
    """The frame _frame_fields(**args) describes, as a message: see there
    for the arguments, and shared_frame_bytes for what the wrapper sends."""
    return wrapper_pb2.Frame(**_frame_fields(**args))


def shared_frame_bytes(**args: Unpack[FrameArgs]) -> tuple[bytes, bytes]:
    """build_shared_frame(**args) serialized, and its watermark, without
    building the message: protobuf copied every block into the message and
    again when serializing it, holding the interpreter lock (some 3 µs a row,
    the largest part of building a live frame). The bytes are the ones
    SerializeToString gives (tests/unit/test_frames.py compares them)."""
    fields = _frame_fields(**args)
    return serialize_fields(fields), fields["watermark"]


# serialize_fields writes Frame's fields (WIRE_FIELDS, from protobuf's
# descriptor, which FrameView reads by too) in field number order, as
# protobuf does; proto3 leaves out zeros and empty strings and bytes.
_TYPE_SIGNED = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_ENUM)


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Varints below 2**14 (every tag, and most lengths and counts), made once:
# a frame's serialization writes some 30 of them, and building each byte by
# byte was a third of a live frame's build.
_VARINTS = tuple(_varint_slow(n) for n in range(1 << 14))


def _varint(n: int) -> bytes:
    return _VARINTS[n] if n < 1 << 14 else _varint_slow(n)


# Per field of WIRE_FIELDS: (name, its tag's bytes, whether it is bytes or
# text, whether it is a signed integer).
_WIRE_TAGS = tuple(
    (
        name,
        _varint(number << 3 | (2 if kind in LENGTH_TYPES else 0)),
        kind in LENGTH_TYPES,
        kind in _TYPE_SIGNED,
    )
    for name, number, kind in WIRE_FIELDS
)


def serialize_fields(fields: dict[str, Any]) -> bytes:
    """The protobuf wire bytes of a Frame with ``fields`` (names as in
    wrapper.proto; absent ones are zero or empty), in one join."""
    parts: list[bytes] = []
    append = parts.append
    for name, tag, length_type, signed in _WIRE_TAGS:
        value = fields.get(name)
        if not value:
            continue
        append(tag)
        if length_type:
            data = value.encode("utf-8") if isinstance(value, str) else value
            append(_varint(len(data)))
            append(data)
        else:
            v = int(value)
            if v < 0 and signed:
                v += 1 << 64  # two's complement, as protobuf writes a negative int64
            append(_varint(v))
    return b"".join(parts)


# -- opening ----------------------------------------------------------------


def _split_prefixed(block: bytes, count: int, name: str, text: bool = False) -> list[Any]:
    """The ``count`` (u32 length, bytes) entries of a block, which they must
    fill; as str (UTF-8, UnicodeDecodeError otherwise) when ``text``. In C
    where fabric/_prefixed.c built, else in Python: the same entries and errors."""
    if _prefixed is None:
        entries = _split_prefixed_py(bytes(block), count, name)
        return [e.decode("utf-8") for e in entries] if text else entries
    try:
        return _prefixed.split(block, count, text)
    except UnicodeDecodeError:  # a ValueError too: the caller names the block
        raise
    except ValueError as exc:
        raise FrameError(f"{name} {exc}") from None


def _split_prefixed_py(block: bytes, count: int, name: str) -> list[bytes]:
    """_split_prefixed in Python, as bytes."""
    n = len(block)
    if 4 * count > n:
        raise FrameError(f"{name} block of {n} bytes is too short for {count} entries")
    out: list[bytes] = []
    append = out.append
    unpack = _U32.unpack_from
    off = 0
    # An entry that runs past the end leaves off > n: the next unpack_from
    # fails, or the final check does; no per-entry bounds test is needed.
    try:
        for _ in range(count):
            (length,) = unpack(block, off)
            off += 4
            append(block[off : off + length])
            off += length
    except struct.error:
        raise FrameError(f"{name} block is truncated before its {count} entries end") from None
    if off > n:
        raise FrameError(f"{name} block's last entry runs past the end of the block")
    if off < n:
        raise FrameError(f"{name} block has {n - off} bytes after its {count} entries")
    return out


def seal_frame(
    frame: wrapper_pb2.Frame,
    sealer: Sealer,
    keys_block: bytes,
    old_keys_block: bytes,
    payloads_block: bytes,
) -> None:
    """Encrypt the row blocks into ``frame.sealed_rows``, watermark the
    frame and bind it to its envelope, in place, with the keys of
    ``sealer``'s epoch. Tools use it to re-seal a frame they changed."""
    frame.key_epoch = sealer.epoch
    frame.keys = frame.payloads = frame.sealed_rows = b""
    frame.aead_nonce = random_nonce(AEAD_NONCE_BYTES)
    blocks = _blocks(frame)
    frame.sealed_rows, frame.watermark = _seal(
        _head(frame), blocks, sealer, keys_block, old_keys_block, payloads_block
    )
    frame.binding = bind_frame(sealer, frame.subscription, frame.sequence, frame.watermark)


def _old_keys_block(
    old_keys: Sequence[str | None] | None, keys: Sequence[str], ops: bytes
) -> bytes:
    """The old keys as sealed_rows carries them: nothing when no row
    replaced a key, else one (u32 length, UTF-8) entry per row, empty for
    none (an encoded key is never empty: it is a JSON array)."""
    if old_keys is None or all(k is None for k in old_keys):
        return b""
    if len(old_keys) != len(keys):
        raise FabricError(f"{len(old_keys)} old keys for {len(keys)} rows")
    out = []
    for i, k in enumerate(old_keys):
        if k is None:
            out.append(b"")
            continue
        if not k or ops[i : i + 1] != b"U":
            raise FabricError(
                f"row {i} ({keys[i]}): an old key needs an upsert and a non-empty key"
            )
        try:
            out.append(k.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise FabricError(f"an old key is not valid UTF-8 text: {exc}") from None
    return _join_prefixed(out)


def _seal(
    head: _Fields,
    blocks: list[tuple[int, _Bytes]],
    sealer: Sealer,
    keys: bytes,
    old_keys: bytes,
    payloads: bytes,
) -> tuple[bytes, bytes]:
    """(sealed_rows, watermark) for a frame whose other fields are ``head``
    and ``blocks`` (keys and payloads empty, sealed_rows a placeholder that is
    filled in here); the blocks are hashed where they lie, never copied.
    The plaintext: u64 length and the keys block, (format 4, from the head's
    format version) u64 length and the old keys block, the payloads block."""
    if head[0] >= 4:
        plaintext = b"".join(
            (_U64.pack(len(keys)), keys, _U64.pack(len(old_keys)), old_keys, payloads)
        )
    else:
        plaintext = b"".join((_U64.pack(len(keys)), keys, payloads))
    nonce = bytes(dict(blocks)[20])
    sealed = sealer.encrypt_parts(nonce, plaintext, _rows_aad(head, blocks))
    blocks[blocks.index((_SEALED_ROWS, b""))] = (_SEALED_ROWS, sealed)
    return sealed, _watermark(sealer, head, blocks)


def _open_rows(head: _Fields, blocks: _Blocks, sealer: Sealer) -> tuple[bytes, bytes, bytes]:
    """Decrypt sealed_rows into the keys, old keys and payloads blocks; the
    associated data ties them to every other field of this frame. FrameError
    otherwise."""
    by_number = dict(blocks)
    if by_number[13] or by_number[18]:
        raise FrameError("a signed frame carries keys or payloads outside sealed_rows")
    nonce = bytes(by_number[20])
    if len(nonce) != AEAD_NONCE_BYTES:
        raise FrameError(f"aead_nonce has {len(nonce)} bytes, expected {AEAD_NONCE_BYTES}")
    try:
        plain = sealer.decrypt_parts(nonce, by_number[_SEALED_ROWS], _rows_aad(head, blocks))
    except InvalidTag:
        raise SealedRowsError(
            f"frame {head[6]} of {head[5]!r}: sealed_rows fail AES-GCM authentication"
        ) from None
    if head[0] < 4:  # format 3: keys and payloads only
        if len(plain) < 8:
            raise FrameError("sealed_rows hold fewer than 8 bytes")
        (n_keys,) = _U64.unpack_from(plain)
        if n_keys > len(plain) - 8:
            raise FrameError("sealed_rows: keys length runs past the end")
        return plain[8 : 8 + n_keys], b"", plain[8 + n_keys :]
    if len(plain) < 16:
        raise FrameError("sealed_rows hold fewer than 16 bytes (two block lengths)")
    (n_keys,) = _U64.unpack_from(plain)
    if n_keys > len(plain) - 16:
        raise FrameError("sealed_rows: keys length runs past the end")
    at = 8 + n_keys
    (n_old,) = _U64.unpack_from(plain, at)
    at += 8
    if n_old > len(plain) - at:
        raise FrameError("sealed_rows: old keys length runs past the end")
    return plain[8 : 8 + n_keys], plain[at : at + n_old], plain[at + n_old :]


def parse_frame(data: bytes) -> wrapper_pb2.Frame:
    """A frame from its wire bytes; FrameError when they are not a Frame.
    The driver reads Subscribe's raw bytes and parses them here, because
    gRPC's own deserializer swallows the error and hands on None."""
    try:
        frame = wrapper_pb2.Frame.FromString(data)
    except DecodeError as exc:
        raise FrameError(f"{len(data)} bytes do not parse as a Frame: {exc}") from None
    # The format version fixes the fields; anything else (a field of another
    # number, or a known number with the wrong wire type) is not ours.
    unknown = UnknownFieldSet(frame)
    if len(unknown):
        numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
        raise FrameError(f"frame carries fields this format does not define: {numbers}")
    return frame


def open_rows(frame: FrameFields, sealer: Sealer) -> tuple[bytes, bytes, bytes]:
    """The keys, old keys and payloads blocks of a signed frame (for tools
    and tests; open_frame does this after the watermark verified)."""
    return _open_rows(_head(frame), _blocks(frame), sealer)


def read_frame(data: bytes) -> FrameFields:
    """A received frame's fields: a large one read in place (FrameView: its
    vector block and sealed rows are not copied), a small one parsed by
    protobuf (parse_frame). FrameError when the bytes are not a Frame."""
    return FrameView(data) if len(data) >= VIEW_FROM_BYTES else parse_frame(data)


def open_frame(
    frame: FrameFields,
    sealer_for_epoch: Callable[[int], Sealer],
    *,
    tenant_id: str,
    stream_id: str | None,
    subscription: bytes | None = None,
    unseal: bool = True,
) -> DecodedFrame:
    """Verify, check and unseal a received frame.

    With ``unseal=False`` the vectors are handed over still sealed, with
    the Sealer that sealed them (DecodedFrame.sealer): the driver keeps its
    index in one epoch's sealed space and seals each query into it instead
    of unsealing every row (prism.driver.space), which saves the largest
    per-row cost of opening a frame.

    The watermark is checked first, with the keys of the frame's epoch from
    ``sealer_for_epoch``; nothing in an unverified frame is trusted. Then the
    frame must be of this format version, tenant, (unless None) stream and
    Subscribe call (``subscription``: the nonce the driver sent in its
    SubscribeRequest; the binding MAC ties the frame to that call and to its
    sequence number there, so frames recorded from another call, or moved
    within this one, are refused), and its blocks must agree with count and
    vector_dim. Bad bytes raise
    FrameError or its subclass WatermarkError, never anything else; a
    PrismError raised by ``sealer_for_epoch`` itself passes through.
    """
    head = _head(frame)
    epoch = head[3]
    try:
        sealer = sealer_for_epoch(epoch)
    except PrismError:
        raise
    except Exception as exc:
        # The epoch is attacker-controlled until the watermark verifies.
        raise WatermarkError(f"no key for epoch {epoch}: {exc}") from exc

    blocks = _blocks(frame)
    ops_block, positions_block, mask_block, vectors_block = (b for _, b in blocks[1:5])
    ops = bytes(ops_block)  # bytes already (only the vectors and sealed rows may be views)
    mac = frame.watermark
    if len(mac) != WATERMARK_BYTES:
        raise WatermarkError(
            f"frame {head[6]} of {head[5]!r} has a watermark of {len(mac)} bytes, "
            f"expected {WATERMARK_BYTES}"
        )
    try:
        expected = _watermark(sealer, head, blocks)
    except (UnicodeEncodeError, struct.error) as exc:
        raise WatermarkError(f"frame cannot be put in canonical form: {exc}") from None
    if not hmac.compare_digest(expected, mac):
        raise WatermarkError(
            f"frame {head[6]} of {head[5]!r} (epoch {epoch}) fails its watermark: "
            f"tampered, or signed with another tenant secret"
        )

    fv, tenant, stream, _, kind, table, seq, commit, head_pos, ctime, count, vdim = head
    if fv not in FRAME_FORMATS:
        # Say which side to upgrade.
        fix = (
            "upgrade prismlib on this app node to the wrapper's release"
            if fv > FRAME_FORMAT_VERSION
            else "upgrade prism-wrapper to this driver's release"
        )
        raise FrameError(
            f"frame format version {fv} is not supported (this driver reads "
            f"{', '.join(map(str, sorted(FRAME_FORMATS)))}); {fix}",
            retriable=False,
        )
    if tenant != tenant_id:
        raise FrameError(f"frame belongs to tenant {tenant!r}, not {tenant_id!r}")
    if stream_id is not None and stream != stream_id:
        raise FrameError(f"frame belongs to stream {stream!r}, not {stream_id!r}")
    if subscription is not None:
        if frame.subscription != subscription:
            raise ReplayedFrameError(
                f"frame {seq} of {table!r} was sent to another Subscribe call: replayed"
            )
        binding = frame.binding
        if len(binding) != WATERMARK_BYTES or not hmac.compare_digest(
            bind_frame(sealer, subscription, seq, mac), binding
        ):
            raise ReplayedFrameError(
                f"frame {seq} of {table!r} fails its binding to this Subscribe call: "
                "replayed, reordered or re-addressed"
            )
    if kind not in _KINDS:
        raise FrameError(f"frame kind {kind} is unknown")
    if kind == wrapper_pb2.HEARTBEAT and count:
        raise FrameError(f"HEARTBEAT frame claims {count} rows")
    if len(ops) != count:
        raise FrameError(f"ops block has {len(ops)} bytes for {count} rows")
    if len(positions_block) != 8 * count:
        raise FrameError(f"positions block has {len(positions_block)} bytes for {count} rows")
    if len(mask_block) != count:
        raise FrameError(f"vector_mask block has {len(mask_block)} bytes for {count} rows")
    if len(vectors_block) != 4 * count * vdim:
        raise FrameError(
            f"vectors block has {len(vectors_block)} bytes for {count} rows x {vdim} floats"
        )
    if ops.translate(None, b"UD"):
        raise FrameError("ops block holds an op other than 'U' and 'D'")
    keys_block, old_keys_block, payloads_block = _open_rows(head, blocks, sealer)
    # Byte-string checks, not numpy reductions: a live frame holds a row or
    # two, where a reduction's call costs more than the bytes (10-20 µs a
    # frame in the driver's write path).
    mask_block = bytes(mask_block)  # bytes already, as ops
    if mask_block.translate(None, b"\x00\x01"):
        raise FrameError("vector_mask block holds a value other than 0 and 1")
    every_vector = b"\x00" not in mask_block
    positions = np.frombuffer(positions_block, dtype="<u8").astype(np.uint64)
    if count > 1 and not bool(np.all(positions[1:] >= positions[:-1])):
        raise FrameError("positions block is not non-decreasing")

    try:
        keys = _split_prefixed(keys_block, count, "keys", text=True)
    except UnicodeDecodeError as exc:
        raise FrameError(f"keys block holds invalid UTF-8: {exc}") from None
    payloads = _split_prefixed(payloads_block, count, "payloads")
    old_keys: list[str | None] | None = None
    if old_keys_block:
        try:
            old_keys = [k or None for k in _split_prefixed(old_keys_block, count, "old keys", True)]
        except UnicodeDecodeError as exc:
            raise FrameError(f"old keys block holds invalid UTF-8: {exc}") from None
        for i, k in enumerate(old_keys):
            if k is not None and ops[i : i + 1] != b"U":
                raise FrameError(f"row {i} ({keys[i]}) is a delete but carries an old key")
    start = 0
    while (i := ops.find(b"D", start)) >= 0:
        if payloads[i]:
            raise FrameError(f"row {i} ({keys[i]}) is a delete but carries a payload")
        start = i + 1

    mask = np.frombuffer(mask_block, dtype=np.uint8).astype(bool)
    if vdim and count:
        if sealer.dim != vdim:
            raise FrameError(
                f"frame vector_dim {vdim} differs from the tenant's vector dimension {sealer.dim}"
            )
        sealed = np.frombuffer(vectors_block, dtype="<f4").reshape(count, vdim)
        if unseal:
            vectors = sealer.unseal(sealed)
            if not every_vector:
                vectors[~mask] = 0.0
        else:
            vectors = sealed
            if not every_vector:  # the wrapper sends zeros there; never trust it
                vectors = vectors.copy()
                vectors[~mask] = 0.0
    else:
        vectors = np.zeros((count, vdim), dtype=np.float32)
    frame_sealer = sealer if vdim and count and not unseal else None

    return DecodedFrame(
        kind=kind,
        tenant_id=tenant,
        stream_id=stream,
        key_epoch=epoch,
        table=table,
        sequence=seq,
        commit_position=commit,
        head_position=head_pos,
        commit_time_us=ctime,
        keys=keys,
        ops=ops,
        positions=positions,
        vector_mask=mask,
        vectors=vectors,
        payloads=payloads,
        vector_dim=vdim,
        old_keys=old_keys,
        sealer=frame_sealer,
    )
