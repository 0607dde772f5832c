"""Fault injectors for the soak (tests/support/soak.py) and fault tests.

Not part of the data path. Each injector does one real thing to a real
process, server, link or file system, and undoes it:

- `ProcessFault`: SIGKILL, SIGSTOP / SIGCONT of a process by pid.
- `PostgresServer`: an immediate shutdown (no checkpoint: crash recovery on
  the next start) or a fast restart of an EmbeddedPostgres, on the same port
  and data directory, run as the server's own unprivileged user.
- `MariaDBServer`: SIGKILL of mariadbd (InnoDB crash recovery on the next
  start) or a clean restart, same port and data directory.
- `support.proxy.Proxy` (cut, stall, delay) and `support.netns.Veth`
  (a kernel-level partition) for the links.
- `TmpfsDisk`: the store's own small tmpfs, filled to ENOSPC and freed.
  tmpfs rather than a loop device: it needs no image file or mkfs, and its
  ENOSPC is the same error a full disk gives (SQLite: SQLITE_FULL). Not
  RLIMIT_FSIZE, which gives EFBIG (and SIGXFSZ), another error than a full
  disk's. Mounting needs root (CAP_SYS_ADMIN); `TmpfsDisk.mount` says why
  when it cannot.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from prism.wrapper.embedded_pg import EmbeddedPostgres
from support.mariadb import EmbeddedMariaDB


class ProcessFault:
    @staticmethod
    def kill9(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    def stop(pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)

    @staticmethod
    def cont(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


class PostgresServer:
    """Crash and restart an EmbeddedPostgres in place."""

    def __init__(self, pg: EmbeddedPostgres) -> None:
        self.pg = pg

    def _pg_ctl_stop(self, mode: str) -> None:
        r = self.pg._run(
            [str(self.pg.bin_dir / "pg_ctl"), "-D", str(self.pg.data_dir), "-m", mode, "-w", "stop"]
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl stop -m {mode} failed: {r.stderr.strip()}")

    def crash(self) -> None:
        """`pg_ctl stop -m immediate`: every backend is killed, nothing is
        checkpointed; the next start replays the WAL (crash recovery)."""
        self._pg_ctl_stop("immediate")

    def shutdown(self) -> None:
        """`pg_ctl stop -m fast`: a clean shutdown with a checkpoint."""
        self._pg_ctl_stop("fast")

    def start(self) -> None:
        self.pg.start()


class MariaDBServer:
    """Kill and restart an EmbeddedMariaDB in place."""

    def __init__(self, server: EmbeddedMariaDB) -> None:
        self.server = server

    def crash(self) -> None:
        """SIGKILL of mariadbd: InnoDB recovers from its redo log on start."""
        proc = self.server.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def shutdown(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start(timeout=120)


class TmpfsDisk:
    """A small tmpfs of its own for a directory, to fill up and free again."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.mounted = False

    def mount(self) -> str:
        """Mount it; return "" on success, else why not."""
        self.path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return "not root: cannot mount a tmpfs"
        r = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_mb}m,mode=0755",
                "tmpfs",
                str(self.path),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            return f"mount -t tmpfs refused: {r.stderr.strip()}"
        self.mounted = True
        return ""

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write a filler file until the file system says ENOSPC; returns
        its size. The filler lives inside the mount, as another tenant's
        files would."""
        filler = self.path / ".filler"
        written = 0
        chunk = b"\0" * (1 << 20)
        with open(filler, "ab", buffering=0) as fh:
            for size in (1 << 20, 1 << 12, 1 << 9):
                piece = chunk[:size]
                while True:
                    try:
                        written += fh.write(piece) or 0
                    except OSError as exc:
                        if exc.errno not in (errno.ENOSPC, errno.EFBIG):
                            raise
                        break
        return written

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / ".filler").unlink()

    def unmount(self) -> None:
        if self.mounted:
            for _ in range(10):
                r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(0.5)  # a process may still hold a file open
            else:  # detach it now; the kernel frees it when the last user goes
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False
        shutil.rmtree(self.path, ignore_errors=True)
