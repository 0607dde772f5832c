"""The driver's session state as pure code, without a wrapper: the key
epochs a frame may claim (driver/epochs.py) and the schema Hello gives
(driver/schema.py). The whole session runs against a real wrapper in
tests/integration (test_replica, test_tamper, test_security)."""

from __future__ import annotations

import numpy as np
import pytest

from prism.driver.epochs import MAX_EPOCH_AHEAD, EpochSealers
from prism.driver.schema import Schema
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errors import ExpiredEpochError, UnknownEpochError

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_frames_may_claim_the_current_epoch_or_a_bounded_later_one() -> None:
    keys = EpochSealers("acme", SECRET)
    keys.restart(3, SECRET)
    assert keys.sealer(3, 4).epoch == 3
    assert keys.sealer(3 + MAX_EPOCH_AHEAD, 4).epoch == 3 + MAX_EPOCH_AHEAD
    with pytest.raises(ExpiredEpochError):
        keys.sealer(2, 4)
    with pytest.raises(UnknownEpochError):
        keys.sealer(4 + MAX_EPOCH_AHEAD, 4)
    assert keys.sealer(3, 4) is keys.sealer(3, 4)  # cached


def test_rotation_refuses_older_epochs_and_a_new_secret_new_keys() -> None:
    keys = EpochSealers("acme", SECRET)
    old = keys.sealer(0, 4)
    keys.rotate_to(2)
    assert keys.epoch == 2
    with pytest.raises(ExpiredEpochError):
        keys.sealer(1, 4)
    keys.restart(0, OTHER)  # a handshake under a secret re-read from disk
    assert keys.sealer(0, 4) is not old
    assert keys.sealer(0, 4).keys.hmac_key != old.keys.hmac_key


def _hello(*tables: pb.TableSchema, text_dim: int = 0) -> pb.HelloResponse:
    return pb.HelloResponse(tables=list(tables), text_embedder_dim=text_dim)


ITEMS = pb.TableSchema(
    name="public.items",
    columns=[pb.Column(name="id", type_name="int8", is_key=True)],
    key_columns=["id"],
    has_vectors=True,
    vector_source="column:v",
    source_dim=8,
    vector_dim=4,
)
DOCS = pb.TableSchema(
    name="public.docs",
    key_columns=["id"],
    has_vectors=True,
    vector_source="text:body",
    text_columns=["body"],
    source_dim=16,
    vector_dim=16,
)


def test_a_hello_with_other_tables_says_the_replica_must_be_rebuilt() -> None:
    schema = Schema("acme")
    assert schema.update(_hello(ITEMS), b"k" * 32) is True
    assert schema.update(_hello(ITEMS), b"k" * 32) is False
    assert schema.update(_hello(ITEMS, DOCS, text_dim=16), b"k" * 32) is True
    info = schema.tables["public.items"]
    assert (info.key_columns, info.source_dim, info.vector_dim) == (("id",), 8, 4)
    assert schema.tables["public.docs"].text_embedded


def test_queries_are_projected_with_the_tenants_key() -> None:
    schema = Schema("acme")
    schema.update(_hello(ITEMS, DOCS, text_dim=16), b"k" * 32)
    items, docs = schema.tables["public.items"], schema.tables["public.docs"]
    emb = np.arange(1.0, 9.0)
    q = schema.query_vector(items, emb, None)
    assert q is not None and q.shape == (4,)
    # Another projection key is another keyed space.
    other = Schema("acme")
    other.update(_hello(ITEMS), b"j" * 32)
    q2 = other.query_vector(other.tables["public.items"], emb, None)
    assert q2 is not None and not np.allclose(q, q2)
    # What a table cannot answer is None, not an error.
    assert schema.query_vector(items, None, "red shoes") is None
    assert schema.query_vector(docs, emb, None) is None
    assert schema.query_vector(items, np.ones(3), None) is None
    t = schema.query_vector(docs, None, "red shoes")
    assert t is not None and t.shape == (16,)


def test_a_hello_names_the_matrices_to_make_and_refuses_impossible_dimensions() -> None:
    """Schema.update makes no matrix (the driver makes them on a worker
    thread from matrix_seeds), but still refuses a table whose projection
    cannot exist, at the Hello rather than at the first query."""
    from prism.fabric.errors import FabricError
    from prism.fabric.keys import derive_projection_seed

    schema = Schema("acme")
    schema.update(_hello(ITEMS, DOCS, text_dim=16), b"k" * 32)
    seed = derive_projection_seed(b"k" * 32, "acme")
    assert schema.matrix_seeds() == [(seed, 8), (seed, 16)]
    wide = pb.TableSchema(
        name="public.wide", key_columns=["id"], has_vectors=True, source_dim=4, vector_dim=8
    )
    with pytest.raises(FabricError, match="out_dim=8, source_dim=4"):
        Schema("acme").update(_hello(wide), b"k" * 32)
