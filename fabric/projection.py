"""The tenant's keyed projection, applied by the wrapper after vectorizing.

Source embeddings (a vector column, or the text embedder's output) are
multiplied by a secret matrix P with orthonormal columns before they are
stored, so neither the wrapper's store nor the driver's index holds raw
embeddings. P depends only on the tenant's projection key (kept in the
wrapper's store, handed to authenticated drivers in Hello) and the two
dimensions, not on the key epoch or the secret, because projected vectors
outlive key and secret rotation.

With out_dim == source_dim, P is orthogonal and inner products, norms and
cosine similarity are preserved exactly (up to float rounding). Below that,
P is a random orthonormal projection: by Johnson-Lindenstrauss, cosine
similarity is preserved approximately, better the larger out_dim. Vectors are
not rescaled, so norms shrink by about sqrt(out_dim / source_dim).
"""

from __future__ import annotations

import functools

import numpy as np

from prism.fabric.errors import FabricError
from prism.fabric.keys import derive_projection_seed
from prism.fabric.sealing import keyed_orthogonal


@functools.lru_cache(maxsize=16)
def _projection_matrix(seed: bytes, source_dim: int, out_dim: int) -> np.ndarray:
    q = keyed_orthogonal(seed, source_dim)
    p = np.ascontiguousarray(q[:, :out_dim], dtype=np.float32)
    p.setflags(write=False)
    return p


def check_dims(source_dim: int, out_dim: int) -> None:
    """FabricError unless a projection from source_dim to out_dim exists."""
    if not 1 <= out_dim <= source_dim:
        raise FabricError(
            f"projection needs 1 <= out_dim <= source_dim, "
            f"got out_dim={out_dim}, source_dim={source_dim}"
        )


class Projection:
    """Projects float32 vectors from ``source_dim`` to ``out_dim`` dimensions."""

    def __init__(
        self, projection_key: bytes, tenant_id: str, source_dim: int, out_dim: int
    ) -> None:
        check_dims(source_dim, out_dim)
        self.tenant_id = tenant_id
        self.source_dim = source_dim
        self.out_dim = out_dim
        self.matrix = _projection_matrix(
            derive_projection_seed(projection_key, tenant_id), source_dim, out_dim
        )

    def __repr__(self) -> str:
        return (
            f"Projection(tenant_id={self.tenant_id!r}, "
            f"source_dim={self.source_dim}, out_dim={self.out_dim})"
        )

    def apply(self, v: np.ndarray) -> np.ndarray:
        """(n, source_dim) or (source_dim,) -> (n, out_dim) or (out_dim,), float32."""
        a = np.asarray(v, dtype=np.float32)
        if a.ndim not in (1, 2) or a.shape[-1] != self.source_dim:
            raise FabricError(
                f"projection expects vectors of dimension {self.source_dim}, got shape {a.shape}"
            )
        return a @ self.matrix
