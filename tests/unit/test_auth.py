"""The Hello handshake's cryptography (prism.fabric.auth): challenge-response
proofs, nonce checks and wrapping of the tenant's projection key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest

from prism.fabric import auth
from prism.fabric.auth import (
    MAX_CLIENT_NONCE,
    MIN_CLIENT_NONCE,
    NONCE_BYTES,
    PROOF_BYTES,
    check_nonces,
    client_proof,
    proof_matches,
    server_proof,
    unwrap_projection_key,
    wrap_projection_key,
)
from prism.fabric.errors import AuthError, FabricError
from prism.fabric.keys import derive_auth_key, derive_epoch_keys, new_projection_key

SECRET = b"a" * 32
TENANT = "acme"
SN = bytes(range(NONCE_BYTES))  # the wrapper's challenge
CN = bytes(range(100, 132))  # the driver's nonce
PKEY = bytes(range(200, 232))

Proof = Callable[[bytes, str, bytes, bytes], bytes]


def _flip(data: bytes, i: int = 0) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


# -- nonces -------------------------------------------------------------------


def test_constants() -> None:
    assert NONCE_BYTES == 32 and PROOF_BYTES == 32
    assert MIN_CLIENT_NONCE == 16 and MAX_CLIENT_NONCE == 64


@pytest.mark.parametrize("length", [MIN_CLIENT_NONCE, 32, MAX_CLIENT_NONCE])
def test_check_nonces_accepts_valid_lengths(length: int) -> None:
    assert check_nonces(SN, b"c" * length) is None


@pytest.mark.parametrize("length", [0, 1, NONCE_BYTES - 1, NONCE_BYTES + 1, 64])
def test_check_nonces_rejects_server_nonce_length(length: int) -> None:
    with pytest.raises(AuthError, match="server_nonce") as ei:
        check_nonces(b"s" * length, CN)
    assert isinstance(ei.value, FabricError) and not ei.value.retriable


@pytest.mark.parametrize("length", [0, MIN_CLIENT_NONCE - 1, MAX_CLIENT_NONCE + 1, 1000])
def test_check_nonces_rejects_client_nonce_length(length: int) -> None:
    with pytest.raises(AuthError, match="client_nonce"):
        check_nonces(SN, b"c" * length)


# -- proofs -------------------------------------------------------------------


def test_proofs_are_32_bytes_deterministic_and_distinct() -> None:
    c = client_proof(SECRET, TENANT, SN, CN)
    s = server_proof(SECRET, TENANT, SN, CN)
    assert len(c) == len(s) == PROOF_BYTES
    assert c != s  # a wrapper cannot reflect the driver's proof back
    assert client_proof(bytes(SECRET), TENANT, bytes(SN), bytes(CN)) == c
    assert server_proof(bytes(SECRET), TENANT, bytes(SN), bytes(CN)) == s


def test_proof_is_hmac_under_auth_key_not_epoch_keys() -> None:
    c = client_proof(SECRET, TENANT, SN, CN)
    # Not an HMAC under any epoch's HMAC key of the same transcript...
    k = derive_epoch_keys(SECRET, TENANT, 0)
    assert c not in (
        hmac.digest(k.hmac_key, SN + CN, "sha256"),
        hmac.digest(k.hmac_key, CN + SN, "sha256"),
    )
    # ...nor the raw auth key or a plain hash of the inputs.
    assert c != derive_auth_key(SECRET, TENANT)
    assert c != hashlib.sha256(SECRET + SN + CN).digest()


@pytest.mark.parametrize("proof", [client_proof, server_proof])
def test_proof_depends_on_every_input(proof: Proof) -> None:
    base = proof(SECRET, TENANT, SN, CN)
    variants = [
        proof(b"b" * 32, TENANT, SN, CN),
        proof(SECRET[:-1] + b"b", TENANT, SN, CN),
        proof(SECRET, "acme2", SN, CN),
        proof(SECRET, "acm", SN, CN),
        proof(SECRET, TENANT, _flip(SN), CN),
        proof(SECRET, TENANT, SN[::-1], CN),
        proof(SECRET, TENANT, SN, _flip(CN, 31)),
        proof(SECRET, TENANT, SN, CN[:16]),
        # Swapping the two nonces is another transcript.
        proof(SECRET, TENANT, CN, SN),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_transcript_boundaries_are_unambiguous() -> None:
    # Moving a byte from one nonce to the other keeps the concatenation.
    a = client_proof(SECRET, TENANT, SN, CN)
    b = client_proof(SECRET, TENANT, SN[:-1], SN[-1:] + CN)
    c = client_proof(SECRET, TENANT + "x", SN, CN)
    d = client_proof(SECRET, TENANT, b"x" + SN, CN)
    assert len({a, b, c, d}) == 4


def test_proof_matches() -> None:
    p = client_proof(SECRET, TENANT, SN, CN)
    assert proof_matches(p, bytes(p))
    assert not proof_matches(p, server_proof(SECRET, TENANT, SN, CN))
    for i in (0, 15, 31):
        assert not proof_matches(p, _flip(p, i))


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_proof_matches_rejects_wrong_lengths(length: int) -> None:
    p = client_proof(SECRET, TENANT, SN, CN)
    given = (p * 2)[:length]
    assert not proof_matches(p, given)
    # Also when the expected value has that same wrong length: the length of
    # what the peer sent is checked, not just equality.
    assert not proof_matches(given, given)


def test_proof_matches_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    p = client_proof(SECRET, TENANT, SN, CN)
    assert proof_matches(p, p)
    assert not proof_matches(p, _flip(p, 31))
    assert calls == [(p, p), (p, _flip(p, 31))]


# -- projection key wrapping --------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    wrapped = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    assert PKEY not in wrapped
    assert len(wrapped) == 12 + len(PKEY) + 16
    assert unwrap_projection_key(SECRET, TENANT, SN, CN, wrapped) == PKEY
    fresh = new_projection_key()
    assert (
        unwrap_projection_key(
            SECRET, TENANT, SN, CN, wrap_projection_key(SECRET, TENANT, SN, CN, fresh)
        )
        == fresh
    )


def test_wrap_uses_a_fresh_nonce() -> None:
    a = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    b = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    assert a != b and a[:12] != b[:12]
    assert unwrap_projection_key(SECRET, TENANT, SN, CN, b) == PKEY


@pytest.mark.parametrize(
    ("secret", "tenant", "server_nonce", "client_nonce"),
    [
        (b"b" * 32, TENANT, SN, CN),
        (SECRET, "acme2", SN, CN),
        (SECRET, TENANT, _flip(SN), CN),
        (SECRET, TENANT, SN, _flip(CN)),
        (SECRET, TENANT, CN, SN),
    ],
    ids=["secret", "tenant", "server_nonce", "client_nonce", "swapped_nonces"],
)
def test_unwrap_for_another_handshake_fails(
    secret: bytes, tenant: str, server_nonce: bytes, client_nonce: bytes
) -> None:
    wrapped = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    with pytest.raises(AuthError, match="does not decrypt") as ei:
        unwrap_projection_key(secret, tenant, server_nonce, client_nonce, wrapped)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_unwrap_rejects_any_flipped_byte() -> None:
    wrapped = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    for i in range(len(wrapped)):
        for bit in (0x01, 0x80):
            tampered = wrapped[:i] + bytes([wrapped[i] ^ bit]) + wrapped[i + 1 :]
            with pytest.raises(AuthError):
                unwrap_projection_key(SECRET, TENANT, SN, CN, tampered)


@pytest.mark.parametrize("cut", [0, 1, 12, 27, 28, 43])
def test_unwrap_rejects_short_input(cut: int) -> None:
    wrapped = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    with pytest.raises(AuthError, match="too short"):
        unwrap_projection_key(SECRET, TENANT, SN, CN, wrapped[:cut])


def test_unwrap_rejects_truncated_or_extended_input() -> None:
    wrapped = wrap_projection_key(SECRET, TENANT, SN, CN, PKEY)
    for bad in (wrapped[:-1], wrapped + b"\0", wrapped[:44]):
        with pytest.raises(AuthError, match="does not decrypt"):
            unwrap_projection_key(SECRET, TENANT, SN, CN, bad)
