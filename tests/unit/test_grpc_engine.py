"""prism.fabric.grpc_engine: when a prism process asks gRPC for iomgr.

The rules are pure logic on the environment; the last tests start fresh
interpreters, since gRPC reads GRPC_EXPERIMENTS once, when it is imported,
and only a new process shows what importing prism does to it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prism.fabric.grpc_engine import (
    IOMGR_EXPERIMENTS,
    OPT_OUT,
    _minor,
    iomgr_setting,
    prefer_iomgr,
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
    assert _minor("1.9") == (1, 9)
    assert _minor("x.1") is None
    assert _minor("1.") is None


def test_prefer_iomgr_writes_only_what_it_decided() -> None:
    env: dict[str, str] = {"GRPC_EXPERIMENTS": "mine"}
    assert prefer_iomgr(env) is None
    assert env == {"GRPC_EXPERIMENTS": "mine"}


def _fresh(code: str, **env: str) -> str:
    """What a new interpreter prints, with GRPC_EXPERIMENTS and the opt-out
    taken from `env` only."""
    base = {k: v for k, v in os.environ.items() if k not in ("GRPC_EXPERIMENTS", OPT_OUT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


SHOW = "import os; print(os.environ.get('GRPC_EXPERIMENTS'))"
KNOWN_HERE = iomgr_setting({}, grpc_loaded=False, grpcio_version=__import__("grpc").__version__)


@pytest.mark.parametrize("package", ["prism.driver", "prism.wrapper.cli", "prism.cluster"])
def test_importing_prism_first_sets_it_before_grpc_loads(package: str) -> None:
    # The value is set by the module's own import, which decides only while
    # gRPC is not loaded (gRPC would not read it after); the package then
    # loads gRPC with it in place.
    code = (
        "import sys, os\n"
        f"import {package}\n"
        "import prism.fabric.grpc_engine as e\n"
        "assert 'grpc' in sys.modules\n"
        "assert e.APPLIED == os.environ.get('GRPC_EXPERIMENTS')\n" + SHOW
    )
    assert _fresh(code) == str(KNOWN_HERE)


def test_an_application_that_loaded_grpc_first_keeps_its_engine() -> None:
    assert _fresh("import grpc\nimport prism.driver\n" + SHOW) == "None"


def test_opt_out_and_operator_choice_in_a_real_process() -> None:
    assert _fresh("import prism.driver\n" + SHOW, **{OPT_OUT: "1"}) == "None"
    assert _fresh("import prism.driver\n" + SHOW, GRPC_EXPERIMENTS="mine") == "mine"
