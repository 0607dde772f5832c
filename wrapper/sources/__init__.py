"""Change sources: where row changes come from (PostgreSQL, MySQL/MariaDB, replay)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prism.wrapper.config import WrapperConfig
    from prism.wrapper.sources.base import ReplicationSource


def make_source(cfg: WrapperConfig) -> ReplicationSource:
    """The live source for `database.flavor` (imported lazily: a PostgreSQL
    wrapper does not need the MySQL libraries, nor the other way round)."""
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql import MySQLSource

        return MySQLSource(cfg)
    from prism.wrapper.sources.postgres import PostgresSource

    return PostgresSource(cfg)
