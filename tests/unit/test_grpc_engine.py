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
    IOMGR_EXPERIMENTS,
    OPT_OUT,
    _minor,
    grpc_version_on_path,
    iomgr_setting,
)

# Recorded beside the experiments: an earlier version set it with them, and
# nothing of prism's may (gRPC's fork handling is its default's business).
FORK_SUPPORT = "GRPC_ENABLE_FORK_SUPPORT"


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


def test_the_wrapper_daemon_loads_grpc_on_iomgr_and_leaves_no_trace() -> None:
    seen, stderr = _fresh(
        "import prism.wrapper.cli\nimport prism.fabric.grpc_engine as e\n"
        "seen['applied'] = e.APPLIED"
    )
    assert seen["grpc_loaded"] is True
    assert seen["at_import"] == [KNOWN_HERE, None]  # what gRPC's core read
    assert seen["applied"] == KNOWN_HERE
    assert seen["after"] == [None, None]  # no child inherits it
    assert "Unknown experiment" not in stderr  # gRPC knows every name


@pytest.mark.parametrize(
    "statement",
    [
        "import prism.driver",
        "from prism.driver import PrismDriver",
        "import prism.ffi",
        "from prism.cluster.cache import ClusterCache",
        "import prism.wrapper",
    ],
)
def test_libraries_in_an_application_keep_grpcs_default(statement: str) -> None:
    # The driver and the cluster cache live in applications that may fork:
    # gRPC's default engine handles that better (fabric/grpc_engine.py).
    seen, _ = _fresh(statement + "\nimport grpc")
    assert seen["grpc_loaded"] is True
    assert seen["at_import"] == [None, None]
    assert seen["after"] == [None, None]


def test_the_cache_alone_neither_loads_grpc_nor_sets_anything() -> None:
    seen, _ = _fresh("from prism.cache import PrismCache")
    assert seen["grpc_loaded"] is False
    assert "at_import" not in seen
    assert seen["after"] == [None, None]


def test_a_process_that_loaded_grpc_first_keeps_its_engine() -> None:
    seen, _ = _fresh("import grpc\nimport prism.wrapper.cli")
    assert seen["at_import"] == [None, None]


def test_opt_out_and_operator_choices_in_a_real_process() -> None:
    seen, _ = _fresh("import prism.wrapper.cli", **{OPT_OUT: "1"})
    assert seen["at_import"] == [None, None]
    mine = "-event_engine_client"
    seen, _ = _fresh("import prism.wrapper.cli", GRPC_EXPERIMENTS=mine)
    assert seen["at_import"] == [mine, None]
    assert seen["after"] == [mine, None]
