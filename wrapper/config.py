"""prism-wrapper's configuration: read once at the daemon's start.

TOML (the seed's keys: `[database] flavor, dsn`, `[chorus] listen_port,
tenant_id`, plus `[tls]`, `[store]`, `[vectors]`, `[[tenants]]` and
`[[tables]]`), then environment
variables `PRISM_<SECTION>_<KEY>` override scalar keys. Every key is declared
once below with its type, default and description; the result is a frozen,
validated WrapperConfig. A bad value stops the start with a ConfigError that
names the key and the fix.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prism.fabric.tablenames import qualify
from prism.wrapper.errors import ConfigError
from prism.wrapper.sources.mysql.dsn import parse_mysql_dsn

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True)
class Field:
    section: str
    key: str
    type: type
    default: Any
    description: str
    check: Callable[[Any], str | None] | None = None  # returns an error message or None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"PRISM_{self.section.upper()}_{self.key.upper()}"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port between 0 and 65535"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _ident(v: str) -> str | None:
    return None if _IDENT.match(v) else "must be a plain SQL identifier (letters, digits, _)"


def _tenant(v: str) -> str | None:
    return (
        None
        if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", v)
        else ("must be 1-64 characters of letters, digits, '_', '.', '-'")
    )


REQUIRED = object()

FIELDS: tuple[Field, ...] = (
    Field(
        "database",
        "flavor",
        str,
        "postgres",
        "source database kind: postgres, or mysql (MySQL and MariaDB)",
        lambda v: (
            None
            if v in ("postgres", "postgresql", "mysql", "mariadb")
            else 'must be "postgres" or "mysql" (MySQL and MariaDB)'
        ),
    ),
    Field(
        "database",
        "dsn",
        str,
        REQUIRED,
        "libpq connection string or URL of the source database; for mysql: "
        "mysql://user:password@host:port/database",
    ),
    Field(
        "database",
        "server_id",
        int,
        0,
        "mysql: the replica server_id the wrapper's binlog connection uses; unique among the "
        "server's replicas (0: derived from the store path, stable across restarts)",
        lambda v: None if 0 <= v < 2**32 else "must be between 0 and 4294967295",
    ),
    Field(
        "database",
        "resume",
        str,
        "auto",
        "mysql: how the binlog stream resumes after a restart. gtid: from the stored GTID "
        "state (MariaDB GTID position / MySQL executed set), which stays right on another "
        "server after a failover; position: from the stored binlog file and offset; auto: by "
        "GTID when the server has GTIDs (MariaDB always, MySQL with gtid_mode = ON) and the "
        "store holds a GTID state, else by position",
        lambda v: (
            None if v in ("auto", "position", "gtid") else 'must be "auto", "position" or "gtid"'
        ),
    ),
    Field(
        "database",
        "retry_limit",
        int,
        10,
        "failed attempts in a row to reach the database or restart the stream (with capped "
        "backoff, each logged) before the wrapper gives up and exits; 0: retry forever",
        lambda v: None if v >= 0 else "must be 0 or more",
    ),
    Field("database", "slot", str, "prism", "logical replication slot name", _ident),
    Field("database", "publication", str, "prism", "publication name", _ident),
    Field(
        "database",
        "writes_table",
        str,
        "prism_writes",
        "table (in schema public) where each write through the wrapper leaves its event id "
        "and request id; created when a table is writable, and published with the tables",
        _ident,
    ),
    Field("database", "write_connections", int, 4, "database connections for writes", _positive),
    Field(
        "database",
        "write_retries",
        int,
        3,
        "how many times a write that hit a deadlock or serialization failure is retried",
        lambda v: None if 0 <= v <= 20 else "must be between 0 and 20",
    ),
    Field(
        "database",
        "binary",
        bool,
        True,
        "ask pgoutput for binary column values when every column type supports it",
    ),
    Field(
        "database",
        "status_interval_s",
        float,
        10.0,
        "how often an idle stream confirms its position to PostgreSQL, so WAL does not "
        "pile up behind quiet tables",
        _positive,
    ),
    Field("chorus", "listen_host", str, "127.0.0.1", "address the gRPC server binds"),
    Field("chorus", "listen_port", int, 50051, "gRPC port (0: pick a free one)", _port),
    Field(
        "chorus",
        "tenant_id",
        str,
        "",
        "the tenant of every table, when the config has no [[tenants]] entries",
        lambda v: None if v == "" else _tenant(v),
    ),
    Field(
        "chorus",
        "secret_file",
        str,
        "",
        "that tenant's secret file (32+ bytes, mode 600); make one with "
        "`prism-wrapper gen-secret PATH`",
    ),
    Field(
        "chorus",
        "insecure",
        bool,
        False,
        "serve gRPC in plaintext, without TLS (development only; logged as a warning)",
    ),
    Field(
        "chorus",
        "key_rotation_seconds",
        float,
        24 * 3600.0,
        "how often each tenant's key epoch advances (0: only on `prism-wrapper rotate-keys`)",
        lambda v: None if v == 0 or v >= 1 else "must be 0 or at least 1",
    ),
    Field(
        "chorus",
        "auth_failures_per_minute",
        int,
        10,
        "failed authentications allowed per client address and minute before that address "
        "is refused (RESOURCE_EXHAUSTED) for the rest of the minute",
        _positive,
    ),
    Field(
        "chorus",
        "session_ttl_seconds",
        float,
        24 * 3600.0,
        "how long a driver's session from Hello stays valid (drivers renew it on reconnect)",
        _positive,
    ),
    Field("tls", "cert_file", str, "", "PEM certificate chain the gRPC server presents"),
    Field("tls", "key_file", str, "", "PEM private key of that certificate (mode 600)"),
    Field(
        "tls",
        "client_ca_file",
        str,
        "",
        "PEM CA bundle for client certificates: set it to require mutual TLS; a "
        "certificate's identity (CN or SAN) maps to a tenant by [[tenants]].client_identities",
    ),
    Field("chorus", "grace_seconds", float, 5.0, "how long SIGTERM waits for streams", _positive),
    Field(
        "store",
        "path",
        str,
        "/var/lib/prism-wrapper/store.sqlite3",
        "the wrapper's durable store (SQLite)",
    ),
    Field(
        "store",
        "retention_seconds",
        float,
        7 * 24 * 3600.0,
        "how long tombstones of deleted rows are kept for drivers that catch up; "
        "a driver away longer re-bootstraps from the store",
        _positive,
    ),
    Field(
        "store",
        "synchronous",
        str,
        "full",
        "SQLite synchronous mode: full or normal",
        lambda v: None if v in ("full", "normal") else 'must be "full" or "normal"',
    ),
    Field(
        "store",
        "commit_interval_ms",
        float,
        5.0,
        "group commit: longest a received transaction waits before its group is handed to "
        "the store writer; 0 hands it over as soon as the writer is free (groups still grow "
        "while a commit is in flight)",
        lambda v: None if v >= 0 else "must be 0 or more",
    ),
    Field(
        "vectors",
        "dimension",
        int,
        0,
        "dimension of the tenant's keyed projection (0: keep each table's source dimension)",
        lambda v: None if v >= 0 else "must be 0 or positive",
    ),
    Field("vectors", "text_dim", int, 256, "dimension of the built-in text embedder", _positive),
)

_BY_DOTTED = {f.dotted: f for f in FIELDS}


@dataclass(frozen=True)
class TenantConfig:
    id: str
    # The first file is the current secret; the others are still accepted
    # (secret rotation's overlap) until old_secrets_until, if set.
    secret_files: tuple[str, ...]
    client_identities: tuple[str, ...] = ()  # mTLS certificate CN or SAN values
    old_secrets_until: float | None = None  # unix time


@dataclass(frozen=True)
class TableConfig:
    name: str  # qualified: schema.table
    vector_column: str | None = None
    vector_dim: int | None = None  # source dimension of vector_column
    text_columns: tuple[str, ...] = ()  # embedded with the text embedder
    text_repr: tuple[str, ...] = ()  # columns shown as a match's text_repr
    key_columns: tuple[str, ...] = ()  # only for tables without a primary key
    writable: bool = False  # drivers may write this table through the wrapper
    writable_columns: tuple[str, ...] = ()  # which columns (empty: all)
    tenant: str = ""  # the tenant whose drivers see this table
    # False: drivers get rows without vector_column, so the app node never
    # holds raw embeddings (only the index's keyed-space vectors).
    vector_in_rows: bool = True

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


@dataclass(frozen=True)
class WrapperConfig:
    values: Mapping[str, Any]
    tables: tuple[TableConfig, ...]
    tenants: tuple[TenantConfig, ...] = ()
    source_path: str = "<dict>"

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted]

    @property
    def dsn(self) -> str:
        return str(self.values["database.dsn"])

    @property
    def flavor(self) -> str:
        """ "postgres" or "mysql" (MySQL and MariaDB)."""
        return "mysql" if self.values["database.flavor"] in ("mysql", "mariadb") else "postgres"

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        return None

    def tables_of(self, tenant_id: str) -> tuple[TableConfig, ...]:
        return tuple(t for t in self.tables if t.tenant == tenant_id)

    @property
    def insecure(self) -> bool:
        return bool(self.values["chorus.insecure"])

    @property
    def store_path(self) -> Path:
        return Path(self.values["store.path"])

    @property
    def writes_table(self) -> str | None:
        """The qualified marker table of writes, when any table is writable."""
        if not any(t.writable for t in self.tables):
            return None
        return qualify(str(self.values["database.writes_table"]))

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)

    def table_dim(self, t: TableConfig) -> int:
        """The dimension a table's vectors have after the tenant's keyed
        projection: vectors.dimension, or the source dimension when 0."""
        if not t.has_vectors:
            return 0
        return int(self.values["vectors.dimension"]) or self.source_dim(t)

    def source_dim(self, t: TableConfig) -> int:
        if t.vector_column is not None:
            assert t.vector_dim is not None
            return t.vector_dim
        return int(self.values["vectors.text_dim"])


def _coerce(f: Field, raw: Any, origin: str) -> Any:
    where = f"{f.dotted} (from {origin})"
    if f.type is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return raw.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if f.type is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        try:
            return int(raw) if isinstance(raw, int | str) else _bad(where, "an integer", raw)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if f.type is float:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            return (
                float(raw) if isinstance(raw, int | float | str) else _bad(where, "a number", raw)
            )
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    return raw


def _bad(where: str, expected: str, raw: Any) -> Any:
    raise ConfigError(f"{where}: expected {expected}, got {raw!r}")


def _str_list(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{where}: expected a list of column names, got {raw!r}")
    for x in raw:
        if not _IDENT.match(x):
            raise ConfigError(f"{where}: {x!r} is not a plain column name")
    return tuple(raw)


_TABLE_KEYS = {
    "name",
    "vector_column",
    "vector_dim",
    "text_columns",
    "text_repr",
    "key_columns",
    "writable",
    "writable_columns",
    "tenant",
    "vector_in_rows",
}
_TENANT_KEYS = {"id", "secret_files", "client_identities", "old_secrets_until"}


def _check_entry(raw: Any, where: str, array: str, known: set[str]) -> None:
    """An [[array]] entry is a table of known keys only."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a [[{array}]] entry")
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")


def _bool(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    return raw


def _table(raw: Any, i: int) -> TableConfig:
    where = f"tables[{i}]"
    _check_entry(raw, where, "tables", _TABLE_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{where}.name: required, e.g. name = "public.items"')
    name = qualify(name)
    schema, _, table = name.partition(".")
    if not (_IDENT.match(schema) and _IDENT.match(table)):
        raise ConfigError(f"{where}.name: {name!r} is not schema.table of plain identifiers")
    vcol = raw.get("vector_column")
    if vcol is not None and (not isinstance(vcol, str) or not _IDENT.match(vcol)):
        raise ConfigError(f"{where}.vector_column: {vcol!r} is not a plain column name")
    text_cols = _str_list(raw.get("text_columns"), f"{where}.text_columns")
    if vcol and text_cols:
        raise ConfigError(f"{where} ({name}): set either vector_column or text_columns, not both")
    if raw.get("vector_in_rows") is False and vcol is None:
        raise ConfigError(
            f"{where}.vector_in_rows ({name}): only applies to a table with vector_column"
        )
    if raw.get("writable_columns") and not raw.get("writable"):
        raise ConfigError(
            f"{where}.writable_columns ({name}): set writable = true as well, or drop it"
        )
    vdim = raw.get("vector_dim")
    if vcol is not None:
        if not isinstance(vdim, int) or isinstance(vdim, bool) or vdim <= 0:
            raise ConfigError(
                f"{where}.vector_dim ({name}): required with vector_column, the dimension of "
                f"{vcol!r}, e.g. vector_dim = 384"
            )
    elif vdim is not None:
        raise ConfigError(f"{where}.vector_dim ({name}): only meaningful with vector_column")
    return TableConfig(
        name=name,
        vector_column=vcol,
        vector_dim=vdim,
        text_columns=text_cols,
        text_repr=_str_list(raw.get("text_repr"), f"{where}.text_repr"),
        key_columns=_str_list(raw.get("key_columns"), f"{where}.key_columns"),
        writable=_bool(raw.get("writable", False), f"{where}.writable"),
        writable_columns=_str_list(raw.get("writable_columns"), f"{where}.writable_columns"),
        tenant=_opt_str(raw.get("tenant"), f"{where}.tenant"),
        vector_in_rows=_bool(raw.get("vector_in_rows", True), f"{where}.vector_in_rows"),
    )


def _opt_str(raw: Any, where: str) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw


def _strings(raw: Any, where: str, what: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise ConfigError(f"{where}: expected a list of {what}, got {raw!r}")
    return tuple(raw)


def _timestamp(raw: Any, where: str) -> float | None:
    import datetime as dt

    if raw is None:
        return None
    if isinstance(raw, dt.datetime):  # a TOML offset date-time
        value = raw
    elif isinstance(raw, str):
        try:
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            value = None
    else:
        value = None
    if value is None or value.tzinfo is None:
        raise ConfigError(
            f"{where}: expected a date-time with a time zone, e.g. 2026-12-01T00:00:00Z, "
            f"got {raw!r}"
        )
    return value.timestamp()


def _tenant_entry(raw: Any, i: int) -> TenantConfig:
    where = f"tenants[{i}]"
    _check_entry(raw, where, "tenants", _TENANT_KEYS)
    tid = raw.get("id")
    if not isinstance(tid, str) or (problem := _tenant(tid)):
        raise ConfigError(
            f"{where}.id: {tid!r} {problem if isinstance(tid, str) else 'is required'}"
        )
    if "secret_files" not in raw:
        raise ConfigError(
            f'{where}.secret_files ({tid}): required, e.g. secret_files = ["/etc/prism/{tid}.key"]'
        )
    secret_files = _strings(raw["secret_files"], f"{where}.secret_files", "file paths")
    if not secret_files:
        raise ConfigError(
            f"{where}.secret_files ({tid}): expected a list of file paths with at least one "
            "(the current secret first), got []"
        )
    return TenantConfig(
        id=tid,
        secret_files=secret_files,
        client_identities=_strings(
            raw.get("client_identities", []), f"{where}.client_identities", "identities"
        )
        if raw.get("client_identities")
        else (),
        old_secrets_until=_timestamp(raw.get("old_secrets_until"), f"{where}.old_secrets_until"),
    )


def _tenants(
    data: Mapping[str, Any], values: Mapping[str, Any], origin: str
) -> tuple[TenantConfig, ...]:
    raw = data.get("tenants")
    single = values["chorus.tenant_id"]
    if raw is None:
        if not single or not values["chorus.secret_file"]:
            raise ConfigError(
                f"no tenant in {origin}: set chorus.tenant_id and chorus.secret_file, or add "
                '[[tenants]] entries (id = "...", secret_files = ["..."])'
            )
        return (TenantConfig(id=single, secret_files=(values["chorus.secret_file"],)),)
    if single or values["chorus.secret_file"]:
        raise ConfigError(
            f"{origin}: chorus.tenant_id/secret_file and [[tenants]] both given; keep one"
        )
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"tenants in {origin}: expected [[tenants]] entries")
    tenants = tuple(_tenant_entry(t, i) for i, t in enumerate(raw))
    ids = [t.id for t in tenants]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"tenants: {ids} lists a tenant twice")
    seen: dict[str, str] = {}
    for t in tenants:
        for ident in t.client_identities:
            if ident in seen:
                raise ConfigError(
                    f"tenants: client identity {ident!r} maps to both {seen[ident]!r} and {t.id!r}"
                )
            seen[ident] = t.id
    return tenants


def config_from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, origin: str = "<dict>"
) -> WrapperConfig:
    """Validate a parsed TOML document (plus environment overrides)."""
    env = os.environ if env is None else env
    known_sections = {f.section for f in FIELDS} | {"tables", "tenants"}
    for section, body in data.items():
        if section not in known_sections:
            raise ConfigError(
                f"unknown section [{section}] in {origin}; known: {sorted(known_sections)}"
            )
        if section in ("tables", "tenants"):
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] in {origin} must be a table of keys")
        for key in body:
            if f"{section}.{key}" not in _BY_DOTTED:
                known = sorted(f.key for f in FIELDS if f.section == section)
                raise ConfigError(f"unknown key {section}.{key} in {origin}; known: {known}")
    values: dict[str, Any] = {}
    for f in FIELDS:
        raw: Any = data.get(f.section, {}).get(f.key, REQUIRED)
        src = origin
        if f.env in env:
            raw, src = env[f.env], f"environment {f.env}"
        if raw is REQUIRED:
            if f.default is REQUIRED:
                raise ConfigError(
                    f"{f.dotted} is required ({f.description}); set it in the [{f.section}] "
                    f"section or with {f.env}"
                )
            raw, src = f.default, "default"
        value = _coerce(f, raw, src)
        if f.check is not None and (problem := f.check(value)):
            raise ConfigError(f"{f.dotted} = {value!r} (from {src}): {problem}")
        values[f.dotted] = value
    raw_tables = data.get("tables", [])
    if not isinstance(raw_tables, list) or not raw_tables:
        raise ConfigError(
            f"no tables configured in {origin}: add at least one [[tables]] entry with "
            'name = "schema.table"'
        )
    tables = tuple(_table(t, i) for i, t in enumerate(raw_tables))
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ConfigError(f"tables: {names} lists a table twice")
    tenants = _tenants(data, values, origin)
    ids = [t.id for t in tenants]
    owned = []
    for i, t in enumerate(tables):
        if not t.tenant:
            if len(tenants) > 1:
                raise ConfigError(
                    f"tables[{i}].tenant ({t.name}): required with several tenants; one of {ids}"
                )
            t = replace(t, tenant=ids[0])
        elif t.tenant not in ids:
            raise ConfigError(f"tables[{i}].tenant ({t.name}): {t.tenant!r} is not one of {ids}")
        owned.append(t)
    tables = tuple(owned)
    if not values["chorus.insecure"] and not (values["tls.cert_file"] and values["tls.key_file"]):
        raise ConfigError(
            "tls.cert_file and tls.key_file are required unless chorus.insecure = true; "
            "make development certificates with `prism-wrapper gen-certs DIR`"
        )
    if values["tls.client_ca_file"] and values["chorus.insecure"]:
        raise ConfigError("tls.client_ca_file needs TLS: drop chorus.insecure = true")
    bound = [t.id for t in tenants if t.client_identities]
    if bound and not values["tls.client_ca_file"]:
        raise ConfigError(
            f"tenants {bound} list client_identities, which only a client certificate can "
            "present: set tls.client_ca_file to the CA that signs the drivers' certificates"
        )
    if values["database.flavor"] in ("mysql", "mariadb"):
        tables = _mysql_tables(tables, raw_tables, str(values["database.dsn"]))
    cfg = WrapperConfig(values=values, tables=tables, tenants=tenants, source_path=origin)
    dim = int(values["vectors.dimension"])
    for t in tables:
        if t.has_vectors and dim > cfg.source_dim(t):
            raise ConfigError(
                f"vectors.dimension = {dim} is larger than table {t.name}'s source dimension "
                f"{cfg.source_dim(t)}; the projection can only keep or reduce dimensions"
            )
    return cfg


def _mysql_tables(
    tables: tuple[TableConfig, ...], raw: list[Any], dsn: str
) -> tuple[TableConfig, ...]:
    """MySQL has databases, not schemas: an unqualified table name is in the
    dsn's database. Writes through the wrapper are PostgreSQL-only so far."""
    database = parse_mysql_dsn(dsn).database
    out = []
    for i, t in enumerate(tables):
        if "." not in str(raw[i].get("name", "")):
            t = replace(t, name=f"{database}.{t.schema_name[1]}")
        if t.writable:
            raise ConfigError(
                f"tables[{i}].writable ({t.name}): writes through the wrapper are not "
                'supported with database.flavor = "mysql" yet; remove writable = true'
            )
        out.append(t)
    return tuple(out)


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> WrapperConfig:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc}") from None
    return config_from_mapping(data, env, origin=str(p))


def describe_fields() -> str:
    """Reference of every key, for `prism-wrapper config-reference` and the docs."""
    lines = []
    for f in FIELDS:
        default = "(required)" if f.default is REQUIRED else repr(f.default)
        lines.append(f"{f.dotted:32} {f.type.__name__:6} {default:40} {f.description}")
    return "\n".join(lines)
