"""`pip install "prismlib[fabric]"` (the seed's name for the driver's extra)
in a fresh venv (issue 15): the driver imports as `prism.ffi`, and the
installed `prism-wrapper run` says to install prismlib[wrapper] instead of
a psycopg traceback.

Offline and fast: prismlib is built into a wheel once (no build isolation),
and the core dependencies are the distributions this test's own venv
already holds, linked into the fresh venv's site-packages; pip then
installs prismlib[fabric] with --no-index, resolving the extra against
them. The database libraries (psycopg, pymysql) are not linked: that is the
point.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation")
SOURCES = ("pyproject.toml", "README.md", "fabric", "wrapper", "driver", "ffi", "cache", "cluster")


def _name(requirement: str) -> str:
    m = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert m is not None, requirement
    return m[0].lower().replace("_", "-")


def core_distributions() -> set[str]:
    """prismlib's core requirements (what [fabric] installs) and theirs."""
    todo = [_name(r) for r in metadata.requires("prismlib") or [] if "extra ==" not in r]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for r in metadata.requires(name) or []:
            if "extra ==" not in r and 'sys_platform == "win32"' not in r:
                todo.append(_name(r))
    return seen


def link_distribution(name: str, site: Path) -> None:
    """Make an installed distribution (code and dist-info) visible in
    another venv's site-packages."""
    dist = metadata.distribution(name)
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    base = Path(str(dist.locate_file("")))
    for top in tops:
        if top == "__pycache__" or (site / top).exists():
            continue
        (site / top).symlink_to(base / top)


def test_a_fabric_only_install_imports_prism_ffi_and_prism_wrapper_explains(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for item in SOURCES:
        path = ROOT / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / item)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [*PIP_WHEEL, "--no-index", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    assert site != Path(sysconfig.get_paths()["purelib"])
    for name in core_distributions():
        link_distribution(name, site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    install = subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--disable-pip-version-check",
            "--find-links",
            str(wheels),
            "prismlib[fabric]",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # The driver, under the seed's name; and no database library came along.
    probe = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.util as u, prism.ffi, prism.driver; "
            "from prism.ffi import PrismDriver, DriverConfig; "
            "assert PrismDriver is prism.driver.PrismDriver; "
            "print([m for m in ('psycopg', 'pymysql') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
    config = tmp_path / "wrapper.toml"
    config.write_text(
        '[database]\ndsn = "host=db"\n[chorus]\ntenant_id = "shop"\n'
        f'secret_file = "{tmp_path / "s"}"\ninsecure = true\n'
    )
    run = subprocess.run(
        [str(env_dir / "bin" / "prism-wrapper"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "pip install 'prismlib[wrapper]'" in run.stderr
    assert "Traceback" not in run.stderr
