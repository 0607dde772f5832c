"""Which I/O engine gRPC's core runs in the prism-wrapper daemon: chosen once,
as gRPC is imported, by the daemon's command line (wrapper/cli.py imports
this before anything of prism's).

Since grpcio 1.80, gRPC's core does Python's socket I/O on an EventEngine:
threads of its own that read and write the sockets and then hand each event
to the completion queue the Python side waits on. Before 1.80 the thread
waiting on the queue polled the sockets itself (iomgr), so an arriving
message woke one thread instead of two. A write through the wrapper
(`driver.write(wait=True)`) is a chain of such messages and wake-ups: with
grpcio 1.85.4 on the benchmark's 2-core VM, the wrapper's threads slept and
woke 33.5-36.9 times a write on the EventEngine against 28.2-33.3 on iomgr
(the driver's 12.2-14.1 against 6.0-7.0), and a wake-up that crosses to a
vCPU that has halted costs some 30-40 µs there (benchmark/wakeprobe.py).

Only the daemon: the driver and the cluster cache are libraries inside
applications that may fork, and gRPC's fork handling is weaker on iomgr. A
child forked beside a live server and channel made its first call on a new
channel 10 times of 15 on the EventEngine, 5 of 15 on iomgr with gRPC's fork
support on (and the parent crashed once), none without it (2026-12-06,
benchmark/README.md, "Issue 12"). The daemon forks only to run other
programs, and nothing in it uses gRPC after a fork.

So, in the daemon, this module asks gRPC for iomgr with the experiments gRPC
itself offers for that (GRPC_EXPERIMENTS, which gRPC's core reads once, when
grpc is imported), imports grpc, and takes the variable out of the
environment again, so that no child process inherits it. It leaves gRPC as
it is when:
- grpc is already imported (too late: gRPC read its settings then);
- GRPC_EXPERIMENTS is set (the operator's choice stands);
- PRISM_GRPC_EVENT_ENGINE is set to 1, true, yes or on (keep gRPC's default);
- the grpc about to be imported is not a release these experiments are
  known in (1.80 up to and excluding 1.86: gRPC plans to remove them, and an
  experiment name it no longer knows makes its core log an error).

The rules are pure functions of their arguments; `load_grpc` applies them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from prism.fabric.switchwords import is_on

# gRPC's own switches back to iomgr (src/core/lib/experiments/experiments.yaml).
IOMGR_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,"
    "-event_engine_for_all_other_endpoints,-event_engine_callback_cq"
)
OPT_OUT = "PRISM_GRPC_EVENT_ENGINE"
# grpcio releases whose Python default is the EventEngine and which still
# know the experiments above: [first, last) as (major, minor).
KNOWN = ((1, 80), (1, 86))
_VERSION = re.compile(r"(\d+)\.(\d+)")
_METADATA = re.compile(r"""__version__\s*=\s*['"]+([^'"]+)['"]+""")


def _minor(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as 1.85.4 or 1.86.0rc1."""
    m = _VERSION.match(version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def grpc_version_on_path() -> str | None:
    """The version of the grpc package that `import grpc` would load, read
    from its own grpc/_grpcio_metadata.py without importing it (cheaper than
    importlib.metadata, and the very package, whatever dist-info is found)."""
    try:
        spec = importlib.util.find_spec("grpc")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        try:
            text = (Path(location) / "_grpcio_metadata.py").read_text()
        except OSError:
            continue
        m = _METADATA.search(text)
        if m:
            return m.group(1)
    return None


def iomgr_setting(
    environ: Mapping[str, str], grpc_loaded: bool, grpcio_version: str | None
) -> str | None:
    """The GRPC_EXPERIMENTS value to import grpc with, or None to leave
    gRPC as it is."""
    if grpc_loaded or "GRPC_EXPERIMENTS" in environ:
        return None
    if is_on(environ.get(OPT_OUT, "")):
        return None
    minor = _minor(grpcio_version) if grpcio_version else None
    if minor is None or not KNOWN[0] <= minor < KNOWN[1]:
        return None
    return IOMGR_EXPERIMENTS


def load_grpc() -> str | None:
    """Import grpc on iomgr where the rules allow (see the module
    docstring); the experiments it was imported with, or None. It works on
    os.environ itself: that is what gRPC's core reads."""
    env = os.environ
    loaded = "grpc" in sys.modules
    value = iomgr_setting(env, loaded, None if loaded else grpc_version_on_path())
    if value is None:
        return None
    env["GRPC_EXPERIMENTS"] = value
    try:
        import grpc  # noqa: F401  (gRPC's core reads the experiments now)
    finally:
        # Read: children (PostgreSQL's tools) must not inherit a setting
        # made for this process's grpc.
        env.pop("GRPC_EXPERIMENTS", None)
    return value


# Applied on import: the daemon's command line imports this first.
APPLIED = load_grpc()
