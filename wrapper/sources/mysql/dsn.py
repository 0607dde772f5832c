"""The MySQL/MariaDB connection URL of `database.dsn`, parsed (pure code).

Read at the edge (config load) and by the MySQL source, which turns it into
pymysql connection arguments: `mysql://user:password@host:port/database`,
with percent-encoded user and password, port 3306 by default, and optional
query parameters `connect_timeout` and `unix_socket`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prism.wrapper.errors import ConfigError

_SCHEMES = ("mysql", "mariadb")
_PARAMS = {"connect_timeout", "unix_socket"}


@dataclass(frozen=True)
class MySQLDsn:
    host: str
    port: int
    user: str
    password: str
    database: str
    connect_timeout: float = 10.0
    unix_socket: str | None = None

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for pymysql.connect (and BinLogStreamReader)."""
        args: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "connect_timeout": self.connect_timeout,
            "charset": "utf8mb4",
        }
        if self.unix_socket:
            args["unix_socket"] = self.unix_socket
        return args

    def redacted(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


def parse_mysql_dsn(dsn: str) -> MySQLDsn:
    """Parse `database.dsn` for flavor "mysql"; a bad one raises ConfigError
    naming the key and the expected form."""
    where = "database.dsn"
    form = "expected mysql://user:password@host:port/database"
    try:
        u = urlsplit(dsn)
        port = u.port or 3306
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; {form}") from None
    if u.scheme not in _SCHEMES:
        raise ConfigError(f"{where}: scheme {u.scheme or '(none)'!r} with flavor mysql; {form}")
    if not u.hostname:
        raise ConfigError(f"{where}: no host; {form}")
    if not u.username:
        raise ConfigError(f"{where}: no user; {form}")
    database = unquote(u.path.lstrip("/"))
    if not database or "/" in database:
        raise ConfigError(f"{where}: no database name after the host; {form}")
    params = parse_qs(u.query)
    unknown = set(params) - _PARAMS
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter(s) {sorted(unknown)}; known: {sorted(_PARAMS)}"
        )
    timeout = 10.0
    if "connect_timeout" in params:
        try:
            timeout = float(params["connect_timeout"][-1])
        except ValueError:
            raise ConfigError(f"{where}: connect_timeout must be a number of seconds") from None
    return MySQLDsn(
        host=u.hostname,
        port=port,
        user=unquote(u.username),
        password=unquote(u.password or ""),
        database=database,
        connect_timeout=timeout,
        unix_socket=params["unix_socket"][-1] if "unix_socket" in params else None,
    )
