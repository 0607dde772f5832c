"""An embedded PostgreSQL 16 for the demo, the tests and the benchmarks.

Not part of the data path. It starts the binaries that the `pgserver` wheel
ships (PostgreSQL 16 with pgoutput and pgvector) in a directory of our own, on
a free port, with wal_level=logical. PostgreSQL refuses to run as root, so when
we are root the binaries are copied somewhere an unprivileged user can read
and the server runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prism.wrapper.errors import WrapperError

RUN_AS_USER = "prismpg"


class EmbeddedPostgresError(WrapperError):
    """The embedded PostgreSQL could not be installed or started."""


def shared_tmp(prefix: str) -> Path:
    """A new directory under /var/tmp that the unprivileged server user can
    enter (mkdtemp makes it 700; the cluster goes in a subdirectory)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(d, 0o755)
    return d


def remove_tree(path: Path) -> None:
    """Remove a directory a stopped cluster (or any throwaway server) used;
    the demo, the tests and the benchmarks call it, so /var/tmp does not
    collect a 55 MB data directory per run."""
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale(prefix: str, older_than_s: float = 3600.0) -> list[Path]:
    """Remove /var/tmp/<prefix>* directories left by runs that were killed
    before they could clean up: those older than `older_than_s` with no
    live postmaster in them (a run in progress elsewhere keeps its own).
    Returns what was removed."""
    removed = []
    now = time.time()
    for d in Path("/var/tmp").glob(f"{prefix}*"):
        try:
            if not d.is_dir() or now - d.stat().st_mtime < older_than_s:
                continue
            pid_files = [*d.glob("data/postmaster.pid"), *d.glob("*/data/postmaster.pid")]
            if any(_postmaster_alive(p) for p in pid_files):
                continue
        except OSError:
            continue
        remove_tree(d)
        removed.append(d)
    return removed


def _postmaster_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, and another user's
    except (OSError, ValueError, IndexError):
        return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pgserver_install() -> Path:
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the 'pgserver' package: pip install 'prismlib[embedded]'"
        ) from exc
    return Path(pgserver.__file__).parent / "pginstall"


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _binaries_for(user: pwd.struct_passwd | None) -> Path:
    """Return a bin/ directory the server's user can execute."""
    src = _pgserver_install()
    if user is None:
        return src / "bin"
    # /root is usually mode 700: copy the install (34 MB) once to a shared place.
    # The wheel's binaries find their libraries through RPATH
    # $ORIGIN/../../../pgserver.libs, so keep that shape:
    # dest/pgserver/pginstall/bin and dest/pgserver.libs.
    version = (src / "bin" / "pg_config").stat().st_size
    dest = Path("/var/tmp") / f"prismlib-pgserver-{version}"
    if not (dest / ".complete").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(src.parent.parent / "pgserver.libs", tmp / "pgserver.libs", symlinks=True)
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                p = os.path.join(root, f)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
        (tmp / ".complete").touch()
        os.chmod(tmp, 0o755)
        with contextlib.suppress(OSError):
            os.rename(tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "pgserver" / "pginstall" / "bin"


def _check_traversable(path: Path, user: pwd.struct_passwd) -> None:
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & 0o001:
            if parent.stat().st_uid == user.pw_uid:
                continue
            raise EmbeddedPostgresError(
                f"PostgreSQL runs as user {user.pw_name!r}, which cannot enter {parent} "
                f"(mode {oct(os.stat(parent).st_mode & 0o777)}): put the data directory "
                "somewhere world-traversable, such as under /var/tmp"
            )


@dataclass
class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster. Use as a context manager or call
    start()/stop(). `dsn` connects as the superuser `postgres` over TCP."""

    base_dir: Path
    port: int = 0
    settings: dict[str, str] = field(default_factory=dict)
    fsync: bool = False
    _bin: Path | None = None
    _user: pwd.struct_passwd | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def bin_dir(self) -> Path:
        assert self._bin is not None
        return self._bin

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        user = self._user
        preexec = None
        if user is not None:
            uid, gid = user.pw_uid, user.pw_gid
            setpriv = shutil.which("setpriv")
            if setpriv is not None:
                # util-linux's setpriv drops to the server's user, so no Python
                # runs between fork and exec: the child can be made with vfork,
                # which a process with gRPC's threads (a test's driver) needs;
                # a forked child inherits gRPC's state and may abort in it.
                args = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *args]
            else:

                def preexec() -> None:
                    os.setgid(gid)
                    os.setuid(uid)

        env = dict(os.environ, LC_ALL="C", LANG="C")
        return subprocess.run(  # type: ignore[call-overload]
            args, preexec_fn=preexec, env=env, text=True, capture_output=True, **kw
        )

    def start(self) -> EmbeddedPostgres:
        self._user = _ensure_user(RUN_AS_USER) if os.geteuid() == 0 else None
        self._bin = _binaries_for(self._user)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _check_traversable(self.base_dir.parent, self._user)
            os.chown(self.base_dir, self._user.pw_uid, self._user.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            r = self._run(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ]
            )
            if r.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {r.stderr.strip()}")
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text(
                "local all all trust\nhost all all 127.0.0.1/32 trust\n"
                "local replication all trust\nhost replication all 127.0.0.1/32 trust\n"
            )
        if not self.port:
            self.port = free_port()
        conf = {
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.base_dir),
            "fsync": "on" if self.fsync else "off",
            # on even without fsync: the walsender sends only flushed WAL, so
            # with off every commit would reach the stream at the WAL writer's
            # next round (200 ms), in tests, demo and benchmarks alike.
            "synchronous_commit": "on",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "wal_sender_timeout": "60s",
        }
        conf.update(self.settings)
        opts = " ".join(f"-c {k}={v}" for k, v in conf.items())
        log = self.base_dir / "postgres.log"
        r = self._run(
            [
                str(self._bin / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} {opts}",
                "start",
            ]
        )
        if r.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(f"PostgreSQL failed to start: {r.stderr.strip()}\n{tail}")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._bin is None:
            return
        self._run([str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
