"""The wrapper's keyring: key epochs per tenant (timed and on demand, also
from another process) and the projection key that never changes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from prism.wrapper.errors import StoreError
from prism.wrapper.keyring import Keyring


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_epochs_start_at_one_and_projection_keys_persist(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    ring = Keyring(path, ["a", "b"], 0)
    a, b = ring.get("a"), ring.get("b")
    assert a.epoch == b.epoch == 1
    assert len(a.projection_key) == 32 and a.projection_key != b.projection_key
    ring.close()
    again = Keyring(path, ["a", "b", "c"], 0)
    assert again.projection_key("a") == a.projection_key  # survives a restart
    assert again.epoch("c") == 1
    again.close()


def test_timed_rotation_advances_once_per_period(tmp_path: Path) -> None:
    clock = Clock()
    ring = Keyring(tmp_path / "s.sqlite3", ["a"], 60, clock=clock)
    key = ring.projection_key("a")
    clock.now += 59
    assert ring.epoch("a") == 1
    clock.now += 1
    assert ring.epoch("a") == 2
    assert ring.epoch("a") == 2  # not again until another period passes
    clock.now += 60
    assert ring.epoch("a") == 3
    assert ring.projection_key("a") == key  # never rotates
    ring.close()


def test_rotate_keys_from_another_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    daemon = Keyring(path, ["a", "b"], 0)
    cli = Keyring(path, ["a", "b"], 0)
    assert cli.rotate(["a"]) == {"a": 2}
    assert cli.rotate() == {"a": 3, "b": 2}
    deadline = time.monotonic() + 5
    while daemon.epoch("a") != 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (daemon.epoch("a"), daemon.epoch("b")) == (3, 2)
    with pytest.raises(StoreError, match=r"no keys for tenant\(s\) \['zed'\]"):
        cli.rotate(["zed"])
    cli.close()
    daemon.close()


def test_a_closed_keyring_keeps_answering_from_its_cache(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "s.sqlite3", ["a"], 0)
    ring.close()
    assert ring.epoch("a") == 1  # streams draining at shutdown do not crash
