"""The wrapper's exception root and the one place where psycopg errors are
translated into it.

Permanent errors (bad config, auth failure, missing privilege) stop the daemon
with a message that names the fix; retriable ones (connection lost, server
shutting down) are retried by the pipeline with bounded, logged backoff.
"""

from __future__ import annotations

from prism.fabric.errors import PrismError


class WrapperError(PrismError):
    """Root of errors raised by prism.wrapper."""


class ConfigError(WrapperError):
    """A config value is invalid. The message names the key and the fix."""


class SourceError(WrapperError):
    """The database source failed."""


class PrerequisiteError(SourceError):
    """The database is not set up for replication (wal_level, privileges...)."""


class GtidError(SourceError):
    """A GTID or GTID set (MySQL/MariaDB) is malformed or unsupported."""


class ResumeLostError(SourceError):
    """The source cannot resume where the store left off: the server no
    longer has (or never had) what follows the stored position or GTID
    state. The pipeline copies the tables afresh under a new stream
    identity, and drivers re-bootstrap."""

    retriable = True


class StoreError(WrapperError):
    """The wrapper's durable store failed or is inconsistent."""


class StoreFullError(StoreError):
    """The store's file system is full. The store transaction that hit it was
    rolled back whole (or, when only SQLite's part failed after the row log
    had made it durable, it stands and SQLite gets that part with the next
    transaction), so nothing is lost and nothing was acknowledged past what
    is stored; the pipeline waits for space and resumes by itself."""

    retriable = True


# SQLSTATE classes that a retry can cure: connection exceptions, operator
# intervention (admin shutdown, crash shutdown), insufficient resources,
# serialization failure / deadlock.
_RETRIABLE_SQLSTATE_PREFIXES = ("08", "57", "53", "40")
_PERMANENT_SQLSTATES = {
    "28000": "authentication failed: check the dsn's user and password",
    "28P01": "password authentication failed: check the dsn's password",
    "42501": "insufficient privilege: grant the wrapper's role REPLICATION and SELECT",
    "3D000": "the database in the dsn does not exist",
    "55000": "object not in prerequisite state",
}


def map_psycopg_error(exc: BaseException, doing: str) -> WrapperError:
    """Translate a psycopg error (or OSError) raised while `doing` into a
    SourceError whose `retriable` says whether reconnecting can help."""
    import psycopg

    sqlstate = getattr(exc, "sqlstate", None)
    msg = str(exc).strip() or exc.__class__.__name__
    if sqlstate in _PERMANENT_SQLSTATES:
        hint = _PERMANENT_SQLSTATES[sqlstate]
        return SourceError(f"{doing}: {msg} ({hint})", retriable=False)
    if sqlstate and sqlstate.startswith(_RETRIABLE_SQLSTATE_PREFIXES):
        return SourceError(f"{doing}: {msg}", retriable=True)
    if isinstance(exc, psycopg.OperationalError | OSError | ConnectionError):
        return SourceError(f"{doing}: {msg}", retriable=True)
    return SourceError(f"{doing}: {msg}", retriable=False)


# MySQL/MariaDB error numbers whose cause a retry cannot cure, with the fix.
_MYSQL_PERMANENT = {
    1044: "access to the database denied: GRANT SELECT ON db.* TO the dsn's user",
    1045: "authentication failed: check the dsn's user and password",
    1049: "the database in the dsn does not exist",
    1227: "missing privilege: GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the dsn's user",
    1142: "missing table privilege: GRANT SELECT ON the table TO the dsn's user",
    1146: "a configured table does not exist",
}
# Lost or refused connections, server shutdown, killed connection, lock waits,
# deadlocks, too many connections, and 1236 (the binlog position is gone: the
# pipeline's next attempt checks the position and copies afresh if it must).
_MYSQL_RETRIABLE = {1040, 1053, 1205, 1213, 1236, 1317, 1927, 2002, 2003, 2006, 2013, 2055}


def map_pymysql_error(exc: BaseException, doing: str) -> WrapperError:
    """Translate a pymysql error (or OSError) raised while `doing` into a
    SourceError whose `retriable` says whether reconnecting can help."""
    import pymysql

    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    msg = f"{doing}: ({code}) {text}" if code is not None else f"{doing}: {exc!r}"
    if code in _MYSQL_PERMANENT:
        return SourceError(f"{msg} ({_MYSQL_PERMANENT[code]})", retriable=False)
    if code in _MYSQL_RETRIABLE:
        return SourceError(msg, retriable=True)
    if isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError):
        return SourceError(msg, retriable=True)
    if isinstance(exc, OSError | ConnectionError | EOFError):
        return SourceError(msg, retriable=True)
    return SourceError(msg, retriable=False)
