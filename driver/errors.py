"""The driver's exception root, and the one place gRPC errors are mapped.

Callers catch DriverError (or PrismError for everything prism). `retriable`
says whether the subscription loop will keep trying on its own; permanent
errors (wrong secret, unknown tenant, protocol mismatch) stop it and are
raised to every waiter.
"""

from __future__ import annotations

from typing import Any

import grpc

from prism.fabric.errorkinds import SQLSTATE_KEY, ErrorKind, kind_in, metadata_value
from prism.fabric.errors import PrismError


class DriverError(PrismError):
    """Root of errors raised by prism.driver."""


class DriverConfigError(DriverError):
    """A DriverConfig argument is invalid; the message names it."""


class QueryError(DriverError):
    """A query's arguments are invalid (dimension, NaN, top_k, threshold...)."""


class ChangeFeedError(DriverError):
    """The change feed cannot give this consumer every change it asked for."""


class ChangeFeedOverflowError(ChangeFeedError):
    """A consumer fell more than DriverConfig.change_buffer changes behind and
    was dropped (the replica never waits for it). The message names the
    position to resume from."""


class ChangePositionExpiredError(ChangeFeedError):
    """`from_position` is older than the changes the driver retains (or from
    before its last bootstrap): re-read the tables with find() and follow
    the feed from driver.position."""


class AuthenticationError(DriverError):
    """The wrapper does not share this driver's tenant secret (or the wrapper
    failed to prove it holds it). Permanent: fix the secret_file."""


class UnknownTenantError(AuthenticationError):
    """The wrapper serves no tenant of this tenant_id. Permanent."""


class SecretRetiredError(AuthenticationError):
    """The driver's secret was replaced and its overlap window has ended:
    give the driver the tenant's current secret file. Permanent."""


class TenantDeniedError(AuthenticationError):
    """The call asked for another tenant's data (PERMISSION_DENIED), e.g. a
    client certificate of tenant B asking for tenant A. Permanent."""


class TlsMismatchError(DriverError):
    """The driver's TLS settings do not fit the wrapper's: TLS against a
    plaintext wrapper or the other way round, a certificate from a CA the
    driver does not trust, a name the certificate does not hold, or a
    missing client certificate. The message names the likely cause.
    Permanent: fix the DriverConfig (or the wrapper's [tls])."""


class RateLimitedError(DriverError):
    """Too many failed authentications from this address; the wrapper
    refuses it for up to a minute. The subscription retries by itself."""

    retriable = True


class SessionExpiredError(DriverError):
    """The wrapper no longer knows this driver's session (it restarted, or
    the session aged out); the driver says Hello again by itself."""

    retriable = True


class ConnectionLostError(DriverError):
    """The link to the wrapper failed; the driver reconnects by itself."""

    retriable = True


class NotReadyError(DriverError):
    """The driver was used before start (use `async with PrismDriver(...)`),
    after close, or its subscription has failed."""


class WaitTimeoutError(DriverError, TimeoutError):
    """wait_ready / wait_for did not reach the position in time."""

    retriable = True


class WriteError(DriverError):
    """A write was refused or failed. `kind` says why (permission, invalid,
    not-found, constraint, conflict, unavailable, lagging, unknown: the
    write kinds of wrapper.proto's ErrorKind, compared as str); `sqlstate`
    and `db_message` carry the database's code and message when it raised
    it. Nothing of a refused request was written: a request is one
    transaction."""

    kind: ErrorKind = ErrorKind.INVALID

    def __init__(
        self, message: str, *, sqlstate: str | None = None, retriable: bool | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.sqlstate = sqlstate
        self.db_message = message


class WritePermissionError(WriteError):
    """The table or a column is not writable for this tenant."""

    kind = ErrorKind.PERMISSION


class InvalidWriteError(WriteError):
    """Unknown column, wrong type, bad vector, or a value the database refused."""

    kind = ErrorKind.INVALID


class RowNotFoundError(WriteError):
    """update() found no row with that key."""

    kind = ErrorKind.NOT_FOUND


class ConstraintViolationError(WriteError):
    """The database refused the write: unique, foreign key, not null, check."""

    kind = ErrorKind.CONSTRAINT


class WriteConflictError(WriteError):
    """Deadlock or serialization failure, still there after the wrapper's
    bounded retries. Safe to retry (with a request_id)."""

    kind = ErrorKind.CONFLICT
    retriable = True


class DatabaseUnavailableError(WriteError):
    """The database (or the wrapper's connection to it) is down."""

    kind = ErrorKind.UNAVAILABLE
    retriable = True


class ReplicaLagError(WriteError, WaitTimeoutError):
    """The write COMMITTED in the database; only the local replica (or the
    stream) has not shown it within the timeout. `ack` is the write's ack
    when known. Do not retry the write without a request_id."""

    kind = ErrorKind.LAGGING
    retriable = True

    def __init__(self, message: str, ack: object = None) -> None:
        super().__init__(message)
        self.ack = ack


class WriteOutcomeUnknownError(WriteError):
    """The link to the wrapper failed before the write's answer came back:
    it may or may not have committed. Retry with the same request_id to
    make it apply exactly once."""

    kind = ErrorKind.UNKNOWN
    retriable = True
    request_id: str | None = None  # the id to retry with


# Each write kind's exception, keyed by the kind the wrapper sends.
WRITE_ERRORS: dict[ErrorKind, type[WriteError]] = {
    c.kind: c
    for c in (
        WritePermissionError,
        InvalidWriteError,
        RowNotFoundError,
        ConstraintViolationError,
        WriteConflictError,
        DatabaseUnavailableError,
        ReplicaLagError,
        WriteOutcomeUnknownError,
    )
}


def map_write_error(exc: grpc.aio.AioRpcError) -> DriverError:
    """A failed Write call as a typed error, from its prism-error metadata."""
    items: Any = exc.trailing_metadata() or ()
    kind = kind_in(items)
    if kind is None or (kind not in AUTH_ERRORS and kind not in WRITE_ERRORS):
        mapped = map_grpc_error(exc, "Write")
        if mapped.retriable:  # sent, but no answer: the outcome is unknown
            return outcome_unknown(str(mapped))
        return mapped
    return write_refusal(kind, exc.details() or kind.value, metadata_value(items, SQLSTATE_KEY))


def outcome_unknown(cause: str) -> WriteOutcomeUnknownError:
    """A write sent whose outcome nobody can tell (the caller sets request_id)."""
    return WriteOutcomeUnknownError(
        f"{cause} - the write may or may not have committed; retry it with the same "
        "request_id to apply it once"
    )


def write_refusal(kind: ErrorKind | None, details: str, sqlstate: str | None) -> DriverError:
    """The typed error of a write the wrapper refused with `kind` (a Write
    call's status, or one result of a WriteBatch call; None: a kind this
    driver does not know, from a newer wrapper)."""
    if kind in AUTH_ERRORS:
        # Refused before anything ran: not an unknown outcome.
        return AUTH_ERRORS[kind](f"Write: {details}")
    cls = WRITE_ERRORS.get(kind) if kind is not None else None
    if cls is None:  # not a write kind: nothing says whether it ran
        return outcome_unknown(f"Write: {details}")
    if cls is ReplicaLagError:
        return ReplicaLagError(details)
    return cls(details, sqlstate=sqlstate or None)


_PERMANENT = {
    grpc.StatusCode.NOT_FOUND: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.FAILED_PRECONDITION: DriverError,
    grpc.StatusCode.INVALID_ARGUMENT: DriverError,
    grpc.StatusCode.UNIMPLEMENTED: DriverError,
}


# Each authentication kind's exception, keyed by the kind the wrapper sends.
AUTH_ERRORS: dict[ErrorKind, type[DriverError]] = {
    ErrorKind.UNKNOWN_TENANT: UnknownTenantError,
    ErrorKind.BAD_PROOF: AuthenticationError,
    ErrorKind.RETIRED_SECRET: SecretRetiredError,
    ErrorKind.WRONG_TENANT: TenantDeniedError,
    ErrorKind.RATE_LIMITED: RateLimitedError,
    ErrorKind.SESSION: SessionExpiredError,
    ErrorKind.BAD_MAC: SessionExpiredError,  # the session and its key went astray: start over
    ErrorKind.BAD_CHALLENGE: SessionExpiredError,  # a lost or late challenge: start over
}


def map_grpc_error(exc: grpc.RpcError, doing: str) -> DriverError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "UNKNOWN"
    items: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
    kind = kind_in(items)
    auth_cls = AUTH_ERRORS.get(kind) if kind is not None else None
    if auth_cls is not None:
        return auth_cls(f"{doing}: {details}")
    cls = _PERMANENT.get(code) if code is not None else None
    if cls is not None:
        return cls(f"{doing}: {name}: {details}", retriable=False)
    return ConnectionLostError(f"{doing}: {name}: {details}")
