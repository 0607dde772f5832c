"""A frame's length-prefixed blocks (keys, payloads, old keys) cut into
entries: the native splitter (fabric/_prefixed.c) and its Python twin in
fabric/frames.py give the same entries and fail the same way, on blocks
that fit and on blocks cut, extended or lying about a length."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import prism.fabric.frames as frames_module
from prism.fabric.errors import FrameError
from prism.fabric.frames import _split_prefixed


def _block(entries: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in entries)


def _outcome(block: bytes, count: int, text: bool) -> tuple[str, object]:
    try:
        return "ok", _split_prefixed(block, count, "keys", text)
    except UnicodeDecodeError as exc:
        return "utf8", str(exc)
    except FrameError as exc:
        return "frame", str(exc)


def _python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames_module, "_prefixed", None)


def test_the_native_splitter_is_built() -> None:
    if frames_module._prefixed is None:
        pytest.fail("prism.fabric._prefixed did not build (gcc and Python.h are needed)")


@settings(max_examples=300, deadline=None)
@given(
    entries=st.lists(st.binary(max_size=40), max_size=12),
    count_delta=st.integers(-2, 2),
    cut=st.integers(-6, 6),
    text=st.booleans(),
)
def test_native_and_python_agree(
    entries: list[bytes], count_delta: int, cut: int, text: bool
) -> None:
    block = _block(entries)
    # Shorten or extend the block, and claim more or fewer entries than it holds.
    block = block[: len(block) + cut] if cut < 0 else block + b"\x07" * cut
    count = len(entries) + count_delta  # may be negative: no entries, as range()
    native = _outcome(block, count, text)
    with pytest.MonkeyPatch.context() as mp:
        _python(mp)
        python = _outcome(block, count, text)
    assert native == python


@pytest.mark.parametrize("impl", ["native", "python"])
@pytest.mark.parametrize(
    ("block", "count", "message"),
    [
        (b"\x00" * 7, 2, "keys block of 7 bytes is too short for 2 entries"),
        (_block([b"ab"]) + b"\x05\x00", 2, "keys block is truncated before its 2 entries end"),
        (struct.pack("<I", 9) + b"abc" + _block([b"x"]), 2, "truncated before its 2 entries"),
        (struct.pack("<I", 4) + b"abc", 1, "keys block's last entry runs past the end"),
        (_block([b"ab", b"c"]) + b"zz", 2, "keys block has 2 bytes after its 2 entries"),
    ],
)
def test_a_block_that_does_not_fit_its_entries_is_refused(
    impl: str, block: bytes, count: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if impl == "python":
        _python(monkeypatch)
    with pytest.raises(FrameError, match=message):
        _split_prefixed(block, count, "keys")


@pytest.mark.parametrize(
    "block",
    [
        struct.pack("<I", 0xFFFFFFFF) + b"abc",  # a length near 2**32, last entry
        struct.pack("<I", 0xFFFFFFFC) + _block([b"x"]),  # ... and not the last
        struct.pack("<I", 0x80000000) + b"\0" * 4,  # past 2**31: negative as a 32-bit size
    ],
)
def test_huge_lengths_fail_as_in_python(block: bytes) -> None:
    native = [_outcome(block, count, False) for count in (1, 2)]
    with pytest.MonkeyPatch.context() as mp:
        _python(mp)
        python = [_outcome(block, count, False) for count in (1, 2)]
    assert native == python
    assert all(kind == "frame" for kind, _ in native)


@pytest.mark.parametrize("impl", ["native", "python"])
def test_entries_come_back_as_bytes_or_text(impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if impl == "python":
        _python(monkeypatch)
    entries = ["[1]", "", '["é",2]']
    block = _block([e.encode() for e in entries])
    assert _split_prefixed(block, 3, "keys") == [e.encode() for e in entries]
    assert _split_prefixed(memoryview(block), 3, "keys", True) == entries
    with pytest.raises(UnicodeDecodeError):
        _split_prefixed(_block([b"ok", b"\xff"]), 2, "keys", True)
