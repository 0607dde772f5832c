"""wrapper/writeplan.py's plan(): which value of a write is the vector the
frames will seal, and WriteExecutor's sealing of that vector ahead while
the statement runs (wrapper/preseal.py): that vector only, once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.payload import encode_row
from prism.wrapper.config import config_from_mapping
from prism.wrapper.preseal import Presealed
from prism.wrapper.tables import TableShape
from prism.wrapper.writeplan import Float4Array, WriteError, plan
from prism.wrapper.writes import WriteExecutor

CFG = config_from_mapping(
    {
        "database": {"dsn": "postgresql://unused"},
        "server": {"tenant_id": "t", "secret_file": "/unused", "insecure": True},
        "tables": [
            {
                "name": "public.items",
                "vector_column": "emb",
                "vector_dim": 3,
                "writable": True,
            }
        ],
    },
    env={},
)
SHAPES = {
    "public.items": TableShape(
        "public.items",
        (("id", "int8"), ("emb", "_float4"), ("other", "_float4"), ("note", "text")),
        ("id",),
        CFG.table("public.items"),
    )
}


def _op(kind: int, key: dict[str, Any], data: dict[str, Any]) -> pb.WriteOp:
    return pb.WriteOp(
        kind=kind,
        table="items",
        key=encode_row(key),
        data=encode_row(data) if data else b"",
    )


@pytest.mark.parametrize("kind", [pb.UPSERT, pb.UPDATE])
def test_the_vector_is_the_vector_columns_value_only(kind: int) -> None:
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)  # the same length, another column
    p = plan(CFG, SHAPES, _op(kind, {"id": 1}, {"emb": emb, "other": other}), "")
    assert p.vector is not None and p.vector.tolist() == emb.tolist()
    # Both still go to the database as float4[].
    assert sum(isinstance(v, Float4Array) for v in p.params) == 2


def test_no_vector_when_the_write_leaves_it_out_or_sends_null() -> None:
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)
    assert plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"other": other}), "").vector is None
    assert plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": None}), "").vector is None
    assert plan(CFG, SHAPES, _op(pb.DELETE, {"id": 1}, {}), "").vector is None


def test_a_list_of_numbers_is_the_vector_in_float4() -> None:
    p = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": [1, 2.5, -3]}), "")
    assert p.vector is not None and p.vector.dtype == np.float32
    assert p.vector.tolist() == [1.0, 2.5, -3.0]


def test_a_vector_of_the_wrong_length_is_refused_naming_the_column() -> None:
    with pytest.raises(WriteError, match="emb"):
        plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": [1.0, 2.0]}), "")


def test_sealed_ahead_is_the_vector_only_and_once_when_the_statement_is_retried() -> None:
    executor = WriteExecutor.__new__(WriteExecutor)  # _ahead needs only its Presealed
    executor.presealed = Presealed()
    matrix = np.eye(3, dtype=np.float32)
    executor.presealed.used("public.items", matrix)
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    other = np.array([9.0, 8.0, 7.0], dtype=np.float32)
    planned = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": emb, "other": other}), "")
    make = executor._ahead([planned])
    assert make is not None
    make()
    make()  # a conflict ran the statement again
    assert executor.presealed.made == 1
    assert executor.presealed.take(matrix, [other.tobytes()]) is None
    (product,) = executor.presealed.take(matrix, [emb.tobytes()]) or []
    assert product.tolist() == emb.tolist()


def test_nothing_is_sealed_ahead_for_a_table_no_frame_sealed_yet() -> None:
    executor = WriteExecutor.__new__(WriteExecutor)
    executor.presealed = Presealed()
    emb = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    planned = plan(CFG, SHAPES, _op(pb.UPSERT, {"id": 1}, {"emb": emb}), "")
    assert executor._ahead([planned]) is None
