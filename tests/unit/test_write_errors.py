"""Database errors of a write map, in one place, to the kinds drivers see."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from prism.wrapper.writeplan import map_db_error


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("23505", "constraint"),
        ("23503", "constraint"),
        ("23514", "constraint"),
        ("40001", "conflict"),
        ("40P01", "conflict"),
        ("22P02", "invalid"),
        ("42703", "invalid"),
        ("42501", "permission"),
        ("25006", "unavailable"),
        ("57P01", "unavailable"),
        ("40003", "unknown"),
    ],
)
def test_sqlstates_map_to_kinds(sqlstate: str, kind: str) -> None:
    exc = errors.lookup(sqlstate)("database says no")
    err = map_db_error(exc)
    assert (err.kind, err.sqlstate) == (kind, sqlstate)
    assert "database says no" in str(err)
    assert err.retriable == (kind in ("conflict", "unavailable"))


def test_client_side_errors() -> None:
    assert map_db_error(psycopg.OperationalError("connection lost")).kind == "unavailable"
    assert map_db_error(psycopg.InterfaceError("closed")).kind == "unavailable"
    nul = psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    assert map_db_error(nul).kind == "invalid"
