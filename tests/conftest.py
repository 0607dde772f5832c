"""Session-wide fixtures: one real PostgreSQL per test session, a fresh
database (and slot/publication names) per test, secrets, wrapper processes."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from prism.fabric.keys import write_secret
from prism.wrapper.certs import CertPaths, generate
from prism.wrapper.embedded_pg import EmbeddedPostgres
from support import servers
from support.cachefix import cache, clock, llm, minilm  # noqa: F401  (PrismCache fixtures)
from support.servers import (
    WrapperProcess,
    new_port,
    start_postgres,
    stop_postgres,
    write_config,
)

_db_counter = itertools.count(1)


def _dump_pending_tasks(nodeid: str) -> None:
    """Print the stack of every pending asyncio task: a hung async test shows
    only its event loop's select() in pytest-timeout's dump, never the
    await it is stuck on."""
    tasks = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    head = f"--- {nodeid}: near its timeout, {len(tasks)} pending asyncio tasks ---"
    print(head, file=sys.stderr)
    for task in tasks:
        try:
            task.print_stack(file=sys.stderr)
        except Exception as exc:  # the loop runs on: a stack may change under us
            print(f"{task!r}: {exc!r}", file=sys.stderr)


@pytest.fixture(autouse=True)
def _tasks_dumped_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("timeout")
    limit = float(marker.args[0] if marker else request.config.getini("timeout") or 0)
    timer = threading.Timer(max(limit - 10.0, 1.0), _dump_pending_tasks, (request.node.nodeid,))
    timer.daemon = True
    if limit:
        timer.start()
    yield
    timer.cancel()


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    server = start_postgres()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield server
    finally:
        stop_postgres(server)


class TestDB:
    """A fresh database in the session's cluster, with its own slot name."""

    __test__ = False  # a fixture's type, not a test class

    def __init__(self, pg: EmbeddedPostgres, name: str) -> None:
        self.pg = pg
        self.name = name
        self.dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname={name}"

    def connect(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, **kw)

    def execute(self, query: str, params: Any = None) -> None:
        with self.connect() as c:
            c.execute(query, params)


@pytest.fixture
def db(pg: EmbeddedPostgres) -> Iterator[TestDB]:
    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    tdb = TestDB(pg, name)
    with tdb.connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    yield tdb
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        for (slot,) in c.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            c.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        c.execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """A development CA, a server certificate for 127.0.0.1 and client
    certificates for mTLS, made with `cryptography` by prism-wrapper's
    gen-certs code. Test wrappers serve TLS with them unless told otherwise."""
    paths = generate(
        tmp_path_factory.mktemp("certs"),
        hosts=["localhost", "127.0.0.1"],
        clients=["acme-app", "other-app"],
    )
    servers.TEST_CA = paths.ca_cert
    return paths


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "tenant.secret"
    write_secret(p)
    return p


class WrapperFactory:
    def __init__(self, tmp_path: Path, db: TestDB, secret_file: Path, certs: CertPaths) -> None:
        self.tmp_path = tmp_path
        self.db = db
        self.secret_file = secret_file
        self.certs = certs
        self.procs: list[WrapperProcess] = []

    def __call__(
        self,
        tables: list[dict[str, Any]],
        *,
        tenant: str = "acme",
        start: bool = True,
        tenants: list[dict[str, Any]] | None = None,
        **overrides: dict[str, Any],
    ) -> WrapperProcess:
        """A wrapper process over TLS (server={"insecure": True} for
        plaintext); `tenants` replaces the single tenant by [[tenants]]."""
        port = new_port()
        n = len(self.procs)
        sections: dict[str, dict[str, Any]] = {
            "database": {
                "flavor": "postgres",
                "dsn": self.db.dsn,
                "slot": f"prism_{self.db.name}_{n}",
                "publication": "prism",
            },
            "server": {
                "listen_host": "127.0.0.1",
                "listen_port": port,
                "grace_seconds": 2.0,
            }
            | ({} if tenants else {"tenant_id": tenant, "secret_file": str(self.secret_file)}),
            "tls": {
                "cert_file": str(self.certs.server_cert),
                "key_file": str(self.certs.server_key),
            },
            "store": {"path": str(self.tmp_path / f"store{n}.sqlite3"), "synchronous": "normal"},
        }
        for sec, body in overrides.items():
            sections.setdefault(sec, {}).update(body)
        insecure = bool(sections["server"].get("insecure"))
        if insecure:
            del sections["tls"]
        cfg = write_config(self.tmp_path / f"wrapper{n}.toml", sections, tables, tenants)
        ca = None if insecure else self.certs.ca_cert
        # Under mutual TLS the harness itself (health checks) shows acme's certificate.
        mutual = bool(sections.get("tls", {}).get("client_ca_file"))
        client = self.certs.clients["acme-app"] if mutual else None
        proc = WrapperProcess(cfg, port, self.tmp_path / f"wrapper{n}.log", ca, client)
        self.procs.append(proc)
        if start:
            proc.start()
        return proc


@pytest.fixture
def wrapper(
    tmp_path: Path, db: TestDB, secret_file: Path, certs: CertPaths
) -> Iterator[WrapperFactory]:
    factory = WrapperFactory(tmp_path, db, secret_file, certs)
    yield factory
    for p in factory.procs:
        p.stop()


# MariaDB for the MySQL source (issue 4): mariadb (session), mdb, mysql_wrapper.
from support.mariadb import mariadb, mdb, mysql_wrapper  # noqa: E402, F401
