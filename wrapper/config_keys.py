"""Every prism-wrapper config key, declared once: its type, default,
description and check, as a field of its section's frozen dataclass.

The annotation is a key's type; `key(...)` gives its default (REQUIRED when it
must be given), its description and its check. The reader
(prism.wrapper.config), the typed objects the rest of the wrapper receives
(`cfg.database.slot`, `table.vector_dim`) and `prism-wrapper
config-reference` (describe_fields) are all derived from these fields, so
none of them can list a key the others do not know. Pure declarations: no
file or environment is read here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prism.fabric.switchwords import switch_value
from prism.wrapper.errors import ConfigError

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")

Check = Callable[[Any], "str | None"]  # returns an error message, or None when the value is fine


class _Required:
    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Any = _Required()  # the default of a key that must be given


# -- value kinds: how a key's value is read ------------------------------


@dataclass(frozen=True)
class Kind:
    """A key's value type: its name in the reference, the phrase an error
    uses, and its parser. `text` is true where a value may come as text (the
    sections' keys, which environment variables override): "8080" reads as
    an integer there, while [[tables]] and [[tenants]] entries need TOML's
    own types."""

    name: str
    expected: str
    parse: Callable[[Any, bool], Any]  # raises TypeError or ValueError on a wrong value


def _parse_bool(raw: Any, text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str) and (value := switch_value(raw)) is not None:
        return value
    raise TypeError


def _parse_int(raw: Any, text: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str):
        return int(raw)
    raise TypeError


def _parse_float(raw: Any, text: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if text and isinstance(raw, str):
        return float(raw)
    raise TypeError


def _parse_str(raw: Any, text: bool) -> str:
    if isinstance(raw, str):
        return raw
    raise TypeError


def _parse_strings(raw: Any, text: bool) -> tuple[str, ...]:
    """A list of non-empty strings; one string stands for a list of one."""
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, list) and all(isinstance(x, str) and x for x in raw):
        return tuple(raw)
    raise TypeError


def _parse_timestamp(raw: Any, text: bool) -> float:
    """A TOML offset date-time (or its ISO text) as unix time."""
    if isinstance(raw, dt.datetime):
        value = raw
    elif isinstance(raw, str):
        value = dt.datetime.fromisoformat(raw)
    else:
        raise TypeError
    if value.tzinfo is None:
        raise ValueError("no time zone")
    return value.timestamp()


STR = Kind("str", "a string", _parse_str)
INT = Kind("int", "an integer", _parse_int)
FLOAT = Kind("float", "a number", _parse_float)
BOOL = Kind("bool", "true or false", _parse_bool)
COLUMNS = Kind("list[str]", "a list of column names", _parse_strings)
PATHS = Kind("list[str]", "a list of file paths", _parse_strings)
IDENTITIES = Kind("list[str]", "a list of identities", _parse_strings)
TIMESTAMP = Kind(
    "date-time", "a date-time with a time zone, e.g. 2026-12-01T00:00:00Z", _parse_timestamp
)

# The kind of each annotation a key may have (`X | None`: the key may be absent).
_KIND_OF: dict[Any, Kind] = {
    str: STR,
    int: INT,
    float: FLOAT,
    bool: BOOL,
    str | None: STR,
    int | None: INT,
}


# -- checks: a value of the right type that is still wrong ---------------


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port between 0 and 65535"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _not_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _ident(v: str) -> str | None:
    return None if IDENTIFIER.match(v) else "must be a plain SQL identifier (letters, digits, _)"


def _one_of(*allowed: str) -> Check:
    said = ", ".join(f'"{a}"' for a in allowed[:-1]) + f' or "{allowed[-1]}"'
    return lambda v: None if v in allowed else f"must be {said}"


def tenant_problem(v: str) -> str | None:
    return (
        None
        if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", v)
        else ("must be 1-64 characters of letters, digits, '_', '.', '-'")
    )


def _columns(v: tuple[str, ...]) -> str | None:
    for x in v:
        if not IDENTIFIER.match(x):
            return f"{x!r} is not a plain column name"
    return None


def _column(v: str) -> str | None:
    return _columns((v,))


def _not_empty(v: str) -> str | None:
    return None if v else "must not be empty"


def key(
    default: Any, description: str, check: Check | None = None, kind: Kind | None = None
) -> Any:
    """Declare a config key as a dataclass field: its default (REQUIRED when
    it must be given), its description for the reference, an optional check,
    and its kind when the annotation alone does not tell (lists, date-times)."""
    meta = {"description": description, "check": check, "kind": kind}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# -- the declarations: one frozen dataclass per section ------------------


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """[database]: the source database, and how the wrapper reads and writes it."""

    flavor: str = key(
        "postgres",
        "source database kind: postgres, or mysql (MySQL and MariaDB)",
        lambda v: (
            None
            if v in ("postgres", "postgresql", "mysql", "mariadb")
            else 'must be "postgres" or "mysql" (MySQL and MariaDB)'
        ),
    )
    dsn: str = key(
        REQUIRED,
        "libpq connection string or URL of the source database; for mysql: "
        "mysql://user:password@host:port/database",
    )
    server_id: int = key(
        0,
        "mysql: the replica server_id the wrapper's binlog connection uses; unique among the "
        "server's replicas (0: derived from the store path, stable across restarts)",
        lambda v: None if 0 <= v < 2**32 else "must be between 0 and 4294967295",
    )
    resume: str = key(
        "auto",
        "mysql: how the binlog stream resumes after a restart. gtid: from the stored GTID "
        "state (MariaDB GTID position / MySQL executed set), which stays right on another "
        "server after a failover; position: from the stored binlog file and offset; auto: by "
        "GTID when the server has GTIDs (MariaDB always, MySQL with gtid_mode = ON) and the "
        "store holds a GTID state, else by position",
        _one_of("auto", "position", "gtid"),
    )
    retry_limit: int = key(
        10,
        "failed attempts in a row to reach the database or restart the stream (with capped "
        "backoff, each logged) before the wrapper gives up and exits; 0: retry forever",
        _not_negative,
    )
    slot: str = key("prism", "logical replication slot name", _ident)
    publication: str = key("prism", "publication name", _ident)
    writes_table: str = key(
        "prism_writes",
        "table (in schema public) where each write through the wrapper leaves its event id "
        "and request id; created when a table is writable, and published with the tables",
        _ident,
    )
    write_connections: int = key(4, "database connections for writes", _positive)
    write_retries: int = key(
        3,
        "how many times a write that hit a deadlock or serialization failure is retried",
        lambda v: None if 0 <= v <= 20 else "must be between 0 and 20",
    )
    binary: bool = key(
        True, "ask pgoutput for binary column values when every column type supports it"
    )
    status_interval_s: float = key(
        10.0,
        "how often an idle stream confirms its position to PostgreSQL, so WAL does not "
        "pile up behind quiet tables",
        _positive,
    )


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """[server] (the seed's [chorus]): the gRPC server drivers connect to."""

    listen_host: str = key("127.0.0.1", "address the gRPC server binds")
    listen_port: int = key(50051, "gRPC port (0: pick a free one)", _port)
    tenant_id: str = key(
        "",
        "the tenant of every table, when the config has no [[tenants]] entries",
        lambda v: None if v == "" else tenant_problem(v),
    )
    secret_file: str = key(
        "",
        "that tenant's secret file (32+ bytes, mode 600); make one with "
        "`prism-wrapper gen-secret PATH`",
    )
    insecure: bool = key(
        False, "serve gRPC in plaintext, without TLS (development only; logged as a warning)"
    )
    key_rotation_seconds: float = key(
        24 * 3600.0,
        "how often each tenant's key epoch advances (0: only on `prism-wrapper rotate-keys`)",
        lambda v: None if v == 0 or v >= 1 else "must be 0 or at least 1",
    )
    auth_failures_per_minute: int = key(
        10,
        "failed authentications allowed per client address and minute before that address "
        "is refused (RESOURCE_EXHAUSTED) for the rest of the minute",
        _positive,
    )
    session_ttl_seconds: float = key(
        24 * 3600.0,
        "how long a driver's session from Hello stays valid (drivers renew it on reconnect)",
        _positive,
    )
    grace_seconds: float = key(5.0, "how long SIGTERM waits for streams", _positive)
    # Each open call holds one of the server's threads (PRISM_GRPC_WORKERS,
    # 64) while it waits for a message: a call nobody writes on is ended.
    write_stream_idle_seconds: float = key(
        300.0,
        "how long a WriteStream call may send nothing before the wrapper ends it (a driver "
        "opens a new one with its next write)",
        _positive,
    )
    # 64 MB holds some 20,000 live changes of kB rows: the lag within which
    # drivers share one another's frames. At 512 MB the cache grew through
    # every burst of a fresh wrapper into memory the process had never
    # touched (248 MB more resident after one burst, 114 MB at 64), and
    # page faults were 13-16% of its CPU in a CDC burst (benchmark/README.md,
    # "Issue 12"); bootstraps spill to disk anyway.
    frame_cache_mb: float = key(
        64.0,
        "memory for sealed frames shared by every subscriber: what one driver was sent "
        "is sent to the next from here, not sealed again",
        lambda v: None if v >= 0 else "must be 0 or more",
    )
    frame_spill_mb: float = key(
        4096.0,
        "disk for sealed frames past frame_cache_mb (a bootstrap of millions of rows), "
        "in unnamed files beside the store that vanish with the process; 0: none, such "
        "frames are then sealed again for each driver",
        lambda v: None if v >= 0 else "must be 0 or more",
    )
    frame_spill_behind_mb: float = key(
        256.0,
        "memory in which frames bound for the spill (a bootstrap, a long catch-up) wait "
        "to be written, and are sent from, until it fills; 0: written as they are sealed",
        lambda v: None if v >= 0 else "must be 0 or more",
    )


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """[tls]: the gRPC server's certificate, and client certificates for mutual TLS."""

    cert_file: str = key("", "PEM certificate chain the gRPC server presents")
    key_file: str = key("", "PEM private key of that certificate (mode 600)")
    client_ca_file: str = key(
        "",
        "PEM CA bundle for client certificates: set it to require mutual TLS; a "
        "certificate's identity (CN or SAN) maps to a tenant by its client_identities",
    )


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """[store]: the wrapper's durable store of changes."""

    path: str = key("/var/lib/prism-wrapper/store.sqlite3", "the wrapper's durable store (SQLite)")
    retention_seconds: float = key(
        7 * 24 * 3600.0,
        "how long tombstones of deleted rows are kept for drivers that catch up; "
        "a driver away longer re-bootstraps from the store",
        _positive,
    )
    synchronous: str = key(
        "full", "SQLite synchronous mode: full or normal", _one_of("full", "normal")
    )
    commit_interval_ms: float = key(
        0.0,
        "group commit: longest a received transaction waits before its group is handed to "
        "the store writer; 0 (the default) hands it over as soon as the writer is free, and "
        "groups still grow while a commit is in flight, so a wait only adds latency",
        _not_negative,
    )


@dataclass(frozen=True, kw_only=True)
class VectorsConfig:
    """[vectors]: the dimensions vectors have on the wire."""

    dimension: int = key(
        0,
        "dimension of the tenant's keyed projection (0: keep each table's source dimension)",
        lambda v: None if v >= 0 else "must be 0 or positive",
    )
    text_dim: int = key(256, "dimension of the built-in text embedder", _positive)


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """[metrics]: the Prometheus endpoint (opt-in; see prism.wrapper.metrics)."""

    listen_port: int = key(
        0,
        "port of the Prometheus /metrics endpoint (0, the default: no endpoint); e.g. 9187",
        _port,
    )
    listen_host: str = key(
        "127.0.0.1",
        "address the metrics endpoint binds (0.0.0.0 to let a Prometheus on another host "
        "scrape it)",
    )


@dataclass(frozen=True, kw_only=True)
class TenantConfig:
    """A [[tenants]] entry: one tenant, its secrets and its drivers' identities."""

    id: str = key(REQUIRED, "the tenant's name, which its drivers give", tenant_problem)
    secret_files: tuple[str, ...] = key(
        REQUIRED,
        "the tenant's secret files (32+ bytes, mode 600), the current one first; the others "
        "are still accepted (secret rotation's overlap) until old_secrets_until",
        kind=PATHS,
    )
    client_identities: tuple[str, ...] = key(
        (),
        "client certificate identities (CN, or SAN URI prism:<name>) of the tenant's drivers; "
        "needs tls.client_ca_file",
        kind=IDENTITIES,
    )
    old_secrets_until: float | None = key(
        None,
        "when the secrets after the first stop being accepted: a date-time with a time zone, "
        "e.g. 2026-12-31T00:00:00Z (unset: never; held as unix time)",
        kind=TIMESTAMP,
    )


@dataclass(frozen=True, kw_only=True)
class TableConfig:
    """A [[tables]] entry: one replicated table and how its rows become vectors."""

    name: str = key(
        REQUIRED,
        'the table, "schema.table" (schema public when left out; for mysql, the dsn\'s database)',
    )
    vector_column: str | None = key(
        None, "column holding the row's vector (real[] or pgvector vector)", _column
    )
    vector_dim: int | None = key(
        None, "source dimension of vector_column; required with it", _positive
    )
    text_columns: tuple[str, ...] = key(
        (),
        "columns embedded with the built-in text embedder (instead of vector_column)",
        _columns,
        kind=COLUMNS,
    )
    text_repr: tuple[str, ...] = key(
        (), "columns shown as a match's text_repr (default: text_columns)", _columns, COLUMNS
    )
    key_columns: tuple[str, ...] = key(
        (), "the row key, only for tables without a primary key", _columns, COLUMNS
    )
    writable: bool = key(False, "drivers may write this table through the wrapper")
    writable_columns: tuple[str, ...] = key(
        (), "the columns drivers may write (empty: all); needs writable", _columns, COLUMNS
    )
    indexes: tuple[str, ...] = key(
        (),
        "columns every driver indexes for find() and filtered query() (equality and "
        "ranges), besides its own DriverConfig.indexes",
        _columns,
        COLUMNS,
    )
    tenant: str = key(
        "",
        "the tenant whose drivers see this table; required with several [[tenants]]",
        _not_empty,
    )
    vector_in_rows: bool = key(
        True,
        "false: drivers receive rows without vector_column, so the app node never holds "
        "raw embeddings (only the index's keyed-space vectors)",
    )

    @property
    def hidden_column(self) -> str | None:
        """The column left out of the rows drivers receive, if any."""
        return None if self.vector_in_rows else self.vector_column

    @property
    def has_vectors(self) -> bool:
        return self.vector_column is not None or bool(self.text_columns)

    @property
    def repr_columns(self) -> tuple[str, ...]:
        return self.text_repr or self.text_columns

    @property
    def schema_name(self) -> tuple[str, str]:
        schema, _, table = self.name.partition(".")
        return schema, table


# -- the registry, derived from the declarations -------------------------

SECTIONS: dict[str, type] = {
    "database": DatabaseConfig,
    "server": ServerConfig,
    "tls": TlsConfig,
    "store": StoreConfig,
    "vectors": VectorsConfig,
    "metrics": MetricsConfig,
}
ALIASES = {"chorus": "server"}  # the seed's spelling -> the section's name
ARRAYS: dict[str, type] = {"tenants": TenantConfig, "tables": TableConfig}


@dataclass(frozen=True)
class Field:
    """One declared key, as the parser and the reference see it."""

    section: str  # a section's name, or "tables"/"tenants" for [[array]] entries' keys
    key: str
    kind: Kind
    default: Any  # REQUIRED when it must be given
    description: str
    check: Check | None = None

    @property
    def dotted(self) -> str:
        if self.section in ARRAYS:
            return f"{self.section}[].{self.key}"
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"PRISM_{self.section.upper()}_{self.key.upper()}"

    def parse(self, raw: Any, where: str, text: bool) -> Any:
        """The value of `raw` in this key's type; a wrong type names `where`
        and the expected type."""
        try:
            return self.kind.parse(raw, text)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {self.kind.expected}, got {raw!r}") from None


def _declared(section: str, cls: type) -> tuple[Field, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "description" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with key(...)")
        kind = meta["kind"] or _KIND_OF[hints[f.name]]
        default = REQUIRED if f.default is dataclasses.MISSING else f.default
        out.append(Field(section, f.name, kind, default, meta["description"], meta["check"]))
    return tuple(out)


DECLARED: dict[str, tuple[Field, ...]] = {
    name: _declared(name, cls) for name, cls in (SECTIONS | ARRAYS).items()
}
FIELDS: tuple[Field, ...] = tuple(f for fields in DECLARED.values() for f in fields)


def _shown_default(f: Field) -> str:
    """A default as TOML spells it."""
    if f.default is REQUIRED:
        return "(required)"
    if f.default is None:
        return "(unset)"
    if isinstance(f.default, bool):
        return "true" if f.default else "false"
    if isinstance(f.default, str):
        return f'"{f.default}"'
    if isinstance(f.default, tuple):
        return "[" + ", ".join(f'"{x}"' for x in f.default) + "]"
    return repr(f.default)


_HEADINGS = {
    "server": "[server]  the gRPC server; [chorus], the seed's spelling, is accepted too (a key "
    "given in both is an error; PRISM_SERVER_<KEY> wins over PRISM_CHORUS_<KEY>)",
    "tenants": "[[tenants]]  one entry per tenant, instead of the server section's tenant_id and "
    "secret_file; no environment overrides",
    "tables": "[[tables]]  one entry per replicated table; no environment overrides. With "
    "none, every table with a primary key is captured (PostgreSQL: of every schema but the "
    "system ones; MySQL: of the dsn's database)",
}


def describe_fields() -> str:
    """Reference of every key, for `prism-wrapper config-reference` and the
    docs: derived from the declarations, so it lists every key there is,
    one line each (descriptions wrap under their column)."""
    lines = [
        "# Every prism-wrapper config key: name, type, default, description.",
        "# Environment variables PRISM_<SECTION>_<KEY> override the sections' keys.",
    ]
    indent = " " * 56
    for section, fields in DECLARED.items():
        heading = _HEADINGS.get(section, f"[[{section}]]" if section in ARRAYS else f"[{section}]")
        lines += ["", heading]
        for f in fields:
            first = f"{f.dotted:32} {f.kind.name:9} {_shown_default(f):12} "
            lines.append(
                textwrap.fill(
                    f.description, width=100, initial_indent=first, subsequent_indent=indent
                )
            )
    return "\n".join(lines)
