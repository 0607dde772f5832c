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


class StoreError(WrapperError):
    """The wrapper's durable store failed or is inconsistent."""


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
