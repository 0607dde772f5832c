"""The refusal kinds are defined once (wrapper.proto's ErrorKind) and both
sides map every one of them: the wrapper to a gRPC status and metadata, the
driver back to a typed exception."""

from __future__ import annotations

import grpc
import pytest

from prism.driver.errors import (
    AUTH_ERRORS,
    WRITE_ERRORS,
    AuthenticationError,
    ConnectionLostError,
    ConstraintViolationError,
    ReplicaLagError,
    WriteOutcomeUnknownError,
    map_grpc_error,
    map_write_error,
)
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errorkinds import (
    GRPC_STATUS,
    METADATA_KEY,
    ErrorKind,
    kind_in,
    refusal_metadata,
    wire_name,
)


def test_the_python_kinds_are_the_proto_kinds() -> None:
    proto = {wire_name(v) for v in pb.ErrorKind.values() if v != pb.ERROR_KIND_UNSPECIFIED}
    assert {k.value for k in ErrorKind} == proto
    for kind in ErrorKind:
        assert pb.ErrorKind.Value("ERROR_KIND_" + kind.name) is not None


def test_wire_names_keep_their_spelling() -> None:
    # What drivers and wrappers of earlier builds send and expect.
    assert [k.value for k in ErrorKind] == [
        "unknown-tenant",
        "bad-proof",
        "bad-challenge",
        "retired-secret",
        "session",
        "bad-mac",
        "wrong-tenant",
        "rate-limited",
        "permission",
        "invalid",
        "not-found",
        "constraint",
        "conflict",
        "unavailable",
        "lagging",
        "unknown",
    ]
    assert ErrorKind.UNKNOWN_TENANT == "unknown-tenant"  # compares as its wire name


def test_every_kind_has_a_status_and_a_driver_exception() -> None:
    assert set(GRPC_STATUS) == set(ErrorKind)
    assert not set(AUTH_ERRORS) & set(WRITE_ERRORS)
    assert set(AUTH_ERRORS) | set(WRITE_ERRORS) == set(ErrorKind)
    for kind, cls in WRITE_ERRORS.items():
        assert cls.kind is kind


def _refused(
    kind: str, status: grpc.StatusCode, sqlstate: str | None = None
) -> grpc.aio.AioRpcError:
    md = ((METADATA_KEY, kind), *((("prism-sqlstate", sqlstate),) if sqlstate else ()))
    return grpc.aio.AioRpcError(
        status, grpc.aio.Metadata(), grpc.aio.Metadata(*md), details=f"refused: {kind}"
    )


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_a_refusal_round_trips_to_its_exception(kind: ErrorKind) -> None:
    md = refusal_metadata(kind, "23505")
    exc = grpc.aio.AioRpcError(
        GRPC_STATUS[kind], grpc.aio.Metadata(), grpc.aio.Metadata(*md), details="no"
    )
    assert kind_in(exc.trailing_metadata()) is kind
    err = map_write_error(exc)
    if kind in AUTH_ERRORS:
        assert type(err) is AUTH_ERRORS[kind]
        assert type(map_grpc_error(exc, "Hello")) is AUTH_ERRORS[kind]
    else:
        assert type(err) is WRITE_ERRORS[kind]
        if type(err) is not ReplicaLagError:
            assert err.sqlstate == "23505"  # type: ignore[attr-defined]


def test_write_refusal_keeps_sqlstate_and_details() -> None:
    err = map_write_error(_refused("constraint", grpc.StatusCode.FAILED_PRECONDITION, "23505"))
    assert isinstance(err, ConstraintViolationError)
    assert (err.kind, err.sqlstate, str(err)) == ("constraint", "23505", "refused: constraint")


def test_a_kind_this_side_does_not_know_maps_by_status() -> None:
    assert kind_in([(METADATA_KEY, "from-the-future")]) is None
    assert kind_in([("other", "session")]) is None
    assert isinstance(
        map_grpc_error(_refused("from-the-future", grpc.StatusCode.UNAUTHENTICATED), "Hello"),
        AuthenticationError,
    )
    assert isinstance(
        map_grpc_error(_refused("from-the-future", grpc.StatusCode.UNAVAILABLE), "Hello"),
        ConnectionLostError,
    )
    # A write whose answer never came: its outcome is unknown.
    assert isinstance(
        map_write_error(_refused("from-the-future", grpc.StatusCode.UNAVAILABLE)),
        WriteOutcomeUnknownError,
    )
