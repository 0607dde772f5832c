"""Which I/O engine gRPC's core runs in a prism process: chosen once, as
gRPC is imported, by the prism packages that talk gRPC (the driver, the
wrapper and the cluster cache import this module before anything else).

Since grpcio 1.80, gRPC's core does Python's socket I/O on an EventEngine:
threads of its own that read and write the sockets and then hand each event
to the completion queue the Python side waits on. Before 1.80 the thread
waiting on the queue polled the sockets itself (iomgr), so an arriving
message woke one thread instead of two. A write through the wrapper
(`driver.write(wait=True)`) is a chain of such messages and wake-ups: with
grpcio 1.85.4 on the benchmark's 2-core VM, the driver's threads slept and
woke 12.2-14.1 times a write on the EventEngine against 6.0-7.0 on iomgr,
the wrapper's 33.5-36.9 against 28.2-33.3, and a wake-up that crosses to a
vCPU that has halted costs some 30-40 µs there (benchmark/wakeprobe.py).
Sequential writes were faster on iomgr in 9 of 12 alternated blocks
(benchmark/README.md, "Issue 12", 2026-12-06 11:31-12:40).

So this module asks gRPC for iomgr, with the experiments gRPC itself offers
for that (GRPC_EXPERIMENTS, which gRPC's core reads once, when grpc is
imported) and with gRPC's fork support (which the EventEngine has on by
default and iomgr only when asked), imports grpc, and then takes both
variables out of the environment again, so that no child process inherits
them. It leaves gRPC as it is when:
- grpc is already imported (the application loaded it first: too late, and
  its choice stands);
- GRPC_EXPERIMENTS is set (the operator's choice stands);
- PRISM_GRPC_EVENT_ENGINE is set to 1, true, yes or on (keep gRPC's default);
- the grpc about to be imported is not a release these experiments are
  known in (1.80 up to and excluding 1.86: gRPC plans to remove them, and an
  experiment name it no longer knows makes its core log an error).

It changes the whole process's gRPC, the application's own channels too:
iomgr is the engine every grpcio before 1.80 used, with the same API and
behaviour. The rules are pure functions of their arguments; `load_grpc`
applies them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

# gRPC's own switches back to iomgr (src/core/lib/experiments/experiments.yaml).
IOMGR_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,"
    "-event_engine_for_all_other_endpoints,-event_engine_callback_cq"
)
OPT_OUT = "PRISM_GRPC_EVENT_ENGINE"
# On the EventEngine, gRPC 1.85 handles fork() by default (its
# event_engine_fork); on iomgr only with this set. Without it, a child forked
# while the parent had a live server or channel failed its first call on a
# new channel ("sendmsg: Bad file descriptor"); with it, as on the
# EventEngine, the call went through. Set with iomgr unless already set.
FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"
# grpcio releases whose Python default is the EventEngine and which still
# know the experiments above: [first, last) as (major, minor).
KNOWN = ((1, 80), (1, 86))
_VERSION = re.compile(r"(\d+)\.(\d+)")
_METADATA = re.compile(r"""__version__\s*=\s*['"]+([^'"]+)['"]+""")


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


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
    if _truthy(environ.get(OPT_OUT, "")):
        return None
    minor = _minor(grpcio_version) if grpcio_version else None
    if minor is None or not KNOWN[0] <= minor < KNOWN[1]:
        return None
    return IOMGR_EXPERIMENTS


def load_grpc(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Import grpc on iomgr where the rules allow (see the module
    docstring); the experiments it was imported with, or None."""
    env = os.environ if environ is None else environ
    loaded = "grpc" in sys.modules
    value = iomgr_setting(env, loaded, None if loaded else grpc_version_on_path())
    if value is None:
        return None
    made = {"GRPC_EXPERIMENTS": value}
    if FORK_SUPPORT not in env:
        made[FORK_SUPPORT] = "1"
    env.update(made)
    try:
        import grpc  # noqa: F401  (gRPC's core reads both settings now)
    finally:
        # Read: children (PostgreSQL's tools, an app's own programs) must
        # not inherit settings made for this process's grpc.
        for key in made:
            env.pop(key, None)
    return value


# Applied on import: the driver, the wrapper and the cluster cache import
# this first, before anything of theirs imports grpc.
APPLIED = load_grpc()
