"""The driver's exception root, and the one place gRPC errors are mapped.

Callers catch DriverError (or PrismError for everything prism). `retriable`
says whether the subscription loop will keep trying on its own; permanent
errors (wrong secret, unknown tenant, protocol mismatch) stop it and are
raised to every waiter.
"""

from __future__ import annotations

import grpc

from prism.fabric.errors import PrismError


class DriverError(PrismError):
    """Root of errors raised by prism.driver."""


class DriverConfigError(DriverError):
    """A DriverConfig argument is invalid; the message names it."""


class QueryError(DriverError):
    """A query's arguments are invalid (dimension, NaN, top_k, threshold...)."""


class AuthenticationError(DriverError):
    """The wrapper does not share this driver's tenant secret, or does not
    know the tenant. Permanent: fix the secret_file or tenant_id."""


class ConnectionLostError(DriverError):
    """The link to the wrapper failed; the driver reconnects by itself."""

    retriable = True


class NotReadyError(DriverError):
    """The driver was used before start (use `async with PrismDriver(...)`),
    after close, or its subscription has failed."""


class WaitTimeoutError(DriverError, TimeoutError):
    """wait_ready / wait_for did not reach the position in time."""

    retriable = True


_PERMANENT = {
    grpc.StatusCode.NOT_FOUND: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.FAILED_PRECONDITION: DriverError,
    grpc.StatusCode.INVALID_ARGUMENT: DriverError,
    grpc.StatusCode.UNIMPLEMENTED: DriverError,
}


def map_grpc_error(exc: grpc.RpcError, doing: str) -> DriverError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _PERMANENT.get(code) if code is not None else None
    name = code.name if code is not None else "UNKNOWN"
    if cls is not None:
        return cls(f"{doing}: {name}: {details}", retriable=False)
    return ConnectionLostError(f"{doing}: {name}: {details}")
