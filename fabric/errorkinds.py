"""Why the wrapper refused a call, as both nodes spell it on the wire.

The list is wrapper.proto's ErrorKind enum, the contract a client in any
language reads. Here it becomes a StrEnum whose values are the wire names
the "prism-error" trailing metadata carries (derived from the proto names,
never spelled by hand), with the gRPC status each kind travels under. The
wrapper raises its AuthFailure and WriteError with these kinds and refuses
calls through `refusal_metadata` and `GRPC_STATUS`; the driver reads them
back with `kind_in` and maps each to its exception class. A kind added to
the proto fails tests/unit/test_error_kinds.py until both sides map it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import grpc

from prism.fabric import wrapper_pb2 as pb

METADATA_KEY = "prism-error"
SQLSTATE_KEY = "prism-sqlstate"  # the database's code, beside a write kind


def wire_name(value: pb.ErrorKind) -> str:
    """ERROR_KIND_UNKNOWN_TENANT -> "unknown-tenant" (the rule in wrapper.proto)."""
    return pb.ErrorKind.Name(value).removeprefix("ERROR_KIND_").lower().replace("_", "-")


class ErrorKind(StrEnum):
    # Authentication: Challenge, Hello, and the session of Subscribe and Write.
    UNKNOWN_TENANT = wire_name(pb.ERROR_KIND_UNKNOWN_TENANT)
    BAD_PROOF = wire_name(pb.ERROR_KIND_BAD_PROOF)
    BAD_CHALLENGE = wire_name(pb.ERROR_KIND_BAD_CHALLENGE)
    RETIRED_SECRET = wire_name(pb.ERROR_KIND_RETIRED_SECRET)
    SESSION = wire_name(pb.ERROR_KIND_SESSION)
    BAD_MAC = wire_name(pb.ERROR_KIND_BAD_MAC)
    WRONG_TENANT = wire_name(pb.ERROR_KIND_WRONG_TENANT)
    RATE_LIMITED = wire_name(pb.ERROR_KIND_RATE_LIMITED)
    # Writes.
    PERMISSION = wire_name(pb.ERROR_KIND_PERMISSION)
    INVALID = wire_name(pb.ERROR_KIND_INVALID)
    NOT_FOUND = wire_name(pb.ERROR_KIND_NOT_FOUND)
    CONSTRAINT = wire_name(pb.ERROR_KIND_CONSTRAINT)
    CONFLICT = wire_name(pb.ERROR_KIND_CONFLICT)
    UNAVAILABLE = wire_name(pb.ERROR_KIND_UNAVAILABLE)
    LAGGING = wire_name(pb.ERROR_KIND_LAGGING)
    UNKNOWN = wire_name(pb.ERROR_KIND_UNKNOWN)


_S = grpc.StatusCode
# The status each kind travels under, as wrapper.proto documents beside it.
GRPC_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.UNKNOWN_TENANT: _S.UNAUTHENTICATED,
    ErrorKind.BAD_PROOF: _S.UNAUTHENTICATED,
    ErrorKind.BAD_CHALLENGE: _S.UNAUTHENTICATED,
    ErrorKind.RETIRED_SECRET: _S.UNAUTHENTICATED,
    ErrorKind.SESSION: _S.UNAUTHENTICATED,
    ErrorKind.BAD_MAC: _S.UNAUTHENTICATED,
    ErrorKind.WRONG_TENANT: _S.PERMISSION_DENIED,
    ErrorKind.RATE_LIMITED: _S.RESOURCE_EXHAUSTED,
    ErrorKind.PERMISSION: _S.PERMISSION_DENIED,
    ErrorKind.INVALID: _S.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: _S.NOT_FOUND,
    ErrorKind.CONSTRAINT: _S.FAILED_PRECONDITION,
    ErrorKind.CONFLICT: _S.ABORTED,
    ErrorKind.UNAVAILABLE: _S.UNAVAILABLE,
    ErrorKind.LAGGING: _S.DEADLINE_EXCEEDED,
    ErrorKind.UNKNOWN: _S.UNAVAILABLE,
}


def refusal_metadata(kind: ErrorKind, sqlstate: str | None = None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of a refusal (the wrapper's side)."""
    md: tuple[tuple[str, str], ...] = ((METADATA_KEY, kind.value),)
    if sqlstate:
        md += ((SQLSTATE_KEY, sqlstate),)
    return md


def metadata_value(items: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    """A str value of gRPC trailing metadata, or None."""
    for k, v in items or ():
        if k == key and isinstance(v, str):
            return v
    return None


def kind_in(items: Iterable[tuple[str, Any]] | None) -> ErrorKind | None:
    """The refusal kind a call's trailing metadata carries (the driver's
    side), or None: no kind, or one this side does not know (a newer
    wrapper), which then maps like a plain gRPC status."""
    value = metadata_value(items, METADATA_KEY)
    try:
        return ErrorKind(value) if value is not None else None
    except ValueError:
        return None
