"""fabric/libc.py: the one lookup of C library functions."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from prism.fabric.libc import libc_function


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's functions")
def test_a_function_the_c_library_has_is_typed_and_callable() -> None:
    getpid = libc_function("getpid", [], ctypes.c_int)
    assert getpid is not None and getpid() == os.getpid()


def test_a_function_it_lacks_is_none() -> None:
    assert libc_function("prism_no_such_function", [], ctypes.c_int) is None
