"""Tenant secrets and the keys derived from them.

This is the root of trust of the pipeline: the wrapper (DB node) and every
driver (app node) of a tenant read the same secret file, and from it derive,
per key epoch, the seed of the keyed orthogonal matrix that seals vectors,
the HMAC key that watermarks frames and the AEAD key for payloads, plus the
epoch-independent keys of the challenge-response handshake and of the
driver's warm-restart snapshots. The seed of the
tenant's projection comes from a projection key the wrapper keeps in its
store (see prism.wrapper.keyring), not from the secret, so that the secret
can rotate without re-projecting stored vectors. Nothing here does I/O
except reading and creating the secret file.
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from prism.fabric.errors import SecretFileError

MIN_SECRET_BYTES = 32

# A fixed salt is fine for HKDF when the IKM is already high-entropy (RFC 5869
# section 3.1); it pins the derivations to this protocol version.
_SALT = b"prismlib/v1"
_KEY_BYTES = 32


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """Read the tenant secret from ``path`` and return it as raw IKM bytes.

    The file's content, stripped of surrounding whitespace, is used as-is (a
    64-character hex secret is 64 bytes of IKM). Refuses, with a message that
    names the file and the fix, a missing or unreadable file, a file that the
    group or others can access, and a secret shorter than MIN_SECRET_BYTES.
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY)
    except FileNotFoundError:
        raise SecretFileError(
            f"secret file {p} does not exist; create one (32+ random bytes, mode 0600) with "
            f"`prism-wrapper gen-secret {p}` and give the same file to the tenant's drivers"
        ) from None
    except OSError as exc:
        raise SecretFileError(
            f"secret file {p} cannot be opened ({exc.strerror}); make it readable "
            f"by the service user and nobody else (chown, then chmod 600 {p})"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"secret file {p} is not a regular file; point to a file")
        if st.st_mode & 0o077:
            raise SecretFileError(
                f"secret file {p} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {p}`"
            )
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        raise SecretFileError(
            f"secret file {p} cannot be read ({exc.strerror}); check the file"
        ) from None
    finally:
        os.close(fd)
    secret = b"".join(chunks).strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(
            f"secret file {p} holds {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}; "
            f"write a new one with `prism-wrapper gen-secret PATH` "
            f"and share it with every driver of the tenant"
        )
    return secret


def write_secret(path: str | os.PathLike[str]) -> None:
    """Create a new secret file: 32 random bytes as 64 hex chars and a newline.

    The file is created exclusively with mode 0600; an existing file is never
    overwritten, because replacing a secret silently cuts off every driver.
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretFileError(
            f"secret file {p} already exists; refusing to overwrite it "
            f"(remove it first if you really mean to rotate the secret)"
        ) from None
    except OSError as exc:
        raise SecretFileError(f"cannot create secret file {p} ({exc.strerror})") from None
    try:
        # The umask may have cleared bits we asked for, never added any; still
        # force 0600 in case the file system ignored the creation mode.
        os.fchmod(fd, 0o600)
        data = (secrets.token_bytes(MIN_SECRET_BYTES).hex() + "\n").encode("ascii")
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        raise SecretFileError(f"cannot write secret file {p} ({exc.strerror})") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EpochKeys:
    """The keys of one tenant for one key epoch (each 32 bytes)."""

    tenant_id: str
    epoch: int
    matrix_seed: bytes
    hmac_key: bytes
    aead_key: bytes

    def __repr__(self) -> str:
        # Keep key material out of logs and tracebacks.
        return f"EpochKeys(tenant_id={self.tenant_id!r}, epoch={self.epoch})"


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=_SALT, info=info).derive(secret)


def _info(purpose: str, tenant_id: str, epoch: int | None) -> bytes:
    # Length-prefix the tenant so no (purpose, tenant, epoch) triple can
    # produce the same info string as another.
    t = tenant_id.encode("utf-8")
    parts = [b"prism/", purpose.encode("ascii"), b"/", str(len(t)).encode(), b":", t]
    if epoch is not None:
        parts += [b"/epoch:", str(epoch).encode()]
    return b"".join(parts)


@functools.lru_cache(maxsize=256)
def derive_epoch_keys(secret: bytes, tenant_id: str, epoch: int) -> EpochKeys:
    """Derive the sealing keys of ``tenant_id`` at ``epoch`` with HKDF-SHA256.

    Wrapper and driver holding the same secret derive the same keys; a new
    epoch gives independent keys, so rotating the epoch invalidates old frames.
    """
    if epoch < 0:
        raise ValueError(f"key epoch must be >= 0, got {epoch}")
    return EpochKeys(
        tenant_id=tenant_id,
        epoch=epoch,
        matrix_seed=_hkdf(secret, _info("matrix", tenant_id, epoch)),
        hmac_key=_hkdf(secret, _info("hmac", tenant_id, epoch)),
        aead_key=_hkdf(secret, _info("aead", tenant_id, epoch)),
    )


@functools.lru_cache(maxsize=64)
def derive_projection_seed(projection_key: bytes, tenant_id: str) -> bytes:
    """Seed of the tenant's projection, from the tenant's projection key.
    Independent of the epoch and of the secret, because the store and the
    driver's index hold projected vectors that must survive key rotation."""
    return _hkdf(projection_key, _info("projection", tenant_id, None))


@functools.lru_cache(maxsize=64)
def derive_auth_key(secret: bytes, tenant_id: str) -> bytes:
    """The key of the Hello challenge-response (prism.fabric.auth). Independent
    of the epoch: a driver authenticates before it knows the current epoch."""
    return _hkdf(secret, _info("auth", tenant_id, None))


@functools.lru_cache(maxsize=64)
def derive_snapshot_key(secret: bytes, tenant_id: str) -> bytes:
    """The key of a driver's warm-restart snapshots (prism.driver.snapshot):
    its own label, so it seals nothing that travels, and a driver that is
    given another secret cannot read or forge its old snapshots."""
    return _hkdf(secret, _info("snapshot", tenant_id, None))


def new_projection_key() -> bytes:
    """A fresh random projection key (the wrapper makes one per tenant)."""
    return secrets.token_bytes(_KEY_BYTES)
