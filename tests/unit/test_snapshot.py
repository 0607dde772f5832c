"""Warm-restart snapshots (driver/snapshot.py, driver/warmstart.py) as pure
code over files: a replica built from real frames is written, read back
equal (rows, index scores bit for bit), and every kind of damage to the
file, another secret or tenant, and every mismatch with Hello is refused.
The whole warm restart runs against a real wrapper in
tests/integration/test_warm_restart.py."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from test_replica_rows import DIM, SECRET, TENANT, T, frame

from prism.driver.index import IndexParams
from prism.driver.replica import Replica
from prism.driver.schema import TableInfo
from prism.driver.snapshot import (
    MAGIC,
    Restored,
    SnapshotError,
    capture,
    projection_tag,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from prism.driver.warmstart import why_not_served
from prism.fabric import wrapper_pb2 as pb

DOCS = "public.docs"
PKEY = b"k" * 32
# Partitioned with every list probed: answers equal the exact ones.
PARAMS = IndexParams(
    exact_limit=40, nlist=4, nprobe=4, reduced_dim=2, rerank=1000, train_sample=40, background=False
)
INFOS = {
    T: TableInfo(T, ("id",), (("id", "int8"), ("v", "float4[]")), True, "column:v", (), DIM, DIM),
    DOCS: TableInfo(DOCS, ("id",), (("id", "int8"),), False, "", (), 0, 0),
}


def replica(n: int = 300, params: IndexParams = PARAMS) -> Replica:
    rep = Replica.for_tables({T: (("id",), (), DIM), DOCS: (("id",), (), 0)}, params)
    rng = np.random.default_rng(3)
    changes = [
        (i, "U", i % 7 != 0, rng.integers(-5, 6, DIM).astype(float).tolist(), i) for i in range(n)
    ]
    changes += [(i, "D", False, [0.0] * DIM, 0) for i in range(0, n, 11)]
    for lo in range(0, len(changes), 64):
        rep.apply_frames([frame(changes[lo : lo + 64])])
    docs = frame([(i, "U", False, [0.0] * DIM, i) for i in range(5)])
    docs.table = DOCS
    rep.apply_frames([docs])
    return rep


def write(
    tmp: Path,
    rep: Replica,
    *,
    position: int = 120,
    secret: bytes = SECRET,
    params: IndexParams = PARAMS,
) -> Path:
    path = snapshot_path(tmp, TENANT)
    snap = capture(
        rep,
        INFOS,
        tenant_id=TENANT,
        stream_id="stream-1",
        position=position,
        head=130,
        projection_tag=projection_tag(secret, TENANT, PKEY),
        index_params=params,
    )
    write_snapshot(path, snap, secret)
    return path


def read(path: Path, params: IndexParams = PARAMS, secret: bytes = SECRET) -> Restored:
    return read_snapshot(path, secret, TENANT, params)


def queries(rep: Replica, exact: bool = False) -> list[list[tuple[str, float]]]:
    idx = rep.tables[T].index
    assert idx is not None
    rng = np.random.default_rng(8)
    return [
        idx.query(rng.standard_normal(DIM).astype(np.float32), 10, -1.0, exact=exact)
        for _ in range(20)
    ]


def test_a_snapshot_reads_back_as_the_replica_it_was(tmp_path: Path) -> None:
    rep = replica()
    idx = rep.tables[T].index
    assert idx is not None and idx.kind == "ivf"
    path = write(tmp_path, rep)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    got = read(path)
    assert (got.stream_id, got.position, got.head, got.tables) == ("stream-1", 120, 130, INFOS)
    assert got.rows == sum(rep.row_counts().values())
    for name, t in rep.tables.items():
        assert got.replica.tables[name].payloads == t.payloads
        assert list(got.replica.tables[name].payloads) == list(t.payloads)  # order too
    gidx = got.replica.tables[T].index
    assert gidx is not None and len(gidx) == len(idx) and gidx.partitioning is not None
    assert got.replica.tables[DOCS].index is None
    # The same grid vectors and partitioning: the same answers, bit for bit.
    assert queries(got.replica) == queries(rep)
    assert queries(got.replica, exact=True) == queries(rep, exact=True)
    assert gidx.kind == "ivf"


def test_the_rows_and_vectors_are_not_readable_on_disk(tmp_path: Path) -> None:
    rep = replica()
    path = write(tmp_path, rep)
    data = path.read_bytes()
    some = next(iter(rep.tables[T].payloads.values()))
    assert some not in data and b'"[1]"' not in data and b"[12]" not in data


def test_a_snapshot_of_an_empty_replica(tmp_path: Path) -> None:
    rep = Replica.for_tables({T: (("id",), (), DIM), DOCS: (("id",), (), 0)}, PARAMS)
    got = read(write(tmp_path, rep))
    assert got.replica.row_counts() == {T: 0, DOCS: 0} and got.rows == 0


def test_other_index_params_drop_the_partitioning_only(tmp_path: Path) -> None:
    rep = replica()
    other = IndexParams(exact_limit=10**6, background=False)
    got = read(write(tmp_path, rep), params=other)
    gidx = got.replica.tables[T].index
    assert gidx is not None and gidx.partitioning is None and gidx.kind == "exact"
    assert queries(got.replica, exact=True) == queries(rep, exact=True)


def test_a_loaded_index_trains_only_once_the_driver_lets_it(tmp_path: Path) -> None:
    """A snapshot of an exact index that a partitioning would now suit loads
    without starting a training: that ran beside the driver's start-up and
    held up its keyed matrices. Released (as the driver does once it serves
    the replica), it trains."""
    exact = IndexParams(exact_limit=10**6, background=False)
    got = read(write(tmp_path, replica(params=exact)), params=PARAMS)
    gidx = got.replica.tables[T].index
    assert gidx is not None and gidx.partitioning is None
    assert gidx.describe()["training"] is False and gidx.kind == "exact"
    gidx.hold_training(False)  # PARAMS train inline (background=False)
    assert gidx.partitioning is not None and gidx.kind == "ivf"


def test_a_loaded_partitioning_is_adopted_on_the_loop_once_released(tmp_path: Path) -> None:
    """A snapshot's partitioning is adopted lazily while loading (a worker
    thread, no loop); released on the driver's loop, adoption runs there by
    itself, with no query to drive it."""
    bg = dataclasses.replace(PARAMS, background=True)
    rep = replica(params=bg)
    src = rep.tables[T].index
    assert src is not None
    src.wait_trained(10)
    got = read(write(tmp_path, rep, params=bg), params=bg)
    gidx = got.replica.tables[T].index
    assert gidx is not None and gidx.partitioning is not None and not gidx._adopted

    async def release() -> None:
        gidx.hold_training(False)
        # Not within the swap's own call: the release waits for the loop.
        assert not gidx._adopted
        for _ in range(2000):  # gidx._adopted, not gidx.kind: that adopts by itself
            if gidx._adopted:
                return
            await asyncio.sleep(0.001)

    asyncio.run(release())
    assert gidx._adopted


def _blocks(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """(end of the header, [(offset, length) of each sealed block])."""
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    at = len(MAGIC) + 4 + hlen
    out = []
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        out.append((at, 8 + n))
        at += 8 + n
    return len(MAGIC) + 4 + hlen, out


def _damage(data: bytes, how: str, other: bytes) -> bytes:
    head_end, blocks = _blocks(data)
    b = bytearray(data)
    if how == "header":
        i = data.index(b'"position":120')
        b[i : i + 14] = b'"position":121'
    elif how == "magic":
        b[0] ^= 1
    elif how == "first-block":
        b[blocks[0][0] + 20] ^= 0x40
    elif how == "last-block":
        b[blocks[-1][0] + 9] ^= 1
    elif how == "tag":
        b[len(data) - 1] ^= 1
    elif how == "cut-last-block":
        del b[blocks[-1][0] :]
    elif how == "cut-short":
        del b[len(data) - 100 :]
    elif how == "extra-bytes":
        b += b"\x00" * 8
    elif how == "swapped-blocks":
        (a, la), (c, lc) = blocks[0], blocks[1]
        b = bytearray(data[:a] + data[c : c + lc] + data[a : a + la] + data[c + lc :])
    elif how == "block-from-another-file":
        oh, ob = _blocks(other)
        a, la = blocks[0]
        oa, ola = ob[0]
        b = bytearray(data[:a] + other[oa : oa + ola] + data[a + la :])
    elif how == "header-from-another-file":
        oh, _ = _blocks(other)
        b = bytearray(other[:oh] + data[head_end:])
    return bytes(b)


@pytest.mark.parametrize(
    "how",
    [
        "header",
        "magic",
        "first-block",
        "last-block",
        "tag",
        "cut-last-block",
        "cut-short",
        "extra-bytes",
        "swapped-blocks",
        "block-from-another-file",
        "header-from-another-file",
    ],
)
def test_a_damaged_snapshot_is_refused(tmp_path: Path, how: str) -> None:
    rep = replica()
    path = write(tmp_path, rep)
    other = write(tmp_path / "other", rep).read_bytes()  # same content, another file key
    path.write_bytes(_damage(path.read_bytes(), how, other))
    with pytest.raises(SnapshotError):
        read(path)


def test_another_secret_or_tenant_cannot_read_it(tmp_path: Path) -> None:
    path = write(tmp_path, replica())
    with pytest.raises(SnapshotError, match="integrity"):
        read(path, secret=bytes(range(1, 33)))
    with pytest.raises(SnapshotError, match="tenant"):
        read_snapshot(path, SECRET, "other-tenant", PARAMS)
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "none")


def test_a_snapshot_replaces_the_old_one_whole(tmp_path: Path) -> None:
    path = write(tmp_path, replica(100), position=5)
    write(tmp_path, replica(200), position=9)
    got = read(path)
    assert got.position == 9 and got.replica.row_counts()[T] == len(replica(200).tables[T].payloads)


def test_file_names_are_one_per_tenant_and_safe(tmp_path: Path) -> None:
    assert snapshot_path(tmp_path, "acme").name == "acme.prism-snapshot"
    odd = snapshot_path(tmp_path, "../x/y")
    assert odd.parent == tmp_path and "/" not in odd.name and not odd.name.startswith(".")


def _hello(**kw: object) -> pb.HelloResponse:
    base: dict[str, object] = {
        "stream_id": "stream-1",
        "head_position": 130,
        "retention_floor": 100,
    }
    return pb.HelloResponse(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hello", "tables", "pkey", "reason"),
    [
        (_hello(), INFOS, PKEY, None),
        (_hello(head_position=120), INFOS, PKEY, None),
        (_hello(retention_floor=120), INFOS, PKEY, None),
        (_hello(stream_id="stream-2"), INFOS, PKEY, "stream"),
        (_hello(retention_floor=121), INFOS, PKEY, "retention floor"),
        (_hello(head_position=119), INFOS, PKEY, "past the wrapper's head"),
        (_hello(), {T: INFOS[T]}, PKEY, "tables changed"),
        (_hello(), INFOS, b"j" * 32, "projection key"),
    ],
)
def test_a_verified_snapshot_is_served_only_when_hello_agrees(
    tmp_path: Path,
    hello: pb.HelloResponse,
    tables: dict[str, TableInfo],
    pkey: bytes,
    reason: str | None,
) -> None:
    got = read(write(tmp_path, replica(50)))
    why = why_not_served(got, hello, tables, projection_tag(SECRET, TENANT, pkey))
    assert (why is None) if reason is None else (why is not None and reason in why), why


def test_a_snapshot_file_is_written_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of the file before the rename, and of the directory after it."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = write(tmp_path, replica(20))
    assert len(synced) == 2 and ".tmp" in synced[0] and synced[1] == str(tmp_path)
    assert path.exists()
