"""A probe of glibc's malloc in a fresh interpreter, for the heap tests: the
environment's own malloc settings (MALLOC_* variables, GLIBC_TUNABLES) left
out, since they would decide before the code under test does."""

from __future__ import annotations

import os
import subprocess
import sys


def run_probe(
    code: str, *args: str, malloc_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `code` with `args` in a new Python; its output, checked.
    `malloc_env`: malloc settings to run it with instead (as an operator's)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    env.update(malloc_env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
