"""The soak's world (tests/support/soak.py): real servers, links and a disk.

Not part of the data path. `SoakEnv.create()` starts, in a work directory:

- the database: its own PostgreSQL or MariaDB (never the test session's
  shared one: the soak crashes and restarts it), with a database `soak`;
- the wrapper's node: where the kernel allows, a network namespace joined
  to this one by a veth pair (support.netns), in which the real
  prism-wrapper process runs; else loopback, and the notes say so;
- two proxies (support.proxy): wrapper → database (listening on the
  veth's near address) and drivers → wrapper, to cut, stall and slow each
  link on its own; the veth's partition cuts both at once;
- the store on a small tmpfs of its own (support.faults.TmpfsDisk);
- TLS certificates, a tenant secret, the wrapper's config;
- drivers: in process (through the driver proxy) and one in a process of
  its own (support.soak_driver) that can be stopped as a whole.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import support.mysql_consistency as mc
from prism.driver import DriverConfig, PrismDriver
from prism.fabric.keys import write_secret
from prism.wrapper.certs import generate
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp
from prism.wrapper.sources.postgres.walstream import lsn_from_str
from support import consistency
from support.consistency import Workload, db_rows
from support.faults import MariaDBServer, PostgresServer, TmpfsDisk
from support.mariadb import EmbeddedMariaDB
from support.netns import Veth
from support.proxy import Proxy
from support.servers import WrapperProcess, write_config
from support.soak_workload import (
    EXTRA_TABLES,
    MYSQL_EXTRA_SCHEMA,
    PG_EXTRA_SCHEMA,
    WRITE_TABLE,
    mysql_extra_rows,
)

DBNAME = "soak"
TENANT = "soak"
SLOT = "prism_soak"


class SoakDatabase:
    """What the soak needs of a database, PostgreSQL or MariaDB."""

    flavor: str
    port: int
    server: PostgresServer | MariaDBServer
    base_dir: Path
    tables: list[dict[str, Any]]
    keys: dict[str, tuple[str, ...]]
    group_table: str
    rows_of: Callable[[Any, str, tuple[str, ...]], dict[str, dict[str, Any]]]

    def connect(self) -> Any:
        raise NotImplementedError

    def wrapper_dsn(self, host: str, port: int) -> dict[str, Any]:
        raise NotImplementedError

    def workload(self, seed: int) -> Workload:
        raise NotImplementedError

    def slot_lsn(self, conn: Any) -> int | None:
        """PostgreSQL: the slot's confirmed_flush_lsn (None: no slot, or
        not PostgreSQL)."""
        return None

    def wal_lsn(self, conn: Any) -> int | None:
        return None

    def source_mark(self, conn: Any) -> str:
        """Where the database's log is now (the workload paused)."""
        raise NotImplementedError

    def wrapper_has(self, conn: Any, mark: str, health: Any) -> bool:
        """Whether the wrapper's store holds everything up to `mark`."""
        raise NotImplementedError

    def stop(self, logs: Path) -> None:
        """Stop the server, keep its log in `logs`, remove its files."""
        raise NotImplementedError


class PostgresDatabase(SoakDatabase):
    flavor = "postgres"
    group_table = "public.grp"
    rows_of = staticmethod(db_rows)

    def __init__(self) -> None:
        self.base_dir = shared_tmp("prism-soak-pg-")
        self.pg = EmbeddedPostgres(self.base_dir / "pg")
        self.pg.start()
        self.server = PostgresServer(self.pg)
        self.port = self.pg.port
        with psycopg.connect(self.pg.dsn, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {DBNAME}")
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname={DBNAME}"
        with self.connect() as c:
            c.execute(consistency.SCHEMA)
            c.execute(PG_EXTRA_SCHEMA)
        self.tables = [*consistency.TABLES_CONFIG, *EXTRA_TABLES, WRITE_TABLE]
        self.keys = consistency.KEYS | {
            "public.grp": ("g", "k"),
            "public.evolve": ("id",),
            "public.wrt": ("id",),
        }

    def connect(self) -> Any:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)

    def wrapper_dsn(self, host: str, port: int) -> dict[str, Any]:
        return {
            "flavor": "postgres",
            "dsn": f"host={host} port={port} user=postgres dbname={DBNAME}",
            "slot": SLOT,
            "publication": "prism",
        }

    def workload(self, seed: int) -> Workload:
        return Workload(seed=seed)

    def slot_lsn(self, conn: Any) -> int | None:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (SLOT,),
        ).fetchone()
        return None if row is None or row[0] is None else lsn_from_str(row[0])

    def wal_lsn(self, conn: Any) -> int | None:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        return lsn_from_str(row[0])

    def source_mark(self, conn: Any) -> str:
        return str(self.wal_lsn(conn))

    def wrapper_has(self, conn: Any, mark: str, health: Any) -> bool:
        # The slot is confirmed only with what the store committed.
        slot = self.slot_lsn(conn)
        return slot is not None and slot >= int(mark)

    def stop(self, logs: Path) -> None:
        self.pg.stop()
        with contextlib.suppress(OSError):
            shutil.copy(self.pg.base_dir / "postgres.log", logs / "postgres.log")
        shutil.rmtree(self.base_dir, ignore_errors=True)


class MariaDatabase(SoakDatabase):
    flavor = "mariadb"
    group_table = f"{DBNAME}.grp"
    rows_of = staticmethod(mc.mysql_rows)

    def __init__(self) -> None:
        self.base_dir = shared_tmp("prism-soak-mariadb-")
        self.mdb = EmbeddedMariaDB(self.base_dir).start()
        self.server = MariaDBServer(self.mdb)
        self.port = self.mdb.port
        self.mdb.execute(f"CREATE DATABASE {DBNAME}")
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for stmt in (mc.SCHEMA + ";\n" + MYSQL_EXTRA_SCHEMA).split(";\n"):
                    if stmt.strip():
                        cur.execute(stmt)
                mysql_extra_rows(cur)
        finally:
            conn.close()
        self.tables = [*mc.tables_config(), *EXTRA_TABLES]
        self.keys = mc.keys(DBNAME) | {f"{DBNAME}.grp": ("g", "k"), f"{DBNAME}.evolve": ("id",)}

    def connect(self) -> Any:
        conn = self.mdb.root(DBNAME, read_timeout=60, write_timeout=60)
        with conn.cursor() as cur:
            cur.execute("SET SESSION time_zone = '+00:00'")
        return conn

    def wrapper_dsn(self, host: str, port: int) -> dict[str, Any]:
        return {
            "flavor": "mysql",
            "dsn": f"mysql://root@{host}:{port}/{DBNAME}",
            "server_id": 4242,
        }

    def workload(self, seed: int) -> Workload:
        return mc.MySQLWorkload(seed=seed)

    def source_mark(self, conn: Any) -> str:
        with conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (pos,) = cur.fetchone()
        return str(pos)

    def wrapper_has(self, conn: Any, mark: str, health: Any) -> bool:
        # Health's source_position: "binlog #000003:1147, gtid 0-1-42,1-2-7".
        stored = health.source_position.rpartition("gtid ")[2]
        return set(stored.split(",")) == set(mark.split(","))

    def stop(self, logs: Path) -> None:
        self.mdb.stop()
        with contextlib.suppress(OSError):
            shutil.copy(self.base_dir / "mariadb.log", logs / "mariadb.log")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def make_database(flavor: str) -> SoakDatabase:
    if flavor == "postgres":
        return PostgresDatabase()
    if flavor == "mariadb":
        return MariaDatabase()
    raise ValueError(f"unknown database {flavor!r}: postgres or mariadb")


class Sleeper:
    """The driver in a process of its own (support/soak_driver.py)."""

    def __init__(self, work: Path, port: int, secret: Path, ca: Path, groups: str) -> None:
        self.work = work
        self.log = (work / "sleeper.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("soak_driver.py")),
                "--port",
                str(port),
                "--tenant",
                TENANT,
                "--secret",
                str(secret),
                "--ca",
                str(ca),
                "--groups",
                groups,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def _ask(self, command: str, timeout: float) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the driver process did not answer {command!r} within {timeout}s")
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ok"):
            raise RuntimeError(f"the driver process answered {line!r}")
        return line[3:]

    def dump(self, timeout: float = 60.0) -> dict[str, Any]:
        """Its replica, stats and observations, as it has them now."""
        import pickle

        path = self.work / "sleeper.pickle"
        self._ask(f"dump {path}", timeout)
        data: dict[str, Any] = pickle.loads(path.read_bytes())
        return data

    def position(self, timeout: float = 10.0) -> int:
        return int(self._ask("position", timeout))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, 18)  # SIGCONT, in case it is stopped
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@dataclass
class SoakEnv:
    work: Path
    db: SoakDatabase
    disk: TmpfsDisk
    veth: Veth | None
    db_proxy: Proxy
    app_proxy: Proxy
    wrapper: WrapperProcess
    secret: Path
    ca: Path
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls, flavor: str, work: Path, retention_s: float, store_mb: int, netns: bool
    ) -> SoakEnv:
        work.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        veth = None
        if netns:
            pid = os.getpid()
            net = f"10.215.{(pid >> 6) & 255}.{(pid & 63) << 2}"
            base = net.rsplit(".", 1)
            host_ip = f"{base[0]}.{int(base[1]) + 1}"
            peer_ip = f"{base[0]}.{int(base[1]) + 2}"
            veth, why = Veth.create(
                f"prism-soak-{pid}", f"psk{pid}h", f"psk{pid}a", host_ip, peer_ip
            )
            if veth is None:
                notes.append(f"no veth partitions: {why}; the wrapper runs on loopback")
        else:
            notes.append("no veth partitions (--no-netns); the wrapper runs on loopback")
        near = veth.host_ip if veth else "127.0.0.1"
        far = veth.peer_ip if veth else "127.0.0.1"
        disk = TmpfsDisk(work / "store", store_mb)
        why = disk.mount()
        if why:
            notes.append(f"no full-disk faults: {why}")
        try:
            db = make_database(flavor)
        except BaseException:  # leave no namespace or mount behind
            if veth is not None:
                veth.destroy()
            disk.unmount()
            raise
        db_proxy = Proxy(db.port, listen_host=near)
        certs = generate(work / "pki", hosts=["localhost", "127.0.0.1", far])
        secret = work / "tenant.secret"
        if not secret.exists():
            write_secret(secret)
        port = free_port()
        sections: dict[str, dict[str, Any]] = {
            "database": db.wrapper_dsn(near, db_proxy.port) | {"status_interval_s": 1.0},
            "server": {
                "listen_host": far,
                "listen_port": port,
                "tenant_id": TENANT,
                "secret_file": str(secret),
                "grace_seconds": 2.0,
            },
            "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
            "store": {"path": str(disk.path / "store.sqlite3"), "retention_seconds": retention_s},
        }
        config = write_config(work / "wrapper.toml", sections, db.tables)
        wrapper = WrapperProcess(
            config,
            port,
            work / "wrapper.log",
            certs.ca_cert,
            host=far,
            command_prefix=tuple(veth.exec_prefix()) if veth else (),
        )
        app_proxy = Proxy(port, target_host=far)
        return cls(work, db, disk, veth, db_proxy, app_proxy, wrapper, secret, certs.ca_cert, notes)

    @property
    def store_path(self) -> Path:
        return self.disk.path / "store.sqlite3"

    def driver(self, **overrides: Any) -> PrismDriver:
        """A driver that reaches the wrapper through the driver proxy."""
        args: dict[str, Any] = {
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 1.0,
            "connect_timeout_s": 5.0,
            "write_timeout_s": 15.0,
        } | overrides
        return PrismDriver(
            DriverConfig(
                wrapper_host="127.0.0.1",
                wrapper_port=self.app_proxy.port,
                tenant_id=TENANT,
                secret_file=self.secret,
                tls_ca_file=self.ca,
                **args,
            )
        )

    def sleeper(self) -> Sleeper:
        return Sleeper(self.work, self.app_proxy.port, self.secret, self.ca, self.db.group_table)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.wrapper.stop()
        for p in (self.app_proxy, self.db_proxy):
            with contextlib.suppress(Exception):
                p.close()
        with contextlib.suppress(Exception):
            self.db.stop(self.work)
        if self.veth is not None:
            self.veth.destroy()
        for _ in range(3):
            with contextlib.suppress(Exception):
                self.disk.unmount()
                break
            time.sleep(1)
