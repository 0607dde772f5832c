"""The space a table's vector index lives in: sealed, not unsealed.

Between opening a frame (prism.fabric.frames.open_frame with unseal=False
hands the vectors over still sealed, V_enc = V @ K) and the index
(driver/index.py). Unsealing is a (rows x dim) @ (dim x dim) product per
frame, the largest per-row cost of opening one (about 3 us a row at 384
dimensions on one core, measured in benchmark/driver_apply.py), paid on
every row of every bootstrap and change. K is orthogonal, so cosine
similarity is the same in the sealed space as in the unsealed one: an index
can keep the vectors as they arrive, and a query is sealed into that space
instead, one vector per query rather than one per row.

An index takes the space of the first vectors it is given: the key epoch's
sealed space of the bootstrap that built it (a Sealer), or the unsealed,
projected space (None) for vectors given unsealed. Vectors sealed under
another epoch or secret (after a key rotation, until the next bootstrap)
are carried into the index's space by one product with K_from.T @ K_index
(prism.fabric.sealing.space_change): what unsealing cost before. A
warm-restart snapshot records the space (driver/snapshot.py).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from prism.driver.index import VectorIndex
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.sealing import Sealer, space_change


def space_of(index: VectorIndex) -> Sealer | None:
    """The Sealer whose sealed space `index` holds its vectors in; None for
    the unsealed space (also while it has none yet)."""
    space = index.space
    assert space is None or isinstance(space, Sealer)
    return space


def into_index_space(index: VectorIndex, vectors: np.ndarray, sealer: Sealer | None) -> np.ndarray:
    """`vectors` (sealed by `sealer`, or unsealed for None) in the space of
    `index`, which adopts the space of the first vectors it is given."""
    if not index.space_set:
        index.space, index.space_set = sealer, True
        return vectors
    m = space_change(sealer, space_of(index))
    return vectors if m is None else np.asarray(vectors, dtype=np.float32) @ m


def query_in_index_space(index: VectorIndex, query: np.ndarray) -> np.ndarray:
    """A query vector in the unsealed (projected) space, sealed into the
    space of `index`."""
    m = space_change(None, space_of(index))
    return query if m is None else np.asarray(query, dtype=np.float32) @ m


# -- warm-restart snapshots -------------------------------------------------

_TAG_LABEL = b"prism/index-space/v1"


def _tag(sealer: Sealer) -> str:
    # Names the matrix without revealing it: a snapshot's reader checks that
    # the epoch it derives under its own secret is the space the vectors are in.
    return hashlib.sha256(_TAG_LABEL + sealer.space).hexdigest()[:32]


def space_record(index: VectorIndex) -> dict[str, object] | None:
    """What a snapshot keeps of the index's space: None for the unsealed
    space, else the key epoch and a tag of its matrix."""
    space = space_of(index)
    if space is None:
        return None
    return {"epoch": space.epoch, "tag": _tag(space)}


def space_from_record(record: object, secret: bytes, tenant_id: str, dim: int) -> Sealer | None:
    """The Sealer of a snapshot's space record (space_record), derived from
    `secret`. ValueError when the record is malformed or names a matrix this
    secret does not derive (the index was built under another secret)."""
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        raise ValueError(f"index space record {record!r} is malformed")
    sealer = Sealer(derive_epoch_keys(secret, tenant_id, record["epoch"]), dim)
    if not hmac.compare_digest(str(record.get("tag", "")), _tag(sealer)):
        raise ValueError(
            f"the index's vectors are sealed with key epoch {record['epoch']} of another secret"
        )
    return sealer.prepare()  # K now, on the loader's thread, not at the first query
