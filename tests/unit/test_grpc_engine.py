"""prism.fabric.grpc_engine: when a prism process asks gRPC for iomgr.

The rules are pure logic on the environment; the last tests start fresh
interpreters, since gRPC reads GRPC_EXPERIMENTS once, when it is imported,
and only a new process shows what importing prism does to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from prism.fabric.grpc_engine import (
    FORK_SUPPORT,
    IOMGR_EXPERIMENTS,
    OPT_OUT,
    _minor,
    grpc_version_on_path,
    iomgr_setting,
    load_grpc,
)


@pytest.mark.parametrize("version", ["1.80.0", "1.85.1", "1.85.4", "1.85.0rc1"])
def test_known_grpcio_gets_iomgr(version: str) -> None:
    assert iomgr_setting({}, grpc_loaded=False, grpcio_version=version) == IOMGR_EXPERIMENTS


@pytest.mark.parametrize("version", ["1.79.9", "1.86.0", "2.0.0", "1", "junk", ""])
def test_other_grpcio_is_left_alone(version: str) -> None:
    # Before 1.80 iomgr is already Python's default; from 1.86 on the
    # experiments may be gone, and an unknown name makes gRPC log an error.
    assert iomgr_setting({}, grpc_loaded=False, grpcio_version=version) is None


def test_no_grpcio_installed_is_left_alone() -> None:
    assert iomgr_setting({}, grpc_loaded=False, grpcio_version=None) is None


def test_grpc_already_loaded_is_left_alone() -> None:
    assert iomgr_setting({}, grpc_loaded=True, grpcio_version="1.85.4") is None


def test_operators_experiments_stand() -> None:
    env = {"GRPC_EXPERIMENTS": "some_other_experiment"}
    assert iomgr_setting(env, grpc_loaded=False, grpcio_version="1.85.4") is None
    # Even an empty value is a choice.
    assert iomgr_setting({"GRPC_EXPERIMENTS": ""}, False, "1.85.4") is None


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_opt_out_keeps_event_engine(value: str) -> None:
    assert iomgr_setting({OPT_OUT: value}, grpc_loaded=False, grpcio_version="1.85.4") is None


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_opt_out_set_false_still_gets_iomgr(value: str) -> None:
    assert iomgr_setting({OPT_OUT: value}, False, "1.85.4") == IOMGR_EXPERIMENTS


def test_minor_parses_release_and_candidate_versions() -> None:
    assert _minor("1.85.4") == (1, 85)
    assert _minor("1.86.0rc1") == (1, 86)
    assert _minor("1.85rc1") == (1, 85)
    assert _minor("1.8rc0") == (1, 8)  # not 1.80
    assert _minor("1.85.4.post1") == (1, 85)
    assert _minor("1.9") == (1, 9)
    assert _minor("x.1") is None
    assert _minor("1.") is None


def test_the_version_is_read_from_the_grpc_that_would_load() -> None:
    import grpc

    assert grpc_version_on_path() == grpc.__version__


def test_load_grpc_leaves_the_operators_setting_alone() -> None:
    env: dict[str, str] = {"GRPC_EXPERIMENTS": "mine"}
    assert load_grpc(env) is None
    assert env == {"GRPC_EXPERIMENTS": "mine"}


# A fresh interpreter: a finder on sys.meta_path records both variables each
# time grpc is looked for; the last look before grpc is in sys.modules is its
# import (what gRPC's core reads; an earlier one is the version probe). Then the
# statements run, then what is left in the environment is printed.
_SPY = """
import json, os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "grpc":  # the last look is the import's own
            seen["at_import"] = [os.environ.get(k) for k in ("GRPC_EXPERIMENTS", %(fork)r)]
        return None
sys.meta_path.insert(0, Spy())
%(body)s
seen["after"] = [os.environ.get(k) for k in ("GRPC_EXPERIMENTS", %(fork)r)]
seen["grpc_loaded"] = "grpc" in sys.modules
print(json.dumps(seen))
"""


def _fresh(body: str, **env: str) -> tuple[dict[str, object], str]:
    """What a new interpreter saw (see _SPY) and its stderr, with the three
    variables taken from `env` only."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("GRPC_EXPERIMENTS", OPT_OUT, FORK_SUPPORT)
    }
    out = subprocess.run(
        [sys.executable, "-c", _SPY % {"body": body, "fork": FORK_SUPPORT}],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


KNOWN_HERE = iomgr_setting({}, grpc_loaded=False, grpcio_version=grpc_version_on_path())


@pytest.mark.parametrize(
    "statement",
    [
        "import prism.driver",
        "from prism.driver import PrismDriver",
        "import prism.ffi",
        "import prism.wrapper.cli",
        "from prism.cluster.cache import ClusterCache",
    ],
)
def test_prism_loads_grpc_on_iomgr_and_leaves_no_trace(statement: str) -> None:
    seen, stderr = _fresh(
        statement + "\nimport prism.fabric.grpc_engine as e\nseen['applied'] = e.APPLIED"
    )
    assert seen["grpc_loaded"] is True
    fork = "1" if KNOWN_HERE else None
    assert seen["at_import"] == [KNOWN_HERE, fork]  # what gRPC's core read
    assert seen["applied"] == KNOWN_HERE
    assert seen["after"] == [None, None]  # no child inherits them
    assert "Unknown experiment" not in stderr  # gRPC knows every name


def test_the_cache_alone_neither_loads_grpc_nor_sets_anything() -> None:
    seen, _ = _fresh("from prism.cache import PrismCache")
    assert seen["grpc_loaded"] is False
    assert "at_import" not in seen
    assert seen["after"] == [None, None]


def test_an_application_that_loaded_grpc_first_keeps_its_engine() -> None:
    seen, _ = _fresh("import grpc\nimport prism.driver")
    assert seen["at_import"] == [None, None]


def test_opt_out_and_operator_choices_in_a_real_process() -> None:
    seen, _ = _fresh("import prism.driver", **{OPT_OUT: "1"})
    assert seen["at_import"] == [None, None]
    mine = "-event_engine_client"
    seen, _ = _fresh("import prism.driver", GRPC_EXPERIMENTS=mine)
    assert seen["at_import"] == [mine, None]
    assert seen["after"] == [mine, None]
    seen, _ = _fresh("import prism.driver", **{FORK_SUPPORT: "0"})
    assert seen["at_import"] == [KNOWN_HERE, "0"]
    assert seen["after"] == [None, "0"]


_FORK = """
import os
import prism.driver
import grpc
from concurrent import futures

handler = grpc.method_handlers_generic_handler(
    "e.E", {"M": grpc.unary_unary_rpc_method_handler(lambda r, c: r)})
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
assert channel.unary_unary("/e.E/M")(b"x", timeout=10) == b"x"
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(20)  # a child stuck in gRPC (no fork support) dies, not hangs
    try:
        other = grpc.insecure_channel(f"127.0.0.1:{port}")
        os._exit(0 if other.unary_unary("/e.E/M")(b"y", timeout=10) == b"y" else 1)
    except Exception:
        os._exit(2)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), channel.unary_unary("/e.E/M")(b"z", timeout=10))
"""


def test_a_child_forked_beside_a_live_server_and_channel_can_call() -> None:
    # What gRPC's EventEngine allows by default; on iomgr only with fork
    # support, which prism asks for with it. Without it the child's first
    # call failed ("sendmsg: Bad file descriptor").
    base = {k: v for k, v in os.environ.items() if k not in ("GRPC_EXPERIMENTS", FORK_SUPPORT)}
    out = subprocess.run(
        [sys.executable, "-c", _FORK], env=base, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "b'z'"]
