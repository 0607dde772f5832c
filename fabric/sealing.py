"""Sealing: the keyed orthogonal matrix and the HMAC watermark.

The wrapper's last step before serving is to seal each frame: vectors are
multiplied by a keyed orthogonal matrix K(tenant, epoch) and the whole frame
is watermarked with HMAC-SHA256. The driver verifies the watermark first and
only then opens the frame; it keeps the vectors sealed and seals its queries
into their space (space_change, prism.driver.space) rather than unsealing
every row (V = V_enc @ K.T, which unseal() still does for tools).

K is a similarity-preserving obfuscation, not encryption: inner products and
distances survive sealing by design, and enough known (plain, sealed) pairs
reveal K. Confidentiality on the wire comes from TLS and from AES-GCM over the
row data (Sealer.encrypt, used by prism.fabric.frames); integrity comes from
the HMAC and the AEAD tag.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from prism.fabric.keys import EpochKeys

_TWO_PI = 2.0 * np.pi
_DIGEST_KEY_LABEL = b"prism/frame-digest-key/v5"
# Associated data up to this size is joined, then digested or encrypted
# with it in one call; larger is fed to GCM part by part (frame_digest).
_JOIN_MAX = 64 << 10
AEAD_TAG_BYTES = 16  # AES-GCM's tag, after the ciphertext


# AES-GCM nonces are drawn from a pool of the OS's random bytes, refilled
# 4 kB at a time. os.urandom lets go of the interpreter lock for its
# syscall; taking it back, a serving thread waited behind the others for
# 50-80 us per frame, on the path of every write(wait=True)
# (benchmark/README.md). Random 96-bit nonces stay as unique as before: the
# bytes are the same CSPRNG's, each handed out once, and a forked child
# starts with an empty pool rather than its parent's.
_NONCE_POOL_BYTES = 4096
_nonce_lock = threading.Lock()
_nonce_pool = b""
_nonce_at = 0


def random_nonce(size: int) -> bytes:
    """`size` fresh random bytes from the pool (thread-safe)."""
    global _nonce_pool, _nonce_at
    with _nonce_lock:
        if _nonce_at + size > len(_nonce_pool):
            _nonce_pool, _nonce_at = os.urandom(max(_NONCE_POOL_BYTES, size)), 0
        out = _nonce_pool[_nonce_at : _nonce_at + size]
        _nonce_at += size
    return out


def _forget_nonces() -> None:
    global _nonce_lock, _nonce_pool, _nonce_at
    # A new lock as well: another thread may have held the old one at fork.
    _nonce_lock = threading.Lock()
    _nonce_pool, _nonce_at = b"", 0


os.register_at_fork(after_in_child=_forget_nonces)


def _gaussian(seed: bytes, tag: bytes, count: int) -> np.ndarray:
    """``count`` standard normal float64 values, a function of (seed, tag) only.

    numpy's Generator streams are not promised to stay the same across numpy
    versions, and wrapper and driver may run different ones, so the random bits
    come from SHAKE-256 and are shaped into normals with Box-Muller here.
    """
    pairs = (count + 1) // 2
    raw = hashlib.shake_256(seed + tag).digest(16 * pairs)
    bits = np.frombuffer(raw, dtype="<u8")
    # 53 random bits, centred in their bucket: uniforms strictly inside (0, 1)
    # so log() never sees 0.
    u = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)
    u1, u2 = u[:pairs], u[pairs:]
    r = np.sqrt(-2.0 * np.log(u1))
    theta = _TWO_PI * u2
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:count]


_ORTHOGONAL_CACHE_SIZE = 32
_orthogonal: OrderedDict[tuple[bytes, int], np.ndarray] = OrderedDict()  # newest last
_making: dict[tuple[bytes, int], threading.Event] = {}  # matrices being made now
_orthogonal_lock = threading.Lock()  # guards both; never held while a matrix is made


def keyed_orthogonal(seed: bytes, dim: int) -> np.ndarray:
    """A dim x dim orthogonal float64 matrix determined by ``seed`` and ``dim``.

    Haar-distributed: QR of a Gaussian matrix with the signs of R's diagonal
    folded into Q. Different numpy/LAPACK builds may differ in the last bits
    (around 1e-15), far below the float32 resolution of the vectors it seals.
    The returned array is cached (the 32 used last) and read-only.

    Each matrix is made once however many threads ask for it at the same
    time: the QR of a 384 x 384 matrix takes 22-130 ms here, and a driver
    makes its matrices on a worker thread while its event loop takes the
    first frames (prefetch_orthogonal), so a query that needs one meanwhile
    waits for that one instead of repeating it; a different matrix is made
    beside it.
    """
    key = (seed, dim)
    while True:
        with _orthogonal_lock:
            q = _orthogonal.get(key)
            if q is not None:
                _orthogonal.move_to_end(key)
                return q
            making = _making.get(key)
            if making is None:
                making = _making[key] = threading.Event()
                break
        making.wait()  # then take it from the cache (or make it, if that failed)
    try:
        q = _compute_orthogonal(seed, dim)
        with _orthogonal_lock:
            _orthogonal[key] = q
            while len(_orthogonal) > _ORTHOGONAL_CACHE_SIZE:
                _orthogonal.popitem(last=False)
        return q
    finally:
        with _orthogonal_lock:
            del _making[key]
        making.set()


def prefetch_orthogonal(
    seeds: Iterable[tuple[bytes, int]], stop: threading.Event | None = None
) -> None:
    """Make (and cache) the matrix of each (seed, dimension), until `stop`
    is set: for a worker thread, so that the event loop finds them made
    (keyed_orthogonal)."""
    for seed, dim in seeds:
        if stop is not None and stop.is_set():
            return
        keyed_orthogonal(seed, dim)


def clear_orthogonal_cache() -> None:
    """Forget every cached matrix (tests: the next call makes it afresh)."""
    with _orthogonal_lock:
        _orthogonal.clear()


def _compute_orthogonal(seed: bytes, dim: int) -> np.ndarray:
    if dim < 0:
        raise ValueError(f"matrix dimension must be >= 0, got {dim}")
    if dim == 0:
        q = np.zeros((0, 0), dtype=np.float64)
    else:
        g = _gaussian(seed, b"prism/orthogonal/dim:%d" % dim, dim * dim).reshape(dim, dim)
        q, r = np.linalg.qr(g)
        signs = np.sign(np.diag(r))
        signs[signs == 0] = 1.0
        q = q * signs
    q.setflags(write=False)
    return q


class Sealer:
    """Seals and unseals the vectors of one tenant at one key epoch, and
    watermarks and verifies frames with that epoch's HMAC key."""

    def __init__(self, keys: EpochKeys, dim: int) -> None:
        if dim < 0:
            raise ValueError(f"vector dimension must be >= 0, got {dim}")
        self.keys = keys
        self.epoch = keys.epoch
        self.dim = dim
        self._k_made: np.ndarray | None = None  # K and K.T as float32, on first use
        self._kt_made: np.ndarray | None = None
        self._aead = AESGCM(keys.aead_key)
        self._aead_alg = algorithms.AES(keys.aead_key)
        self._fused: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # sealing()
        # Frame format 5's digest key: a function of the HMAC key alone, so
        # whoever can watermark can digest, and nobody else (frame_digest).
        digest_key = hmac.digest(keys.hmac_key, _DIGEST_KEY_LABEL, "sha256")
        self._digest = AESGCM(digest_key)
        self._digest_alg = algorithms.AES(digest_key)

    def __repr__(self) -> str:
        return f"Sealer(tenant_id={self.keys.tenant_id!r}, epoch={self.epoch}, dim={self.dim})"

    # K is made on first use: opening frames (watermark, digest, AES-GCM)
    # needs none of it, and the driver's index keeps vectors sealed, so a
    # bootstrap never waits for the QR; queries and sealing do. Two threads
    # may both make the float32 copies (the same values); the QR is made once.
    @property
    def _k(self) -> np.ndarray:
        k = self._k_made
        if k is None:
            # float32 matmul is what makes sealing cheap; float32 rounding of
            # K is far smaller than the float32 noise already in the vectors.
            k = np.ascontiguousarray(keyed_orthogonal(self.keys.matrix_seed, self.dim), np.float32)
            k.setflags(write=False)
            self._k_made = k
        return k

    @property
    def _kt(self) -> np.ndarray:
        kt = self._kt_made
        if kt is None:
            kt = np.ascontiguousarray(self._k.T)
            kt.setflags(write=False)
            self._kt_made = kt
        return kt

    def prepare(self) -> Sealer:
        """Make K now (on a worker thread, ahead of the queries that need it)."""
        _ = self._kt
        return self

    def _check(self, v: np.ndarray) -> np.ndarray:
        a = np.asarray(v, dtype=np.float32)
        if a.shape[-1:] != (self.dim,) or a.ndim not in (1, 2):
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {a.shape}")
        return a

    @property
    def space(self) -> bytes:
        """Names the sealed space: equal for two Sealers whose K is the same
        matrix (same secret, tenant, epoch and dimension)."""
        return self.keys.matrix_seed + self.dim.to_bytes(4, "little")

    def seal(self, v: np.ndarray) -> np.ndarray:
        """V_enc = V @ K for float32 vectors of shape (n, dim) or (dim,)."""
        return self._check(v) @ self._k

    def sealing(self, before: np.ndarray) -> np.ndarray:
        """``before @ K`` as float32 (computed in float64), cached per
        matrix: one multiplication by it takes vectors that ``before`` would
        take into the space seal() would then take them to."""
        key = id(before)
        hit = self._fused.get(key)
        if hit is not None and hit[0] is before:
            return hit[1]
        fused = np.ascontiguousarray(
            np.asarray(before, dtype=np.float64)
            @ keyed_orthogonal(self.keys.matrix_seed, self.dim),
            dtype=np.float32,
        )
        fused.setflags(write=False)
        if len(self._fused) > 64:
            self._fused.clear()
        self._fused[key] = (before, fused)
        return fused

    def unseal(self, v: np.ndarray) -> np.ndarray:
        """V = V_enc @ K.T, the inverse of seal() up to float32 rounding."""
        return self._check(v) @ self._kt

    def watermark(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the epoch's HMAC key."""
        return hmac.digest(self.keys.hmac_key, data, "sha256")

    def watermark_parts(self, parts: Iterable[bytes | memoryview]) -> bytes:
        """watermark(b"".join(parts)) without concatenating large blocks."""
        h = hmac.new(self.keys.hmac_key, digestmod=hashlib.sha256)
        for p in parts:
            h.update(p)
        return h.digest()

    def frame_digest(self, nonce: bytes, parts: Sequence[bytes | memoryview]) -> bytes:
        """GMAC of ``b"".join(parts)`` (AES-256-GCM over no plaintext, the
        parts as the associated data) under the digest key derived from the
        HMAC key, with the frame's own random 12-byte nonce: 16 bytes. Frame
        format 5 watermarks this digest rather than the frame itself, because
        GHASH runs at some 25 GB/s here and SHA-256 at 1.7 (benchmark/README.md,
        "Issue 12"); forging it without the key is as hard as forging GCM's
        tag. Raises ValueError for a nonce that is not 12 bytes."""
        if sum(map(len, parts)) <= _JOIN_MAX:
            return self._digest.encrypt(nonce, b"", b"".join(parts))
        # A large frame is fed part by part: joining it first cost more than
        # the digest (a fresh multi-MB buffer a frame: 370 µs against 150 µs
        # for 3.3 MB), while a small one is cheaper joined (1 µs against 6).
        ctx = Cipher(self._digest_alg, modes.GCM(nonce)).encryptor()
        for p in parts:
            ctx.authenticate_additional_data(p)
        ctx.finalize()
        return ctx.tag

    def verify(self, data: bytes, mac: bytes) -> bool:
        """True when ``mac`` is the watermark of ``data`` (constant-time)."""
        return hmac.compare_digest(self.watermark(data), mac)

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM with the epoch's AEAD key (ciphertext || 16-byte tag)."""
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Inverse of encrypt; raises cryptography's InvalidTag on any change."""
        return self._aead.decrypt(nonce, ciphertext, aad)

    def encrypt_parts(
        self, nonce: bytes, plaintext: bytes, aad_parts: Sequence[bytes | memoryview]
    ) -> bytes:
        """encrypt() with ``b"".join(aad_parts)`` as the associated data, the
        same bytes out. A frame's associated data holds its vector block (1.5
        MB for 1,024 rows of 384-d): joining it was a fresh buffer a frame,
        paid in page faults, so large ones are fed to GCM part by part, as
        frame_digest does."""
        if sum(map(len, aad_parts)) <= _JOIN_MAX:
            return self._aead.encrypt(nonce, plaintext, b"".join(aad_parts))
        ctx = Cipher(self._aead_alg, modes.GCM(nonce)).encryptor()
        for p in aad_parts:
            ctx.authenticate_additional_data(p)
        out = bytearray(len(plaintext) + AEAD_TAG_BYTES)
        n = ctx.update_into(plaintext, out)
        ctx.finalize()
        out[n:] = ctx.tag
        return bytes(out)

    def decrypt_parts(
        self,
        nonce: bytes,
        ciphertext: bytes | memoryview,
        aad_parts: Sequence[bytes | memoryview],
    ) -> bytes:
        """decrypt() with ``b"".join(aad_parts)`` as the associated data
        (large ones fed part by part: encrypt_parts). Raises InvalidTag on any
        change, before any of the plaintext is returned."""
        if sum(map(len, aad_parts)) <= _JOIN_MAX:
            return self._aead.decrypt(nonce, ciphertext, b"".join(aad_parts))
        if len(ciphertext) < AEAD_TAG_BYTES:
            raise InvalidTag
        body = memoryview(ciphertext)[:-AEAD_TAG_BYTES]
        ctx = Cipher(
            self._aead_alg, modes.GCM(nonce, bytes(ciphertext[-AEAD_TAG_BYTES:]))
        ).decryptor()
        for p in aad_parts:
            ctx.authenticate_additional_data(p)
        plain = ctx.update(body)
        ctx.finalize()  # InvalidTag unless every byte and the tag agree
        return plain


def space_change(frm: Sealer | None, to: Sealer | None) -> np.ndarray | None:
    """The float32 matrix that takes vectors sealed by ``frm`` into the
    sealed space of ``to`` (None on either side: the unsealed, projected
    space): ``K_frm.T @ K_to``. None when both are the same space. Inner
    products survive it, as they survive sealing. A driver whose index
    lives in one epoch's space converts every frame of a later epoch with
    it (prism.driver.space), so the product of two matrices is cached."""
    if frm is None:
        return None if to is None else to._k
    if to is None:
        return frm._kt
    if frm.dim != to.dim:
        raise ValueError(f"cannot change a {frm.dim}-d space into a {to.dim}-d one")
    if frm.space == to.space:
        return None
    return _between(frm.keys.matrix_seed, to.keys.matrix_seed, frm.dim)


@functools.lru_cache(maxsize=16)
def _between(seed_from: bytes, seed_to: bytes, dim: int) -> np.ndarray:
    """K_from.T @ K_to in float64, as float32 (read-only)."""
    m = np.ascontiguousarray(
        keyed_orthogonal(seed_from, dim).T @ keyed_orthogonal(seed_to, dim), dtype=np.float32
    )
    m.setflags(write=False)
    return m
