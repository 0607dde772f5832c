"""The change feed's hub (prism.driver.changes) on real frames: order,
table filters, batch boundaries, replay from a retained position, the
typed errors for an expired position and an overflowing consumer, a
bootstrap's reset, and the end of the feed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prism.driver import ChangeFeedOverflowError, ChangePositionExpiredError, NotReadyError
from prism.driver.changes import Change, ChangeHub, ChangeStream
from prism.driver.follow import Batch
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import DecodedFrame, build_frame, open_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer

SUB = b"s" * 16
SEALER = Sealer(derive_epoch_keys(bytes(range(32)), "acme", 0), 4)


def frame(table: str, changes: list[tuple[int, str, int]]) -> DecodedFrame:
    """(key, op, position) per change; rows carry their position as `rev`."""
    f = build_frame(
        sealer=SEALER,
        tenant_id="acme",
        stream_id="st",
        kind=pb.CHANGES,
        table=table,
        sequence=1,
        commit_position=0,
        head_position=0,
        commit_time_us=0,
        keys=[encode_key([k]) for k, _, _ in changes],
        ops="".join(op for _, op, _ in changes).encode(),
        positions=[p for _, _, p in changes],
        vectors=np.zeros((len(changes), 4), np.float32),
        vector_mask=np.zeros(len(changes), bool),
        payloads=[b"" if op == "D" else encode_row({"id": k, "rev": p}) for k, op, p in changes],
        vector_dim=4,
        subscription=SUB,
    )
    return open_frame(f, lambda _e: SEALER, tenant_id="acme", stream_id=None, subscription=SUB)


def batch(position: int, *frames: DecodedFrame, reset: bool = False) -> Batch:
    return Batch(reset, "st", position, position, 0, list(frames))


async def take(stream: ChangeStream, n: int) -> list[Change]:
    return [await asyncio.wait_for(stream.__anext__(), 1) for _ in range(n)]


async def test_changes_in_order_with_batch_boundaries_and_table_filter() -> None:
    hub = ChangeHub(retention=100, buffer=100)
    every = hub.subscribe(None, None)
    items = hub.subscribe(["public.items"], None)
    hub.publish(
        batch(
            3,
            frame("public.items", [(1, "U", 1), (2, "U", 2)]),
            frame("public.other", [(9, "U", 3)]),
        ),
        [],
    )
    hub.publish(batch(4, frame("public.items", [(1, "D", 4)])), [])
    got = await take(every, 4)
    assert [(c.table, c.op, c.key, c.position) for c in got] == [
        ("public.items", "upsert", 1, 1),
        ("public.items", "upsert", 2, 2),
        ("public.other", "upsert", 9, 3),
        ("public.items", "delete", 1, 4),
    ]
    assert [c.end_of_batch for c in got] == [False, False, True, True]
    assert [c.commit_position for c in got] == [3, 3, 3, 4]
    assert got[0].row == {"id": 1, "rev": 1} and got[3].row is None
    assert [c.key for c in await take(items, 3)] == [1, 2, 1]


async def test_replay_from_a_retained_position_and_expiry() -> None:
    hub = ChangeHub(retention=3, buffer=100)
    for p in range(1, 6):
        hub.publish(batch(p, frame("t", [(p, "U", p)])), [])
    # Positions 3, 4, 5 are retained: every change after 2 can be replayed.
    replay = hub.subscribe(None, from_position=2)
    assert [c.position for c in await take(replay, 3)] == [3, 4, 5]
    hub.publish(batch(6, frame("t", [(6, "U", 6)])), [])
    assert [c.position for c in await take(replay, 1)] == [6]
    with pytest.raises(ChangePositionExpiredError, match=r"after position 1 .*find"):
        hub.subscribe(None, from_position=1)
    # A bootstrap ends the history: nothing before it can be replayed.
    live = hub.subscribe(None, None)
    hub.publish(batch(10, frame("t", [(1, "U", 10)]), reset=True), ["t", "u"])
    assert [(c.table, c.op, c.key) for c in await take(live, 2)] == [
        ("t", "reset", None),
        ("u", "reset", None),
    ]
    with pytest.raises(ChangePositionExpiredError):
        hub.subscribe(None, from_position=6)
    assert hub.subscribe(None, from_position=10) is not None


async def test_a_slow_consumer_gets_a_typed_overflow_not_a_gap() -> None:
    hub = ChangeHub(retention=100, buffer=3)
    slow = hub.subscribe(None, None)
    fast = hub.subscribe(None, None)
    hub.publish(batch(2, frame("t", [(1, "U", 1), (2, "U", 2)])), [])
    assert [c.position for c in await take(fast, 2)] == [1, 2]
    hub.publish(batch(4, frame("t", [(3, "U", 3), (4, "U", 4)])), [])  # slow: 4 > 3
    assert [c.position for c in await take(fast, 2)] == [3, 4]
    assert [c.position for c in await take(slow, 2)] == [1, 2]  # what it held
    with pytest.raises(ChangeFeedOverflowError, match="from_position=2"):
        await take(slow, 1)
    # ... and it resumes from the position the error names.
    again = hub.subscribe(None, from_position=2)
    assert [c.position for c in await take(again, 2)] == [3, 4]


async def test_the_feed_ends_with_the_driver_or_its_failure() -> None:
    hub = ChangeHub(retention=10, buffer=10)
    s = hub.subscribe(None, None)
    hub.publish(batch(1, frame("t", [(1, "U", 1)])), [])
    waiting = asyncio.ensure_future(take(s, 2))
    await asyncio.sleep(0.01)
    hub.end(None)
    with pytest.raises(StopAsyncIteration):
        await waiting
    hub2 = ChangeHub(retention=10, buffer=10)
    s2 = hub2.subscribe(None, None)
    hub2.end(NotReadyError("boom"))
    with pytest.raises(NotReadyError, match="boom"):
        await take(s2, 1)
