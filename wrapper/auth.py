"""Who may talk to the wrapper: challenge-response, mTLS identities,
sessions and the failed-attempt limit (serve step, before any data moves).

Plain code under the gRPC servicer (wrapper/server.py), with the clock
injected so the rules are unit-tested without sleeping. A driver asks for a
challenge (a fresh single-use nonce), then says Hello with an HMAC proof over
that nonce and its own (prism.fabric.auth), or presents a client certificate
whose identity maps to the tenant. Success gives a session token that binds
Subscribe and Write calls to one tenant; any call for another tenant's data
is refused. Failures are counted per client address; past the limit, the
address is refused until a minute has passed since its oldest counted
failure. Every refusal is an AuthFailure whose `kind` the server turns into
a gRPC status and the driver into a distinct exception.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from prism.fabric import auth as handshake
from prism.fabric.errorkinds import ErrorKind
from prism.fabric.errors import AuthError
from prism.wrapper.errors import WrapperError

CHALLENGE_TTL_S = 30.0
MAX_PENDING_CHALLENGES = 10_000
SESSION_BYTES = 32
_WINDOW_S = 60.0


class AuthFailure(WrapperError):
    """A refused handshake or call; `kind` is one of the authentication
    kinds of wrapper.proto's ErrorKind."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class TenantSecrets:
    id: str
    secrets: tuple[bytes, ...]  # [0] current; the rest accepted until old_until
    identities: tuple[str, ...] = ()
    old_until: float | None = None  # wall-clock time


@dataclass(frozen=True)
class Session:
    tenant: str
    secret_index: int  # which of the tenant's secrets the driver proved
    expires: float  # monotonic
    peer: str
    key: bytes = b""  # MACs the session's requests (prism.fabric.auth.session_key)


@dataclass
class _Challenge:
    tenant: str
    expires: float


@dataclass
class Authenticator:
    tenants: Mapping[str, TenantSecrets]
    failures_per_minute: int = 10
    session_ttl_s: float = 24 * 3600.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _challenges: dict[bytes, _Challenge] = field(default_factory=dict)
    _sessions: dict[bytes, Session] = field(default_factory=dict)
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._identity_tenant = {i: t.id for t in self.tenants.values() for i in t.identities}

    # -- failed attempts --------------------------------------------------
    def _recent_failures(self, host: str) -> deque[float]:
        q = self._failures.setdefault(host, deque())
        cutoff = self.clock() - _WINDOW_S
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._failures[host]
            return deque()
        return q

    def check_rate(self, host: str) -> None:
        q = self._recent_failures(host)
        if len(q) >= self.failures_per_minute:
            wait = q[0] + _WINDOW_S - self.clock()
            raise AuthFailure(
                ErrorKind.RATE_LIMITED,
                f"too many failed authentications from {host}; retry in {wait:.0f}s",
            )

    def _fail(self, host: str, kind: ErrorKind, message: str) -> AuthFailure:
        self._failures.setdefault(host, deque()).append(self.clock())
        return AuthFailure(kind, message)

    def _tenant(self, tenant_id: str, host: str) -> TenantSecrets:
        t = self.tenants.get(tenant_id)
        if t is None:
            raise self._fail(host, ErrorKind.UNKNOWN_TENANT, f"unknown tenant {tenant_id!r}")
        return t

    # -- the handshake ----------------------------------------------------
    def challenge(self, tenant_id: str, host: str) -> bytes:
        self.check_rate(host)
        self._tenant(tenant_id, host)
        now = self.clock()
        if len(self._challenges) >= MAX_PENDING_CHALLENGES:
            self._challenges = {n: c for n, c in self._challenges.items() if c.expires > now}
            if len(self._challenges) >= MAX_PENDING_CHALLENGES:
                raise AuthFailure(
                    ErrorKind.RATE_LIMITED, "too many pending challenges; retry shortly"
                )
        nonce = os.urandom(handshake.NONCE_BYTES)
        self._challenges[nonce] = _Challenge(tenant_id, now + CHALLENGE_TTL_S)
        return nonce

    def hello(
        self,
        tenant_id: str,
        server_nonce: bytes,
        client_nonce: bytes,
        proof: bytes,
        identities: Iterable[str],
        host: str,
    ) -> tuple[bytes, Session, bytes]:
        """Authenticate a Hello. Returns (session token, session, the secret
        the driver proved, or the current one for a certificate login)."""
        self.check_rate(host)
        tenant = self._tenant(tenant_id, host)
        try:
            handshake.check_nonces(server_nonce, client_nonce)
        except AuthError as exc:
            raise self._fail(host, ErrorKind.BAD_CHALLENGE, str(exc)) from None
        pending = self._challenges.pop(server_nonce, None)
        if pending is None or pending.expires < self.clock() or pending.tenant != tenant_id:
            raise self._fail(
                host,
                ErrorKind.BAD_CHALLENGE,
                "unknown, used or expired challenge: ask Challenge again (nonces are single-use "
                f"and live {CHALLENGE_TTL_S:.0f}s)",
            )
        presented = list(identities)
        cert_tenant = next(
            (self._identity_tenant[i] for i in presented if i in self._identity_tenant), None
        )
        if cert_tenant is not None and cert_tenant != tenant_id:
            raise self._fail(
                host,
                ErrorKind.WRONG_TENANT,
                f"the client certificate belongs to tenant {cert_tenant!r}, not {tenant_id!r}",
            )
        if tenant.identities and cert_tenant is None:
            # A tenant bound to certificates admits no driver without one,
            # whatever secret it proves.
            raise self._fail(
                host,
                ErrorKind.WRONG_TENANT,
                f"tenant {tenant_id!r} requires a client certificate with identity one of "
                f"{list(tenant.identities)}; presented {sorted(presented) or 'none'}",
            )
        index = None
        for i, secret in enumerate(tenant.secrets):
            expected = handshake.client_proof(secret, tenant_id, server_nonce, client_nonce)
            if handshake.proof_matches(expected, proof):
                index = i
                break
        if index is not None and index > 0 and self._old_retired(tenant):
            raise self._fail(
                host,
                ErrorKind.RETIRED_SECRET,
                f"the driver holds a retired secret of tenant {tenant_id!r}; give it the "
                "current secret file",
            )
        if index is None:
            if proof or cert_tenant is None:
                raise self._fail(
                    host,
                    ErrorKind.BAD_PROOF,
                    f"the proof does not match the secret of tenant {tenant_id!r}: the driver's "
                    "secret_file differs from the wrapper's",
                )
            index = 0  # logged in by certificate alone
        token = os.urandom(SESSION_BYTES)
        key = handshake.session_key(tenant.secrets[index], tenant_id, server_nonce, client_nonce)
        session = Session(tenant_id, index, self.clock() + self.session_ttl_s, host, key)
        self._sessions[token] = session
        return token, session, tenant.secrets[index]

    def _old_retired(self, tenant: TenantSecrets) -> bool:
        return tenant.old_until is not None and self.wall() >= tenant.old_until

    def session(
        self, token: bytes, tenant_id: str, host: str, request: Message | None = None
    ) -> Session:
        """The session of a Subscribe or Write call, which must be for its
        tenant and (when given) MAC'd with the session key."""
        self.check_rate(host)
        s = self._sessions.get(token)
        if s is None or s.expires < self.clock():
            self._sessions.pop(token, None)
            raise self._fail(host, ErrorKind.SESSION, "no valid session: say Hello again")
        if s.secret_index > 0 and self._old_retired(self.tenants[s.tenant]):
            del self._sessions[token]
            raise self._fail(
                host, ErrorKind.RETIRED_SECRET, "the session's secret has been retired"
            )
        if request is not None and not handshake.mac_matches(s.key, request):
            raise self._fail(
                host,
                ErrorKind.BAD_MAC,
                "the request's MAC does not verify under its session key: a session token "
                "used without the secret that opened it",
            )
        if s.tenant != tenant_id:
            raise self._fail(
                host,
                ErrorKind.WRONG_TENANT,
                f"this session belongs to tenant {s.tenant!r}, not {tenant_id!r}",
            )
        return s

    def still_valid(self, token: bytes) -> bool:
        """Whether a session may go on streaming: not expired, and its secret
        not retired. Streams check this between batches and end when not."""
        s = self._sessions.get(token)
        if s is None or s.expires < self.clock():
            return False
        return not (s.secret_index > 0 and self._old_retired(self.tenants[s.tenant]))

    def expire(self) -> None:
        """Drop expired challenges and sessions (called now and then)."""
        now = self.clock()
        self._challenges = {n: c for n, c in self._challenges.items() if c.expires > now}
        self._sessions = {t: s for t, s in self._sessions.items() if s.expires > now}
