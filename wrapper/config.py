"""prism-wrapper's configuration: read once at the daemon's start.

TOML sections `[database]`, `[server]` (the gRPC server; `[chorus]` is the
seed's spelling of it and still accepted), `[tls]`, `[store]`, `[vectors]`,
and the arrays `[[tenants]]` and `[[tables]]`. Environment variables
`PRISM_<SECTION>_<KEY>` override the sections' keys; for the server section
both `PRISM_SERVER_<KEY>` and `PRISM_CHORUS_<KEY>` work, and PRISM_SERVER_*
wins when both are set. The result is a frozen WrapperConfig of frozen
section objects (`cfg.database.slot`, `cfg.server.listen_port`,
`cfg.store.path`, `table.vector_dim`); nothing else reads the raw mapping.
A bad value stops the start with a ConfigError that names the key (as the
operator spelled it), the expected type or the fix.

Every key is declared once, in prism.wrapper.config_keys, as a field of its
section's dataclass; this module reads a document against those declarations
and adds the checks that span keys (vector_dim with vector_column, TLS unless
insecure, tenants and their tables).

Why plain dataclasses rather than pydantic-settings: the wrapper would gain
pydantic and its compiled core as runtime dependencies on the DB node for
a few dozen keys, and buy little: its env source spells nested keys with a
delimiter (PRISM_SERVER__LISTEN_PORT), not the documented
PRISM_<SECTION>_<KEY>, the `[chorus]` alias and "same key in both spellings"
need custom sources anyway, and its ValidationError text would have to be
rewritten to name keys as `tables[0].vector_dim (public.items)`. The
checks that span keys would stay plain code either way.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prism.fabric.switchwords import is_on
from prism.fabric.tablenames import qualify
from prism.wrapper.config_keys import (
    ALIASES,
    ARRAYS,
    DECLARED,
    FIELDS,
    IDENTIFIER,
    REQUIRED,
    SECTIONS,
    DatabaseConfig,
    Field,
    MetricsConfig,
    ServerConfig,
    StoreConfig,
    TableConfig,
    TenantConfig,
    TlsConfig,
    VectorsConfig,
    describe_fields,
    tenant_problem,
)
from prism.wrapper.errors import ConfigError
from prism.wrapper.sources.mysql.dsn import parse_mysql_dsn

__all__ = [
    "FIELDS",
    "DatabaseConfig",
    "Field",
    "MetricsConfig",
    "ServerConfig",
    "StoreConfig",
    "TableConfig",
    "TenantConfig",
    "TlsConfig",
    "VectorsConfig",
    "WrapperConfig",
    "config_from_mapping",
    "describe_fields",
    "load_config",
]


@dataclass(frozen=True)
class WrapperConfig:
    database: DatabaseConfig
    server: ServerConfig
    tls: TlsConfig
    store: StoreConfig
    vectors: VectorsConfig
    tables: tuple[TableConfig, ...]
    tenants: tuple[TenantConfig, ...] = ()
    source_path: str = "<dict>"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # No [[tables]] entry: every table with a primary key is captured, as
    # Debezium does by default. `tables` is empty until the daemon resolves
    # it at start (prism.wrapper.tablelist), then holds what was found.
    capture_all: bool = False

    @property
    def dsn(self) -> str:
        return self.database.dsn

    @property
    def flavor(self) -> str:
        """ "postgres" or "mysql" (MySQL and MariaDB)."""
        return "mysql" if self.database.flavor in ("mysql", "mariadb") else "postgres"

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        for t in self.tenants:
            if t.id == tenant_id:
                return t
        return None

    def tables_of(self, tenant_id: str) -> tuple[TableConfig, ...]:
        return tuple(t for t in self.tables if t.tenant == tenant_id)

    @property
    def insecure(self) -> bool:
        return self.server.insecure

    @property
    def store_path(self) -> Path:
        return Path(self.store.path)

    @property
    def writes_table(self) -> str | None:
        """The qualified marker table of writes, when any table is writable."""
        if not any(t.writable for t in self.tables):
            return None
        return qualify(self.database.writes_table)

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
        return self.vectors.dimension or self.source_dim(t)

    def source_dim(self, t: TableConfig) -> int:
        if t.vector_column is not None:
            assert t.vector_dim is not None
            return t.vector_dim
        return self.vectors.text_dim


# -- reading ---------------------------------------------------------------


def _spellings(section: str) -> tuple[str, ...]:
    """The names a section may be given by, its own first."""
    return (section, *(alias for alias, s in ALIASES.items() if s == section))


def _check_sections(data: Mapping[str, Any], origin: str) -> None:
    """Only known sections, each a table of known keys."""
    known_sections = set(SECTIONS) | set(ALIASES) | set(ARRAYS)
    for section, body in data.items():
        if section not in known_sections:
            raise ConfigError(
                f"unknown section [{section}] in {origin}; known: {sorted(known_sections)}"
            )
        if section in ARRAYS:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] in {origin} must be a table of keys")
        known = [f.key for f in DECLARED[ALIASES.get(section, section)]]
        for k in body:
            if k not in known:
                raise ConfigError(f"unknown key {section}.{k} in {origin}; known: {sorted(known)}")


def _read_section(
    section: str, data: Mapping[str, Any], env: Mapping[str, str], origin: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """One section's values (file, then environment, then default), and the
    name each key was given by, for later messages ("chorus.insecure")."""
    spellings = _spellings(section)
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for f in DECLARED[section]:
        given = [s for s in spellings if f.key in data.get(s, {})]
        if len(given) > 1:
            raise ConfigError(
                f"{given[0]}.{f.key} and {given[1]}.{f.key} are both given in {origin}; keep one "
                f"([{given[1]}] is the seed's spelling of [{given[0]}])"
            )
        name, raw, src = f.dotted, REQUIRED, origin
        if given:
            name, raw = f"{given[0]}.{f.key}", data[given[0]][f.key]
        for s in spellings:  # PRISM_SERVER_* wins over PRISM_CHORUS_*
            var = f"PRISM_{s.upper()}_{f.key.upper()}"
            if var in env:
                name, raw, src = f"{s}.{f.key}", env[var], f"environment {var}"
                break
        if raw is REQUIRED:
            if f.default is REQUIRED:
                raise ConfigError(
                    f"{f.dotted} is required ({f.description}); set it in the [{f.section}] "
                    f"section or with {f.env}"
                )
            raw, src = f.default, "default"
        value = f.parse(raw, f"{name} (from {src})", text=True)
        if f.check is not None and (problem := f.check(value)):
            raise ConfigError(f"{name} = {value!r} (from {src}): {problem}")
        values[f.key] = value
        names[f.dotted] = name
    return values, names


def _check_entry(raw: Any, where: str, array: str) -> None:
    """An [[array]] entry is a table of known keys only."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a [[{array}]] entry")
    known = {f.key for f in DECLARED[array]}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known keys: {sorted(known)}")


def _entry_values(array: str, raw: Mapping[str, Any], where: str, label: str) -> dict[str, Any]:
    """The typed values of an entry's keys except its name (given ones only;
    the dataclass fills in defaults). Messages read `tables[0].key (label)`."""
    values: dict[str, Any] = {}
    for f in DECLARED[array][1:]:
        if raw.get(f.key) is None:
            continue
        at = f"{where}.{f.key} ({label})"
        value = f.parse(raw[f.key], at, text=False)
        if f.check is not None and (problem := f.check(value)):
            raise ConfigError(f"{at} = {raw[f.key]!r}: {problem}")
        values[f.key] = value
    return values


def _entry_name(array: str, raw: Mapping[str, Any], where: str, example: str) -> str:
    """An entry's first key, which names it in every later message."""
    f = DECLARED[array][0]
    if raw.get(f.key) in (None, ""):
        raise ConfigError(f"{where}.{f.key}: required, {example}")
    name: str = f.parse(raw[f.key], f"{where}.{f.key}", text=False)
    return name


def _table(raw: Any, i: int) -> TableConfig:
    where = f"tables[{i}]"
    _check_entry(raw, where, "tables")
    name = _entry_name("tables", raw, where, 'e.g. name = "public.items"')
    name = qualify(name)
    schema, _, table = name.partition(".")
    if not (IDENTIFIER.match(schema) and IDENTIFIER.match(table)):
        raise ConfigError(f"{where}.name: {name!r} is not schema.table of plain identifiers")
    t = TableConfig(name=name, **_entry_values("tables", raw, where, name))
    if t.vector_column and t.text_columns:
        raise ConfigError(f"{where} ({name}): set either vector_column or text_columns, not both")
    if not t.vector_in_rows and t.vector_column is None:
        raise ConfigError(
            f"{where}.vector_in_rows ({name}): only applies to a table with vector_column"
        )
    if t.writable_columns and not t.writable:
        raise ConfigError(
            f"{where}.writable_columns ({name}): set writable = true as well, or drop it"
        )
    if t.vector_column is not None and t.vector_dim is None:
        raise ConfigError(
            f"{where}.vector_dim ({name}): required with vector_column, the dimension of "
            f"{t.vector_column!r}, e.g. vector_dim = 384"
        )
    if t.vector_column is None and t.vector_dim is not None:
        raise ConfigError(f"{where}.vector_dim ({name}): only meaningful with vector_column")
    return t


def _tenant_entry(raw: Any, i: int) -> TenantConfig:
    where = f"tenants[{i}]"
    _check_entry(raw, where, "tenants")
    tid = _entry_name("tenants", raw, where, 'e.g. id = "shop"')
    if problem := tenant_problem(tid):
        raise ConfigError(f"{where}.id: {tid!r} {problem}")
    if "secret_files" not in raw:
        raise ConfigError(
            f'{where}.secret_files ({tid}): required, e.g. secret_files = ["/etc/prism/{tid}.key"]'
        )
    t = TenantConfig(id=tid, **_entry_values("tenants", raw, where, tid))
    if not t.secret_files:
        raise ConfigError(
            f"{where}.secret_files ({tid}): expected a list of file paths with at least one "
            "(the current secret first), got []"
        )
    return t


def _tenants(
    data: Mapping[str, Any], server: ServerConfig, names: Mapping[str, str], origin: str
) -> tuple[TenantConfig, ...]:
    raw = data.get("tenants")
    if raw is None:
        if not server.tenant_id or not server.secret_file:
            raise ConfigError(
                f"no tenant in {origin}: set {names['server.tenant_id']} and "
                f"{names['server.secret_file']}, or add [[tenants]] entries "
                '(id = "...", secret_files = ["..."])'
            )
        return (TenantConfig(id=server.tenant_id, secret_files=(server.secret_file,)),)
    if server.tenant_id or server.secret_file:
        given = names["server.tenant_id" if server.tenant_id else "server.secret_file"]
        raise ConfigError(f"{origin}: {given} and [[tenants]] both given; keep one")
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


def _given(data: Mapping[str, Any], env: Mapping[str, str], section: str, key: str) -> Any:
    """A section key's raw value from the file or the environment, under any
    spelling of the section; None when it is not given."""
    for s in _spellings(section):
        var = f"PRISM_{s.upper()}_{key.upper()}"
        if var in env:
            return env[var]
    for s in _spellings(section):
        body = data.get(s)
        if isinstance(body, dict) and key in body:
            return body[key]
    return None


def _missing_keys(data: Mapping[str, Any], env: Mapping[str, str], origin: str) -> None:
    """Every required key that is missing, reported at once with lines to
    paste: a first config (the seed's minimal one: [database] flavor and
    dsn, [chorus] listen_port and tenant_id) then fails once, not once per
    key. Values of the wrong type are left to the per-key checks."""
    server = next((s for s in _spellings("server") if s in data), "server")
    tenant = _given(data, env, "server", "tenant_id")
    tenant = tenant if isinstance(tenant, str) and tenant else "shop"
    missing: dict[str, list[str]] = {}  # section -> lines to paste, "key = value  # why"
    notes: dict[str, str] = {}
    if not _given(data, env, "database", "dsn"):
        missing.setdefault("database", []).append(
            'dsn = "postgresql://prism@127.0.0.1:5432/shop"   # or mysql://user:pw@host:3306/db'
        )
    if "tenants" not in data:
        if not _given(data, env, "server", "tenant_id"):
            missing.setdefault(server, []).append(
                f'tenant_id = "{tenant}"   # the tenant its drivers give'
            )
        if not _given(data, env, "server", "secret_file"):
            path = f"/etc/prism-wrapper/{tenant}.secret"
            missing.setdefault(server, []).append(
                f'secret_file = "{path}"   # make it: prism-wrapper gen-secret {path}'
            )
    insecure = _given(data, env, "server", "insecure")
    if not (insecure is True or is_on(str(insecure))):
        tls = []
        if not _given(data, env, "tls", "cert_file"):
            tls.append(
                'cert_file = "/etc/prism-wrapper/tls/server.pem"   # development PKI: '
                "prism-wrapper gen-certs /etc/prism-wrapper/tls --host <this host>"
            )
        if not _given(data, env, "tls", "key_file"):
            tls.append('key_file = "/etc/prism-wrapper/tls/server.key"')
        if tls:
            missing["tls"] = tls
            notes["tls"] = (
                f"or, for development only, plaintext gRPC: insecure = true in [{server}]"
            )
    keys = [f"{s}.{line.split(' ', 1)[0]}" for s, lines in missing.items() for line in lines]
    if not keys:
        return
    parts = [
        f"{origin}: missing required key{'s' if len(keys) > 1 else ''} {', '.join(keys)}; "
        "add (the values are examples):"
    ]
    for section, lines in missing.items():
        note = f"   # {notes[section]}" if section in notes else ""
        head = f"# in your [{section}] section{note}" if section in data else f"[{section}]{note}"
        parts.append("\n".join(["", head, *lines]))
    raise ConfigError("\n".join(parts))


def config_from_mapping(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, origin: str = "<dict>"
) -> WrapperConfig:
    """Validate a parsed TOML document (plus environment overrides)."""
    env = os.environ if env is None else env
    _check_sections(data, origin)
    _missing_keys(data, env, origin)
    sections: dict[str, Any] = {}
    names: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        values, spelled = _read_section(section, data, env, origin)
        sections[section] = cls(**values)
        names |= spelled
    server: ServerConfig = sections["server"]
    tls: TlsConfig = sections["tls"]
    raw_tables = data.get("tables", [])
    if not isinstance(raw_tables, list):
        raise ConfigError(f"tables in {origin}: expected [[tables]] entries")
    tables = tuple(_table(t, i) for i, t in enumerate(raw_tables))
    table_names = [t.name for t in tables]
    if len(set(table_names)) != len(table_names):
        raise ConfigError(f"tables: {table_names} lists a table twice")
    tenants = _tenants(data, server, names, origin)
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
    if not tables and len(tenants) > 1:
        raise ConfigError(
            f"no [[tables]] in {origin}, and {len(tenants)} tenants: list the tables, each "
            'with its tenant ([[tables]] name = "public.items", tenant = "..."); every table '
            "is captured without [[tables]] only when there is one tenant"
        )
    insecure = names["server.insecure"]
    if not server.insecure and not (tls.cert_file and tls.key_file):
        raise ConfigError(
            f"tls.cert_file and tls.key_file are required unless {insecure} = true; "
            "make development certificates with `prism-wrapper gen-certs DIR`"
        )
    if tls.client_ca_file and server.insecure:
        raise ConfigError(f"tls.client_ca_file needs TLS: drop {insecure} = true")
    bound = [t.id for t in tenants if t.client_identities]
    if bound and not tls.client_ca_file:
        raise ConfigError(
            f"tenants {bound} list client_identities, which only a client certificate can "
            "present: set tls.client_ca_file to the CA that signs the drivers' certificates"
        )
    if sections["database"].flavor in ("mysql", "mariadb"):
        tables = _mysql_tables(tables, raw_tables, sections["database"].dsn)
    cfg = WrapperConfig(
        **sections, tables=tables, tenants=tenants, source_path=origin, capture_all=not tables
    )
    dim = cfg.vectors.dimension
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
