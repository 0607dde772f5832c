"""MySQL/MariaDB replication prerequisites, judged from what the server
reports (pure code: server variables and SHOW GRANTS lines in, problems out).

Used by the MySQL source before it streams and by `prism-wrapper check`.
Each problem names the exact setting or GRANT that fixes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_ON = ("ON", "1")


def variable_problems(
    variables: Mapping[str, str], our_server_id: int, is_mariadb: bool
) -> list[str]:
    """Problems in the server's binlog settings (SHOW GLOBAL VARIABLES)."""
    v = {k.lower(): str(val) for k, val in variables.items()}
    problems = []
    if v.get("log_bin", "OFF").upper() not in _ON:
        problems.append(
            "log_bin is OFF: binary logging is off; add log_bin = mysql-bin under [mysqld] "
            "in my.cnf and restart the server"
        )
    fmt = v.get("binlog_format", "").upper()
    if fmt != "ROW":
        problems.append(
            f"binlog_format is {fmt or 'unset'}: SET GLOBAL binlog_format = 'ROW', and "
            "binlog_format = ROW under [mysqld] in my.cnf so it survives a restart"
        )
    image = v.get("binlog_row_image", "").upper()
    if image != "FULL":
        problems.append(
            f"binlog_row_image is {image or 'unset'}: SET GLOBAL binlog_row_image = 'FULL', and "
            "binlog_row_image = FULL under [mysqld] in my.cnf"
        )
    if "binlog_row_metadata" in v:
        meta = v["binlog_row_metadata"].upper()
        if meta != "FULL":
            problems.append(
                f"binlog_row_metadata is {meta}: SET GLOBAL binlog_row_metadata = 'FULL', and "
                "binlog_row_metadata = FULL under [mysqld] in my.cnf (without it, column "
                "names are guessed from the current catalog and are wrong after ALTER TABLE)"
            )
    if "PARTIAL_JSON" in v.get("binlog_row_value_options", "").upper():
        problems.append(
            "binlog_row_value_options is PARTIAL_JSON: JSON updates would arrive as diffs; "
            "SET GLOBAL binlog_row_value_options = '', and remove it from my.cnf"
        )
    server_id = int(v.get("server_id", "0") or 0)
    if server_id == 0:
        problems.append(
            "server_id is 0: a server with binary logging needs a unique non-zero id; "
            "set server_id = 1 (or another unused id) under [mysqld] in my.cnf and restart"
        )
    elif server_id == our_server_id:
        problems.append(
            f"database.server_id = {our_server_id} is the server's own server_id: set "
            "database.server_id to an id no server or replica in the topology uses"
        )
    return problems


def metadata_note(variables: Mapping[str, str]) -> str | None:
    """A note when the server is too old for binlog_row_metadata."""
    if "binlog_row_metadata" in {k.lower() for k in variables}:
        return None
    return (
        "this server has no binlog_row_metadata (MySQL 8.0.14+ / MariaDB 10.5+ have it): "
        "column names come from the current catalog, so rows written before an ALTER TABLE "
        "that is still being streamed may be decoded under the new column names"
    )


def replica_id_problems(replicas: Iterable[tuple[int, str, int]], our_server_id: int) -> list[str]:
    """(server_id, host, port) rows of SHOW SLAVE HOSTS / SHOW REPLICAS."""
    return [
        f"a replica at {host or '?'}:{port} is registered with server_id {sid}, the same as "
        f"database.server_id: if it is not this wrapper, set database.server_id to an unused "
        "id (two replicas with one id disconnect each other)"
        for sid, host, port in replicas
        if sid == our_server_id
    ]


_GRANT = re.compile(r"^GRANT\s+(.+?)\s+ON\s+(\S+)\s+TO\s", re.I | re.S)
_REPL_CLIENT_ALIASES = {"REPLICATION CLIENT", "BINLOG MONITOR"}


def _privs(text: str) -> set[str]:
    return {p.strip().upper() for p in re.sub(r"\([^)]*\)", "", text).split(",")}


def grant_problems(
    grants: Iterable[str],
    account: str,
    database_tables: Mapping[str, Iterable[str]],
    is_mariadb: bool,
) -> list[str]:
    """What the wrapper's account lacks, from its SHOW GRANTS lines.

    `account` is 'user'@'host' as CURRENT_USER() reports it; database_tables
    maps each database to the configured tables in it. Needs REPLICATION SLAVE
    and REPLICATION CLIENT (MariaDB 10.5+: BINLOG MONITOR) globally, SELECT on
    every table, and on MySQL RELOAD for the brief lock that reads the
    snapshot's binlog position.
    """
    global_privs: set[str] = set()
    scoped: dict[str, set[str]] = {}
    for line in grants:
        m = _GRANT.match(line.strip())
        if m is None:
            continue
        privs, target = _privs(m[1]), m[2].replace("`", "").lower()
        if target == "*.*":
            global_privs |= privs
        else:
            scoped.setdefault(target, set()).update(privs)
    has_all = "ALL PRIVILEGES" in global_privs or "ALL" in global_privs

    def has(priv: str, *targets: str) -> bool:
        if has_all or priv in global_privs:
            return True
        for t in targets:
            p = scoped.get(t, set())
            if priv in p or "ALL PRIVILEGES" in p or "ALL" in p:
                return True
        return False

    problems = []
    if not has("REPLICATION SLAVE") and not has("REPLICATION REPLICA"):
        problems.append(
            f"{account} lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON *.* TO {account}"
        )
    if not (has_all or global_privs & _REPL_CLIENT_ALIASES):
        name = "BINLOG MONITOR" if is_mariadb else "REPLICATION CLIENT"
        problems.append(f"{account} lacks {name}: GRANT {name} ON *.* TO {account}")
    if not is_mariadb and not has("RELOAD"):
        problems.append(
            f"{account} lacks RELOAD, needed for the brief FLUSH TABLES WITH READ LOCK that "
            f"reads the initial copy's binlog position: GRANT RELOAD ON *.* TO {account}"
        )
    for db, tables in database_tables.items():
        for t in tables:
            if not has("SELECT", f"{db.lower()}.*", f"{db.lower()}.{t.lower()}"):
                problems.append(
                    f"{account} lacks SELECT on {db}.{t}: GRANT SELECT ON `{db}`.`{t}` TO {account}"
                )
    return problems


_GTID_MODE_STEPS = {
    "OFF": ("OFF_PERMISSIVE", "ON_PERMISSIVE", "ON"),
    "OFF_PERMISSIVE": ("ON_PERMISSIVE", "ON"),
    "ON_PERMISSIVE": ("ON",),
}


def gtid_problems(variables: Mapping[str, str], resume: str, is_mariadb: bool) -> list[str]:
    """What stops resuming by GTID when database.resume = "gtid". MariaDB
    always logs GTIDs; MySQL needs gtid_mode = ON, which needs
    enforce_gtid_consistency = ON first and is reached one step at a time."""
    if resume != "gtid" or is_mariadb:
        return []
    v = {k.lower(): str(val).upper() for k, val in variables.items()}
    problems = []
    enforce = v.get("enforce_gtid_consistency", "")
    if enforce not in _ON:
        problems.append(
            f'enforce_gtid_consistency is {enforce or "unset"}: database.resume = "gtid" '
            "needs it ON before gtid_mode can be ON; SET GLOBAL enforce_gtid_consistency = ON, "
            "and enforce_gtid_consistency = ON under [mysqld] in my.cnf"
        )
    mode = v.get("gtid_mode", "")
    if mode not in _ON:
        steps = _GTID_MODE_STEPS.get(mode, ("ON",))
        problems.append(
            f"gtid_mode is {mode or 'unset (no GTIDs on this server)'}: database.resume = "
            '"gtid" needs gtid_mode = ON; '
            + ", then ".join(f"SET GLOBAL gtid_mode = {s}" for s in steps)
            + " (before ON, wait until SHOW STATUS LIKE 'Ongoing_anonymous_transaction_count' "
            "is 0), and gtid_mode = ON under [mysqld] in my.cnf; or set database.resume = "
            '"auto" to resume by binlog position without GTIDs'
        )
    return problems


def server_has_gtids(variables: Mapping[str, str], is_mariadb: bool) -> bool:
    """Whether every transaction the server logs carries a GTID: MariaDB
    always; MySQL only with gtid_mode = ON (the permissive modes mix in
    anonymous transactions, which no GTID set can account for)."""
    if is_mariadb:
        return True
    v = {k.lower(): str(val).upper() for k, val in variables.items()}
    return v.get("gtid_mode", "") in _ON


def gtid_summary(
    variables: Mapping[str, str], resume: str, is_mariadb: bool, gtid_binlog_pos: str | None
) -> str:
    """What `prism-wrapper check` says about resuming by GTID."""
    v = {k.lower(): str(val) for k, val in variables.items()}
    if is_mariadb:
        has = f"GTIDs: MariaDB, gtid_binlog_pos {gtid_binlog_pos or '(empty)'}"
    else:
        has = (
            f"GTIDs: gtid_mode {v.get('gtid_mode', 'unset')}, enforce_gtid_consistency "
            f"{v.get('enforce_gtid_consistency', 'unset')}"
        )
    if resume == "position":
        return f'{has}; database.resume = "position": resume by binlog file/offset'
    if server_has_gtids(variables, is_mariadb):
        return f'{has}; resume by GTID (database.resume = "{resume}")'
    return (
        f"{has}; resume by binlog file/offset, so a failover to another server means a fresh "
        "copy (for GTID resume: enforce_gtid_consistency = ON, then gtid_mode = ON)"
    )
