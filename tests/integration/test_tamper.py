"""Frames altered in flight are rejected, counted, and the driver resumes from
its last good position. A real gRPC server over TCP serves a real store; a
servicer wrapper tampers with chosen frames at the application layer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import canonical_bytes, seal_frame
from prism.fabric.keys import derive_epoch_keys, load_secret, write_secret
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer
from prism.wrapper.auth import Authenticator, TenantSecrets
from prism.wrapper.config import config_from_mapping
from prism.wrapper.keyring import Keyring
from prism.wrapper.pipeline import Pipeline
from prism.wrapper.server import WrapperServicer, WrapperState, create_server
from prism.wrapper.store import Store
from support.servers import driver_for

pytestmark = pytest.mark.integration
ROWS = 40
DIM = 8


def flip_vector_byte(f: pb.Frame) -> pb.Frame:
    g = pb.Frame()
    g.CopyFrom(f)
    v = bytearray(g.vectors)
    v[len(v) // 2] ^= 0x01
    g.vectors = bytes(v)
    return g


def resign_with_wrong_key(f: pb.Frame) -> pb.Frame:
    g = pb.Frame()
    g.CopyFrom(f)
    wrong = Sealer(derive_epoch_keys(b"w" * 32, g.tenant_id, g.key_epoch), 0)
    seal_frame(g, wrong, b"", b"")
    g.watermark = wrong.watermark(canonical_bytes(g))
    return g


class Tampering(WrapperServicer):
    """Alters the n-th data frame of the first Subscribe call only."""

    def __init__(self, state: WrapperState, nth: int, how) -> None:  # type: ignore[no-untyped-def]
        super().__init__(state)
        self.nth, self.how, self.calls, self.tampered = nth, how, 0, 0

    def Subscribe(self, request, context) -> Iterator[pb.Frame]:  # type: ignore[no-untyped-def]
        self.calls += 1
        data_frames = 0
        for f in super().Subscribe(request, context):
            if f.count:
                data_frames += 1
                if self.calls == 1 and data_frames == self.nth:
                    self.tampered += 1
                    yield self.how(f)
                    continue
            yield f


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "t.secret"
    write_secret(secret_file)
    cfg = config_from_mapping(
        {
            "database": {"dsn": "host=unused"},
            "chorus": {"tenant_id": "acme", "secret_file": str(secret_file), "insecure": True},
            "store": {"path": str(tmp_path / "s.sqlite3")},
            "tables": [{"name": "public.t", "vector_column": "v", "vector_dim": DIM}],
        },
        env={},
    )
    secret = load_secret(secret_file)
    store = Store(cfg.store_path, "normal")
    store.reset("s")
    rng = np.random.default_rng(0)
    keyring = Keyring(cfg.store_path, ["acme"], 0)
    pipeline = Pipeline(cfg, store, {"acme": keyring.projection_key("acme")})
    with store.transaction() as txn:
        txn.set_table_columns(
            "public.t",
            json.dumps(
                {
                    "columns": [["id", "int8"], ["name", "text"], ["v", "_float4"]],
                    "key_columns": ["id"],
                }
            ),
        )
        for i in range(ROWS):
            row = {"id": i, "name": f"row {i}", "v": rng.normal(size=DIM).tolist()}
            txn.upsert(
                "public.t",
                encode_key([i]),
                encode_row(row),
                pipeline.vectorizer.vector_bytes("public.t", row),
                1,
            )
        txn.mark_snapshot_done()
    auth = Authenticator({"acme": TenantSecrets("acme", (secret,))})
    state = WrapperState(cfg=cfg, store=store, pipeline=pipeline, auth=auth, keyring=keyring)
    return state, secret_file


async def run_with(served, how) -> tuple[Tampering, dict]:  # type: ignore[no-untyped-def]
    state, secret_file = served
    servicer = Tampering(state, nth=2, how=how)
    server, port = create_server(state, "127.0.0.1:0", servicer)
    server.start()
    try:
        async with driver_for(port, secret_file, max_frame_rows=8, insecure=True) as driver:
            await driver.wait_ready(timeout=30)
            rows = {k: driver.get("public.t", k) for k in range(ROWS)}
            stats = driver.stats()
    finally:
        server.stop(0)
    assert all(r is not None and r["name"] == f"row {k}" for k, r in rows.items())
    return servicer, stats


@pytest.mark.parametrize("how", [flip_vector_byte, resign_with_wrong_key])
async def test_tampered_frame_is_rejected_and_stream_resumes(served, how) -> None:  # type: ignore[no-untyped-def]
    servicer, stats = await run_with(served, how)
    assert servicer.tampered == 1
    assert stats["frames_rejected"] == 1
    assert stats["reconnects"] >= 1 and servicer.calls >= 2
    assert stats["rows"]["public.t"] == ROWS
    assert stats["bootstraps"] == 1  # the half-received bootstrap was never applied
