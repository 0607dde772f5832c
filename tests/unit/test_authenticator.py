"""The wrapper's admission rules (prism.wrapper.auth), with an injected clock:
challenges, proofs, certificates, sessions, secret retirement and the
failed-attempt limit. Every refusal is an AuthFailure of a distinct kind."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.fabric import auth as handshake
from prism.fabric import wrapper_pb2 as pb
from prism.wrapper.auth import CHALLENGE_TTL_S, Authenticator, AuthFailure, TenantSecrets

A_SECRET, A_OLD, B_SECRET = b"a" * 32, b"o" * 32, b"b" * 32
HOST = "10.0.0.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    *, failures: int = 5, ttl: float = 3600.0, old_until: float | None = None
) -> tuple[Authenticator, Clock, Clock]:
    mono, wall = Clock(), Clock()
    auth = Authenticator(
        {
            "acme": TenantSecrets("acme", (A_SECRET, A_OLD), old_until=old_until),
            "bank": TenantSecrets("bank", (B_SECRET,), identities=("bank-app",)),
        },
        failures_per_minute=failures,
        session_ttl_s=ttl,
        clock=mono,
        wall=wall,
    )
    return auth, mono, wall


def login(
    auth: Authenticator,
    tenant: str = "acme",
    secret: bytes = A_SECRET,
    identities: tuple[str, ...] = (),
    host: str = HOST,
    proof: bytes | None = None,
) -> bytes:
    nonce = auth.challenge(tenant, host)
    mine = os.urandom(16)
    if proof is None:
        proof = handshake.client_proof(secret, tenant, nonce, mine)
    token, session, proved = auth.hello(tenant, nonce, mine, proof, identities, host)
    assert (session.tenant == tenant and proved == secret) or not proof
    return token


def kind_of(fn: object, *args: object) -> str:
    with pytest.raises(AuthFailure) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.kind


def test_login_gives_a_session_for_its_tenant_only() -> None:
    auth, _, _ = make()
    token = login(auth)
    assert auth.session(token, "acme", HOST).tenant == "acme"
    assert kind_of(auth.session, token, "bank", HOST) == "wrong-tenant"
    assert kind_of(auth.session, b"x" * 32, "acme", HOST) == "session"


def test_requests_must_carry_the_session_keys_mac() -> None:
    auth, _, _ = make(failures=100)
    nonce = auth.challenge("acme", HOST)
    mine = os.urandom(16)
    proof = handshake.client_proof(A_SECRET, "acme", nonce, mine)
    token, _, _ = auth.hello("acme", nonce, mine, proof, (), HOST)
    key = handshake.session_key(A_SECRET, "acme", nonce, mine)
    req = pb.SubscribeRequest(tenant_id="acme", session=token, subscription=b"s" * 16)
    assert kind_of(auth.session, token, "acme", HOST, req) == "bad-mac"  # no MAC
    req.mac = handshake.request_mac(key, req)
    signed = req.SerializeToString()
    assert auth.session(token, "acme", HOST, req).tenant == "acme"
    # The check clears the MAC in place and sets it back; the MAC of a
    # signed request is its unsigned form's.
    assert req.SerializeToString() == signed
    assert handshake.request_mac(key, req) == req.mac
    req.from_position = 5  # any field changed after signing
    assert kind_of(auth.session, token, "acme", HOST, req) == "bad-mac"
    other_key = handshake.session_key(A_SECRET, "acme", nonce, os.urandom(16))
    req.mac = handshake.request_mac(other_key, req)
    assert kind_of(auth.session, token, "acme", HOST, req) == "bad-mac"


def test_unknown_tenant_and_wrong_secret_are_distinct() -> None:
    auth, _, _ = make()
    assert kind_of(auth.challenge, "nobody", HOST) == "unknown-tenant"
    assert kind_of(login, auth, "acme", B_SECRET) == "bad-proof"


def test_challenges_are_single_use_per_tenant_and_expire() -> None:
    auth, mono, _ = make(failures=100)
    nonce = auth.challenge("acme", HOST)
    mine = os.urandom(16)
    proof = handshake.client_proof(A_SECRET, "acme", nonce, mine)
    auth.hello("acme", nonce, mine, proof, (), HOST)
    # The same nonce again (a replayed Hello) is refused.
    assert kind_of(auth.hello, "acme", nonce, mine, proof, (), HOST) == "bad-challenge"
    # A nonce handed out for another tenant does not serve this one.
    other = auth.challenge("bank", HOST)
    p = handshake.client_proof(A_SECRET, "acme", other, mine)
    assert kind_of(auth.hello, "acme", other, mine, p, (), HOST) == "bad-challenge"
    # A nonce older than its lifetime is refused.
    late = auth.challenge("acme", HOST)
    mono.now += CHALLENGE_TTL_S + 1
    p = handshake.client_proof(A_SECRET, "acme", late, mine)
    assert kind_of(auth.hello, "acme", late, mine, p, (), HOST) == "bad-challenge"


def test_malformed_nonces_are_bad_challenge() -> None:
    auth, _, _ = make()
    nonce = auth.challenge("acme", HOST)
    assert kind_of(auth.hello, "acme", nonce[:5], os.urandom(16), b"", (), HOST) == "bad-challenge"
    assert kind_of(auth.hello, "acme", nonce, b"short", b"", (), HOST) == "bad-challenge"


def test_failed_attempts_are_limited_per_host_for_a_minute() -> None:
    auth, mono, _ = make(failures=3)
    for _ in range(3):
        assert kind_of(login, auth, "acme", B_SECRET) == "bad-proof"
    # Past the limit even the right secret is turned away, from that host only.
    assert kind_of(login, auth) == "rate-limited"
    assert login(auth, host="10.0.0.8")
    mono.now += 61
    assert login(auth)


def test_old_secret_works_until_retired_and_its_streams_end() -> None:
    auth, _, wall = make(old_until=2000.0)
    token = login(auth, secret=A_OLD)
    assert auth.still_valid(token)
    wall.now = 2000.0
    assert not auth.still_valid(token)
    assert kind_of(auth.session, token, "acme", HOST) == "retired-secret"
    assert kind_of(login, auth, "acme", A_OLD) == "retired-secret"
    assert login(auth, secret=A_SECRET)  # the current secret is unaffected


def test_sessions_expire() -> None:
    auth, mono, _ = make(ttl=10.0)
    token = login(auth)
    mono.now += 11
    assert not auth.still_valid(token)
    assert kind_of(auth.session, token, "acme", HOST) == "session"


def test_certificates_bind_drivers_to_tenants() -> None:
    auth, _, _ = make(failures=100)
    # A certificate of tenant bank proves nothing for acme, whatever the secret.
    assert kind_of(login, auth, "acme", A_SECRET, ("bank-app",)) == "wrong-tenant"
    # bank requires its certificate: the secret alone is not enough.
    assert kind_of(login, auth, "bank", B_SECRET, ()) == "wrong-tenant"
    assert kind_of(login, auth, "bank", B_SECRET, ("someone-else",)) == "wrong-tenant"
    assert login(auth, "bank", B_SECRET, ("bank-app",))
    # With the certificate, an empty proof logs in; a wrong proof does not.
    assert login(auth, "bank", B_SECRET, ("bank-app",), proof=b"")
    assert kind_of(login, auth, "bank", A_SECRET, ("bank-app",)) == "bad-proof"
    # Without a certificate an empty proof is a bad proof.
    assert kind_of(login, auth, "acme", A_SECRET, (), HOST, b"") == "bad-proof"


@settings(max_examples=300, deadline=None)
@given(
    tenant=st.sampled_from(["acme", "bank", "", "x" * 300]) | st.text(max_size=20),
    use_nonce=st.booleans(),
    server_nonce=st.binary(max_size=70),
    client_nonce=st.binary(max_size=70),
    proof=st.binary(max_size=40),
    identities=st.lists(st.text(max_size=10), max_size=3),
)
def test_fuzz_hello_only_refuses_by_kind(
    tenant: str,
    use_nonce: bool,
    server_nonce: bytes,
    client_nonce: bytes,
    proof: bytes,
    identities: list[str],
) -> None:
    auth, _, _ = make(failures=10**6)
    if use_nonce and tenant in auth.tenants:
        server_nonce = auth.challenge(tenant, HOST)
    try:
        auth.hello(tenant, server_nonce, client_nonce, proof, identities, HOST)
    except AuthFailure as exc:
        assert exc.kind in {"unknown-tenant", "bad-challenge", "bad-proof", "wrong-tenant"}
    else:
        raise AssertionError("random input authenticated")
