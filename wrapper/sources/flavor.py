"""Which change source a `database.flavor` uses, and how its positions read.

The one place that knows both flavors; the packages postgres/ and mysql/
never import each other, and each is imported only when its flavor runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prism.wrapper.config import WrapperConfig
    from prism.wrapper.sources.base import ReplicationSource, ResumePoint, SourceProbe


def make_source(cfg: WrapperConfig) -> ReplicationSource:
    """The live source for `database.flavor` (imported lazily: a PostgreSQL
    wrapper does not need the MySQL libraries, nor the other way round)."""
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql.source import MySQLSource

        return MySQLSource(cfg)
    from prism.wrapper.sources.postgres.source import PostgresSource

    return PostgresSource(cfg)


def keyed_tables(cfg: WrapperConfig) -> list[str]:
    """Every table with a primary key (PostgreSQL: of every schema but the
    system ones; MySQL: of the dsn's database): what is captured when the
    config has no [[tables]] entry. Raises a SourceError (retriable when
    the database is unreachable)."""
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql import admin as mysql_admin

        return mysql_admin.keyed_tables(cfg.dsn)
    from prism.wrapper.sources.postgres import admin as pg_admin

    return pg_admin.keyed_tables(cfg.dsn)


def make_probe(cfg: WrapperConfig) -> SourceProbe:
    """A connection of its own for the metrics endpoint's source figures."""
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql.admin import MySQLProbe

        return MySQLProbe(cfg.dsn)
    from prism.wrapper.sources.postgres.admin import PostgresProbe

    return PostgresProbe(cfg.dsn, cfg.database.slot)


def describe_point(flavor: str, point: ResumePoint) -> str:
    """A stored resume point for people (Health's source_position):
    PostgreSQL's LSN "0/16B3748"; MySQL's binlog file and offset with the
    GTID state, "binlog #000003:1147, gtid 0-1-42"."""
    if flavor == "mysql":
        from prism.wrapper.sources.mysql.positions import format_position

        body = point.gtid_state.partition(":")[2]
        gtid = (body or "(none yet)") if point.gtid_state else "unknown"
        return f"binlog {format_position(point.position).removeprefix('file ')}, gtid {gtid}"
    from prism.wrapper.sources.postgres.walstream import lsn_to_str

    return lsn_to_str(point.position)
