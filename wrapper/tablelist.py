"""Which tables the wrapper captures when its config names none.

With no [[tables]] entry the wrapper captures every table that has a
primary key, as Debezium does by default: PostgreSQL's tables of every
schema but the system ones, MySQL's of the dsn's database. The list is read
once, at the daemon's start (and by `check`), and logged; what is captured
then is fixed until the next start. A table added later is captured after
a restart (the changed list means a fresh copy, as any change of the
configured tables does). When the database cannot be reached at start, the
tables the store already holds are captured, so the wrapper still serves
its drivers from the store while it retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from prism.fabric.tablenames import qualify
from prism.wrapper.config import TableConfig, WrapperConfig
from prism.wrapper.errors import ConfigError, WrapperError
from prism.wrapper.sources.flavor import keyed_tables

log = logging.getLogger("prism.wrapper")


def with_tables(cfg: WrapperConfig, names: Iterable[str]) -> WrapperConfig:
    """The config with a [[tables]] entry (rows only, no vectors) for each
    name, of the single tenant; the write marker table is never captured."""
    marker = qualify(cfg.database.writes_table) if cfg.flavor == "postgres" else None
    tenant = cfg.tenants[0].id
    tables = tuple(TableConfig(name=n, tenant=tenant) for n in sorted(set(names)) if n != marker)
    return replace(cfg, tables=tables)


def resolve_tables(
    cfg: WrapperConfig, stored: Callable[[], Iterable[str]] = lambda: ()
) -> WrapperConfig:
    """`cfg` with its tables filled in when it captures every keyed table;
    unchanged otherwise. `stored` gives the store's tables, the fallback
    while the database is unreachable."""
    if not cfg.capture_all:
        return cfg
    try:
        names = keyed_tables(cfg)
        source = "database"
    except WrapperError as exc:
        names = list(stored()) if exc.retriable else []
        if not names:
            raise
        source = "store"
        log.warning(
            "cannot list the database's tables (%s); capturing the %d the store holds",
            exc,
            len(names),
        )
    resolved = with_tables(cfg, names)
    if not resolved.tables:
        raise ConfigError(
            f"no [[tables]] in {cfg.source_path} and no table with a primary key in the "
            "database: add [[tables]] entries, or give the tables a primary key"
        )
    log.info(
        "no [[tables]] configured: capturing every table with a primary key",
        extra={"tables": [t.name for t in resolved.tables], "from": source},
    )
    return resolved
