"""A throwaway MariaDB server for the tests, the fixture capture and the
benchmarks: Debian's `mariadbd` (package mariadb-server, which .ci/run
installs) started in a temp dir on a free port, binlog on, with the settings
the wrapper's MySQL source requires (binlog_format=ROW, binlog_row_image=FULL,
binlog_row_metadata=FULL, a server_id).

Not part of the data path. MariaDB refuses to run as root unless told; under
root the server runs as Debian's `mysql` user when it exists.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest

from prism.wrapper.embedded_pg import free_port, shared_tmp

DEFAULT_SETTINGS = {
    "log-bin": "binlog",
    "binlog-format": "ROW",
    "binlog-row-image": "FULL",
    "binlog-row-metadata": "FULL",
    "server-id": "1",
    "innodb-flush-log-at-trx-commit": "2",  # tests: no fsync per commit
    "sync-binlog": "0",
    "innodb-buffer-pool-size": "128M",
    "innodb-log-file-size": "64M",
    "max-connections": "200",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_general_ci",
    "skip-name-resolve": "1",
}


class MariaDBError(RuntimeError):
    """The test MariaDB could not be installed or started."""


def _binary(*names: str) -> str:
    for n in names:
        for d in ("/usr/sbin", "/usr/bin"):
            if os.access(f"{d}/{n}", os.X_OK):
                return f"{d}/{n}"
        found = shutil.which(n)
        if found:
            return found
    raise MariaDBError(
        f"none of {names} found: install Debian's mariadb-server (apt-get install mariadb-server)"
    )


@dataclass
class EmbeddedMariaDB:
    """Start with start(), stop with stop(). `root()` connects as root (no
    password, TCP); `url(db)` is a DSN for the wrapper's config."""

    base_dir: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket(self) -> Path:
        return self.base_dir / "mysqld.sock"

    def url(self, db: str, user: str = "root", password: str = "") -> str:
        auth = f"{user}:{password}" if password else user
        return f"mysql://{auth}@127.0.0.1:{self.port}/{db}"

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("mysql")
            return "mysql"
        except KeyError:
            return "root"

    def start(self, timeout: float = 60.0) -> EmbeddedMariaDB:
        mariadbd = _binary("mariadbd", "mysqld")
        install = _binary("mariadb-install-db", "mysql_install_db")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if user not in (None, "root"):
            pw = pwd.getpwnam(str(user))
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        user_args = [f"--user={user}"] if user else []
        if not (self.data_dir / "mysql").exists():
            r = subprocess.run(
                [
                    install,
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    *user_args,
                ],
                capture_output=True,
                text=True,
                timeout=180,
            )
            if r.returncode != 0:
                raise MariaDBError(f"mariadb-install-db failed: {r.stderr.strip()[-2000:]}")
        if not self.port:
            self.port = free_port()
        conf = DEFAULT_SETTINGS | self.settings
        log = self.base_dir / "mariadb.log"
        args = [
            mariadbd,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.base_dir / 'mysqld.pid'}",
            f"--log-error={log}",
            *user_args,
            *(f"--{k}={v}" for k, v in conf.items()),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise MariaDBError(f"mariadbd exited with {self.proc.returncode}:\n{tail}")
            try:
                self.root().close()
                return self
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MariaDBError(
                        f"mariadbd not accepting connections after {timeout}s"
                    ) from None
                time.sleep(0.2)

    def root(self, db: str | None = None, **kw: Any) -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            password="",
            database=db,
            autocommit=True,
            connect_timeout=5,
            **kw,
        )

    def execute(self, sql: str, args: Any = None, db: str | None = None) -> None:
        conn = self.root(db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_mariadb(prefix: str = "prism-test-mariadb-") -> EmbeddedMariaDB:
    return EmbeddedMariaDB(shared_tmp(prefix)).start()


# -- pytest fixtures (imported by tests/conftest.py) -------------------------------

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[EmbeddedMariaDB]:
    """One real MariaDB per test session (fails, not skips, under CI=true)."""
    from support.servers import unavailable

    server = EmbeddedMariaDB(shared_tmp("prism-test-mariadb-"))
    try:
        server.start()
    except Exception as exc:
        unavailable("MariaDB", exc)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base_dir, ignore_errors=True)


class MariaTestDB:
    """A fresh database in the session's MariaDB."""

    __test__ = False

    def __init__(self, server: EmbeddedMariaDB, name: str) -> None:
        self.server = server
        self.name = name
        self.dsn = server.url(name)

    def connect(self, **kw: Any) -> pymysql.connections.Connection[Any]:
        conn = self.server.root(self.name, **kw)
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
        return conn

    def execute(self, sql: str, args: Any = None) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for stmt in [s for s in sql.split(";\n") if s.strip()] if args is None else [sql]:
                    cur.execute(stmt, args)
        finally:
            conn.close()


@pytest.fixture
def mdb(mariadb: EmbeddedMariaDB) -> Iterator[MariaTestDB]:
    name = f"m{os.getpid()}_{next(_counter)}"
    mariadb.execute(f"CREATE DATABASE {name}")
    yield MariaTestDB(mariadb, name)
    mariadb.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def mysql_wrapper(tmp_path: Path, mdb: MariaTestDB, secret_file: Path, certs: Any) -> Iterator[Any]:
    """Like `wrapper`, for the MariaDB database `mdb`: real prism-wrapper
    processes with database.flavor = "mysql"."""
    from conftest import WrapperFactory

    factory = WrapperFactory(tmp_path, mdb, secret_file, certs)  # type: ignore[arg-type]
    base = factory.__call__

    def make(tables: list[dict[str, Any]], **overrides: Any) -> Any:
        database = {
            "flavor": "mysql",
            "dsn": mdb.dsn,
            "server_id": 1000 + len(factory.procs) + 100 * (next(_counter) % 1000),
        } | overrides.pop("database", {})
        return base(tables, database=database, **overrides)

    yield make
    for p in factory.procs:
        p.stop()
