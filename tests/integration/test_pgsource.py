"""PostgresSource's initial copy against a real PostgreSQL 16: the copy values
every column exactly as the stream does (the store must not depend on which
path brought a row), with the vector column loaded straight into float32."""

from __future__ import annotations

import time
from itertools import chain
from typing import Any

import numpy as np
import pytest
from conftest import TestDB

from prism.wrapper.config import config_from_mapping
from prism.wrapper.sources.base import RowChange
from prism.wrapper.sources.postgres.source import PostgresSource

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE arr (id int8 PRIMARY KEY, emb real[], other real[], note text);
CREATE TABLE vec (id int8 PRIMARY KEY, v vector(3), other real[]);
"""
ROWS = """
INSERT INTO arr VALUES
    (1, '{0.1,-2.5,3}', '{0.1,0.2}', 'plain'),
    (2, NULL, NULL, 'null vector'),
    (3, '{1,NULL,3}', '{NULL}', 'null element'),
    (4, '{{1,2},{3,4}}', '{{1},{2}}', 'two dimensions'),
    (5, '{}', '{}', 'empty'),
    (6, '{1e-45,3.4028235e38,-0}', '{1e-45}', 'edges');
INSERT INTO vec VALUES (1, '[0.1,-2.5,3]', '{0.5}'), (2, NULL, NULL), (3, '[0,0,1e-3]', '{}');
"""


def _source(db: TestDB, binary: bool) -> PostgresSource:
    cfg = config_from_mapping(
        {
            "database": {
                "dsn": db.dsn,
                "slot": f"prism_{db.name}_src",
                "publication": "prism_src",
                "binary": binary,
            },
            "server": {"tenant_id": "t", "secret_file": "/unused", "insecure": True},
            "tables": [
                {"name": "public.arr", "vector_column": "emb", "vector_dim": 3},
                {"name": "public.vec", "vector_column": "v", "vector_dim": 3},
            ],
        },
        env={},
    )
    return PostgresSource(cfg)


def _plain(v: Any) -> Any:
    """A value with its exact type spelled out, for comparing two decodings."""
    if isinstance(v, np.ndarray):
        return ("f32", str(v.dtype), v.tobytes())
    if isinstance(v, list):
        return ("list", [_plain(x) for x in v])
    return (type(v).__name__, v)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_copy_values_rows_as_the_stream_does(db: TestDB, binary: bool) -> None:
    db.execute(SCHEMA)
    db.execute(ROWS)
    src = _source(db, binary)
    try:
        assert not src.check_prerequisites()
        src.discover()
        assert src.binary is binary
        src.prepare()
        point = src.begin_snapshot()
        copied = {
            t: {r["id"]: r for r in chain.from_iterable(src.snapshot_rows(t, batch=2))}
            for t in ("public.arr", "public.vec")
        }
        src.end_snapshot()
        # The same rows again, after the snapshot: through the stream.
        db.execute(
            "INSERT INTO arr SELECT id + 100, emb, other, note FROM arr;"
            "INSERT INTO vec SELECT id + 100, v, other FROM vec;"
        )
        src.start_stream(point)
        streamed: dict[str, dict[int, dict[str, Any]]] = {"public.arr": {}, "public.vec": {}}
        deadline = time.monotonic() + 20
        for stx in src.transactions(0.2):
            assert time.monotonic() < deadline, "the stream did not bring the rows"
            for ch in stx.changes if stx is not None else ():
                assert isinstance(ch, RowChange) and ch.new is not None
                streamed[ch.table][ch.new["id"] - 100] = ch.new
            if sum(map(len, streamed.values())) == 9:
                break
    finally:
        src.close()
    for table, rows in copied.items():
        assert set(rows) == set(streamed[table])
        for i, row in rows.items():
            got = {k: _plain(v) for k, v in row.items() if k != "id"}
            want = {k: _plain(v) for k, v in streamed[table][i].items() if k != "id"}
            assert got == want, (table, i)
    if binary:
        # The vector column arrives as float32, exactly; other real[] as lists.
        emb = copied["public.arr"][1]["emb"]
        assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
        assert emb.tolist() == np.array([0.1, -2.5, 3], dtype=np.float32).tolist()
        assert isinstance(copied["public.arr"][1]["other"], list)
        assert isinstance(copied["public.vec"][1]["v"], np.ndarray)
        assert copied["public.arr"][3]["emb"][1] is None  # NULL element: the general path
