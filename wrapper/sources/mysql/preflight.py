"""`prism-wrapper check` for MySQL/MariaDB: what the live source would need,
checked and printed before the daemon runs.

Over the same MySQLSource the daemon uses (connection, variables, grants,
GTIDs, tables), with the verdicts of the pure checks in check.py; prints
what is fine and returns the problems, each naming its fix.
"""

from __future__ import annotations

from prism.fabric.errors import PrismError
from prism.wrapper.config import WrapperConfig
from prism.wrapper.sources.mysql.check import (
    gtid_problems,
    gtid_summary,
    metadata_note,
    variable_problems,
)
from prism.wrapper.sources.mysql.source import MySQLSource


def check_database(cfg: WrapperConfig) -> list[str]:
    """`prism-wrapper check` for MySQL/MariaDB: print what is fine, return
    the problems, each naming the setting or GRANT that fixes it."""
    source = MySQLSource(cfg)
    problems: list[str] = []
    try:
        flavor = "MariaDB" if source.is_mariadb else "MySQL"
        print(f"ok   connected to {flavor} {source._version} as {source.dsn.user}")
        variables = source.server_variables()
        found = variable_problems(variables, source.server_id, source.is_mariadb)
        problems += found
        if not found:
            print(
                "ok   binlog: log_bin ON, binlog_format ROW, binlog_row_image FULL"
                + (", binlog_row_metadata FULL" if "binlog_row_metadata" in variables else "")
                + f", server_id {variables.get('server_id')}"
            )
        note = metadata_note(variables)
        if note:
            print(f"note {note}")
        gtid_found = gtid_problems(variables, source.resume, source.is_mariadb)
        problems += gtid_found
        if not gtid_found:
            pos = source._q("SELECT @@GLOBAL.gtid_binlog_pos")[0][0] if source.is_mariadb else None
            line = gtid_summary(variables, source.resume, source.is_mariadb, pos)
            print(f"{'ok  ' if source.has_gtids else 'note'} {line}")
        problems += source.replica_problems()
        print(f"ok   replica server_id {source.server_id} (database.server_id)")
        privileges = source.check_prerequisites()
        problems += [p for p in privileges if p not in found and p not in gtid_found]
        try:
            for name, shape in source.discover().items():
                print(
                    f"ok   table {name}: key ({', '.join(shape.key_columns)}), "
                    f"{len(shape.columns)} columns"
                )
        except PrismError as exc:
            problems.append(str(exc))
        if not problems:
            logs = source.binary_logs()
            how = (
                "consistent snapshot status (no lock)"
                if source.snapshot_method() == "status"
                else "a brief FLUSH TABLES WITH READ LOCK"
            )
            oldest = logs[0][0] if logs else "-"
            print(f"ok   {len(logs)} binlog file(s), oldest {oldest}; initial copy by {how}")
    except PrismError as exc:
        problems.append(str(exc))
    finally:
        source.close()
    return problems
