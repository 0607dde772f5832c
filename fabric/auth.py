"""The Hello handshake's cryptography: challenge-response and key wrapping.

Pure functions over the tenant secret and the two nonces, used by the
wrapper's server (prism.wrapper.auth) and the driver's handshake. The driver
proves it holds the secret with an HMAC over the wrapper's fresh nonce and its
own, so the secret never crosses the wire and a recorded proof is useless
once its server nonce is spent; the wrapper proves the same back, so a driver
never trusts a wrapper that lacks the secret. The wrapper also hands the
tenant's projection key to the driver encrypted under a key only holders of
the secret can derive for this handshake, and both derive a session key
that MACs every later request of the session.
"""

from __future__ import annotations

import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from prism.fabric.errors import AuthError
from prism.fabric.keys import derive_auth_key

NONCE_BYTES = 32  # the wrapper's challenge
MIN_CLIENT_NONCE, MAX_CLIENT_NONCE = 16, 64
PROOF_BYTES = 32
_AEAD_NONCE = 12
_CLIENT = b"prism-auth/client"
_SERVER = b"prism-auth/server"
_WRAP = b"prism-auth/projection-key"
_SESSION = b"prism-auth/session"


def _transcript(label: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    # Length-prefix the variable parts so no two transcripts collide.
    t = tenant_id.encode("utf-8")
    return b"".join(
        (
            label,
            len(t).to_bytes(2, "big"),
            t,
            len(server_nonce).to_bytes(2, "big"),
            server_nonce,
            len(client_nonce).to_bytes(2, "big"),
            client_nonce,
        )
    )


def check_nonces(server_nonce: bytes, client_nonce: bytes) -> None:
    """Raise AuthError unless both nonces have a valid length."""
    if len(server_nonce) != NONCE_BYTES:
        raise AuthError(
            f"server_nonce must be {NONCE_BYTES} bytes from Challenge, got {len(server_nonce)}"
        )
    if not MIN_CLIENT_NONCE <= len(client_nonce) <= MAX_CLIENT_NONCE:
        raise AuthError(
            f"client_nonce must be {MIN_CLIENT_NONCE}-{MAX_CLIENT_NONCE} bytes, "
            f"got {len(client_nonce)}"
        )


def client_proof(secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the driver sends in Hello to prove it holds ``secret``."""
    key = derive_auth_key(secret, tenant_id)
    return hmac.digest(key, _transcript(_CLIENT, tenant_id, server_nonce, client_nonce), "sha256")


def server_proof(secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the wrapper answers to prove it holds ``secret`` too."""
    key = derive_auth_key(secret, tenant_id)
    return hmac.digest(key, _transcript(_SERVER, tenant_id, server_nonce, client_nonce), "sha256")


def proof_matches(expected: bytes, given: bytes) -> bool:
    return len(given) == PROOF_BYTES and hmac.compare_digest(expected, given)


def session_key(secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """The key both sides derive for one session: it MACs each Subscribe and
    Write request, so a session token seen on the wire (plaintext mode)
    cannot be used without the secret."""
    key = derive_auth_key(secret, tenant_id)
    return hmac.digest(key, _transcript(_SESSION, tenant_id, server_nonce, client_nonce), "sha256")


def request_mac(key: bytes, request: Message) -> bytes:
    """HMAC-SHA256 over the request's deterministic serialization with its
    `mac` field cleared; the sender sets `mac` to this, the wrapper checks it."""
    if request.mac:  # type: ignore[attr-defined]
        unsigned = type(request)()
        unsigned.CopyFrom(request)
        unsigned.ClearField("mac")
        request = unsigned
    # (An unset field is not serialized: a request without one is its own
    # unsigned form, with no copy of its rows; a write's is kilobytes.)
    return hmac.digest(key, request.SerializeToString(deterministic=True), "sha256")


def mac_matches(key: bytes, request: Message) -> bool:
    """Whether `request` carries its MAC. Cleared and set back in place for
    the check (no copy of the request): the caller owns it meanwhile."""
    given: bytes = request.mac  # type: ignore[attr-defined]
    if len(given) != PROOF_BYTES:
        return False
    request.ClearField("mac")
    try:
        expected = request_mac(key, request)
    finally:
        request.mac = given  # type: ignore[attr-defined]
    return hmac.compare_digest(expected, given)


def _wrap_key(secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    key = derive_auth_key(secret, tenant_id)
    return hmac.digest(key, _transcript(_WRAP, tenant_id, server_nonce, client_nonce), "sha256")


def wrap_projection_key(
    secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes, projection_key: bytes
) -> bytes:
    """AES-256-GCM encrypt the projection key for this handshake only."""
    aead = AESGCM(_wrap_key(secret, tenant_id, server_nonce, client_nonce))
    nonce = os.urandom(_AEAD_NONCE)
    return nonce + aead.encrypt(nonce, projection_key, tenant_id.encode("utf-8"))


def unwrap_projection_key(
    secret: bytes, tenant_id: str, server_nonce: bytes, client_nonce: bytes, wrapped: bytes
) -> bytes:
    """The projection key from wrap_projection_key's output; AuthError when it
    was not wrapped for this secret, tenant and pair of nonces."""
    if len(wrapped) < _AEAD_NONCE + 16 + 16:
        raise AuthError(f"wrapped projection key is {len(wrapped)} bytes, too short")
    aead = AESGCM(_wrap_key(secret, tenant_id, server_nonce, client_nonce))
    try:
        return aead.decrypt(wrapped[:_AEAD_NONCE], wrapped[_AEAD_NONCE:], tenant_id.encode())
    except InvalidTag:
        raise AuthError("the projection key in Hello does not decrypt with this secret") from None
