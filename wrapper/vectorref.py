"""Stored vectors by reference: a row's source vector where its payload holds it.

Between vectorize and the store, and again at serving. A table whose rows
carry their vector column to drivers (config `vector_in_rows`, the default)
has each row's source vector in its payload already, as raw little-endian
float32s (prism.fabric.payload's float32 extension). Storing the projected
vector beside it made every stored row some 1.5 kB larger for 384-d vectors:
a 3.3 kB row then took a page and an overflow page in SQLite, and a change
rewrote both (benchmark/README.md, "Issue 12": an upsert cost 57 µs of the
writer's CPU with the copy, 37 µs without). So for such rows the store's
`vector` column holds a reference instead: where in the payload the source
vector's bytes lie. Serving projects them when it builds a frame, where it
multiplies by the sealing matrix anyway.

A stored vector is one of:
- None: the row has no vector;
- 4 * dim bytes: the projected vector itself (text-embedder tables, tables
  whose vector column is hidden, and rows whose vector the payload does not
  hold byte for byte);
- REF_BYTES bytes, REF_TAG then u32 offset and u32 length: a reference.
  4 * dim is a multiple of 4 and REF_BYTES is not, so the two never meet.

Pure code: no I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from prism.fabric.payload import EXT_F4
from prism.fabric.sealing import Sealer
from prism.wrapper.preseal import Presealed

_vecref: ModuleType | None
try:  # the native resolver (_vecref.c); optional: split_py does the same
    from prism.wrapper import _vecref
except ImportError:  # pragma: no cover - only where the extension did not build
    _vecref = None

REF_TAG = b"\x00"
_REF = struct.Struct("<II")
REF_BYTES = 1 + _REF.size  # 9
_AHEAD_ROWS = 16  # a frame of up to this many rows looks for products made ahead (writes)
_PREFIX = 16  # bytes of a source vector searched for before the whole is compared


class VectorRefError(ValueError):
    """A stored reference does not point into its payload."""


def is_ref(stored: bytes | None) -> bool:
    return stored is not None and len(stored) == REF_BYTES and stored[:1] == REF_TAG


def _ext_header(n: int) -> bytes:
    """The MessagePack header of an n-byte float32-array extension."""
    if n < 256:
        return struct.pack(">BBb", 0xC7, n, EXT_F4)
    if n < 65536:
        return struct.pack(">BHb", 0xC8, n, EXT_F4)
    return struct.pack(">BIb", 0xC9, n, EXT_F4)


def make_ref(payload: bytes, source: bytes) -> bytes | None:
    """A reference to ``source`` in ``payload``, or None when the payload
    does not hold those bytes. Any place that holds them is a right one:
    the bytes there are the vector's, whatever else the payload says."""
    if not source:
        return None
    n = len(source)
    # The vector column is usually the row's last, so its bytes end the
    # payload: one compare. Else, where prism.fabric.payload puts a float32
    # array, after its MessagePack extension header, found from the end;
    # else by a prefix, then compared whole (bytes.find with the whole
    # 1.5 kB vector as its needle cost some 5 µs a row).
    if payload.endswith(source):
        return REF_TAG + _REF.pack(len(payload) - n, n)
    header = _ext_header(n)
    at = payload.rfind(header)
    if at >= 0 and payload.startswith(source, at + len(header)):
        return REF_TAG + _REF.pack(at + len(header), n)
    head = source[:_PREFIX]
    at = payload.find(head)
    while at >= 0:
        if payload.startswith(source, at):
            return REF_TAG + _REF.pack(at, n)
        at = payload.find(head, at + 1)
    return None


def resolve(payload: bytes, ref: bytes) -> bytes:
    """The source vector bytes a reference points to in ``payload``."""
    if not is_ref(ref):
        raise VectorRefError(f"a stored vector of {len(ref)} bytes is not a reference")
    at, n = _REF.unpack_from(ref, 1)
    if at + n > len(payload) or n % 4:
        raise VectorRefError(
            f"reference to bytes {at}..{at + n} does not fit a payload of {len(payload)} bytes"
        )
    return payload[at : at + n]


def refer(
    payloads: Sequence[bytes | None], sources: Sequence[bytes | None]
) -> tuple[list[bytes | None], list[int]]:
    """References to each row's source vector bytes (None: no vector), and
    the indexes of the rows whose payload does not hold them, whose entry is
    left None for the caller to fill with the projected vector."""
    out: list[bytes | None] = [None] * len(sources)
    missing: list[int] = []
    for i, (p, s) in enumerate(zip(payloads, sources, strict=True)):
        if s is None:
            continue
        ref = make_ref(p, s) if p is not None else None
        if ref is None:
            missing.append(i)
        out[i] = ref
    return out, missing


def resolve_vectors(
    payloads: Sequence[bytes],
    stored: Sequence[bytes | None],
    dim: int,
    matrix: np.ndarray | None,
    sealer: Sealer | None = None,
    presealed: Presealed | None = None,
    table: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, mask) of a frame's rows from what the store holds: the
    projected float32 (n, dim) vectors, zeros where mask is False.
    References are resolved in their payloads and projected with ``matrix``
    (source_dim, dim) in one multiplication; None for a table that stores
    no references (a reference then raises VectorRefError). With
    ``sealer``, the vectors come sealed by it, and a reference's source
    vector takes one multiplication, by the projection and the seal at once
    (Sealer.sealing); with ``presealed`` too, a few rows' products come from
    there when a write made them ahead (prism.wrapper.preseal), and frames of
    ``table`` register the matrix they are sealed with."""
    n = len(stored)
    if matrix is not None and matrix.shape[1] != dim:
        raise VectorRefError(f"projection to {matrix.shape[1]} dimensions, frames carry {dim}")
    if _vecref is not None:
        try:
            mask_bytes, refs, plain, src = _vecref.split(payloads, stored)
        except ValueError as exc:
            raise VectorRefError(str(exc)) from None
    else:
        mask_bytes, refs, plain, src = split_py(payloads, stored)
    mask = np.frombuffer(mask_bytes, dtype=bool)
    if refs:
        if matrix is None:
            raise VectorRefError("the store holds vector references for a table without vectors")
        source = np.frombuffer(src, dtype="<f4")
        if source.size != len(refs) * matrix.shape[0]:
            raise VectorRefError(
                f"referenced vectors hold {source.size} floats, expected "
                f"{len(refs)} x {matrix.shape[0]}"
            )
        into = matrix if sealer is None else sealer.sealing(matrix)
        projected = None
        if presealed is not None and sealer is not None:
            presealed.used(table, into)
            if len(refs) <= _AHEAD_ROWS:
                projected = _made_ahead(presealed, into, bytes(src), len(refs))
        if projected is None:
            projected = source.reshape(len(refs), matrix.shape[0]) @ into
        if len(refs) == n:
            # Every row by reference (the usual frame): the product is the
            # frame's vectors, with no zeroed array to copy it into.
            return projected.astype(np.float32, copy=False), mask
    vectors = np.zeros((n, dim), dtype=np.float32)
    if refs:
        vectors[refs] = projected
    if plain:
        given = np.frombuffer(b"".join(stored[i] or b"" for i in plain), dtype="<f4")
        given = given.reshape(len(plain), dim)
        vectors[plain] = given if sealer is None else sealer.seal(given)
    return vectors, mask


def _made_ahead(presealed: Presealed, into: np.ndarray, src: bytes, n: int) -> np.ndarray | None:
    """The n rows' products by `into`, if every one was made ahead."""
    size = len(src) // n
    rows = presealed.take(into, [src[i * size : (i + 1) * size] for i in range(n)])
    if rows is None:
        return None
    return rows[0].reshape(1, -1) if n == 1 else np.stack(rows)


def split_py(
    payloads: Sequence[bytes], stored: Sequence[bytes | None]
) -> tuple[bytes, list[int], list[int], bytes]:
    """(mask, refs, plain, sources) of a frame's stored vectors: a byte a row,
    1 where it has a vector; the rows stored by reference and by value; the
    referenced vectors' bytes in the order of refs. The native _vecref.split
    does the same where it compiled."""
    if len(payloads) != len(stored):
        raise VectorRefError(f"{len(payloads)} payloads for {len(stored)} stored vectors")
    refs: list[int] = []
    plain: list[int] = []
    for i, v in enumerate(stored):
        if v is not None:
            (refs if is_ref(v) else plain).append(i)
    mask = bytes(v is not None for v in stored)
    src = b"".join(resolve(payloads[i], stored[i] or b"") for i in refs)
    return mask, refs, plain, src


def check_vectors(src: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """None when every row of the (n, dim) float32 vectors is finite and not
    all zeros; else (finite, nonzero), a bool a row each. Natively
    (_vecref.check) where it compiled: numpy lets the interpreter lock go
    in its loops, and the pipeline thread, which checks every change's
    vector, then waited behind other threads' Python to take it back."""
    dim = src.shape[1]
    if _vecref is not None and dim and src.dtype == np.dtype("<f4") and src.flags.c_contiguous:
        got = _vecref.check(src, dim)
        if got is None:
            return None
        return np.frombuffer(got[0], dtype=bool), np.frombuffer(got[1], dtype=bool)
    finite = np.asarray(np.isfinite(src).all(axis=1))
    nonzero = np.asarray(src.any(axis=1))
    if bool((finite & nonzero).all()):
        return None
    return finite, nonzero
