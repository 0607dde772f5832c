"""What Hello tells a driver about its tenant: the tables, and the keyed
vector spaces a query is projected into.

Between the handshake (driver/link.py) and the reads (driver/api.py). Each
Hello replaces the tables; a change of shape makes the subscription rebuild
its replica. Queries go through the same keyed projection the wrapper
applied to the rows (prism.fabric.projection), so the index never holds raw
embeddings. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.embedder import TextEmbedder
from prism.fabric.keys import derive_projection_seed
from prism.fabric.projection import Projection, check_dims


@dataclass(frozen=True)
class TableInfo:
    name: str
    key_columns: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    has_vectors: bool
    vector_source: str
    text_columns: tuple[str, ...]
    source_dim: int  # what query(embedding=...) takes for this table
    vector_dim: int  # after the tenant's keyed projection: what the index holds
    writable: bool = False
    writable_columns: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()  # declared in the wrapper's config, for every driver

    @property
    def text_embedded(self) -> bool:
        return self.vector_source.startswith("text:")


def tables_from_hello(hello: pb.HelloResponse) -> dict[str, TableInfo]:
    return {
        t.name: TableInfo(
            name=t.name,
            key_columns=tuple(t.key_columns),
            columns=tuple((c.name, c.type_name) for c in t.columns),
            has_vectors=t.has_vectors,
            vector_source=t.vector_source,
            text_columns=tuple(t.text_columns),
            source_dim=t.source_dim,
            vector_dim=t.vector_dim,
            writable=t.writable,
            writable_columns=tuple(t.writable_columns),
            indexes=tuple(t.indexes),
        )
        for t in hello.tables
    }


class Schema:
    """The tenant's tables as the latest Hello described them, and the
    projections (one per source and target dimension) of its projection key."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.tables: dict[str, TableInfo] = {}
        self.embedder: TextEmbedder | None = None
        self._projection_key = b""
        self._projections: dict[tuple[int, int], Projection] = {}

    def update(self, hello: pb.HelloResponse, projection_key: bytes) -> bool:
        """Adopt a Hello's tables and the tenant's projection key. True when
        the tables differ from the last Hello's: the replica must then be
        built afresh."""
        if projection_key != self._projection_key:
            self._projection_key = projection_key
            self._projections = {}
        tables = tables_from_hello(hello)
        for info in tables.values():  # a Hello whose projections cannot exist fails here
            if info.has_vectors:
                check_dims(info.source_dim, info.vector_dim)
        changed = tables != self.tables
        self.tables = tables
        # The keyed projections' matrices are made on a worker thread
        # (matrix_seeds, prism.fabric.sealing.prefetch_orthogonal), not here
        # on the event loop before the Subscribe call.
        if hello.text_embedder_dim:
            self.embedder = TextEmbedder(hello.text_embedder_dim)
        return changed

    def matrix_seeds(self) -> list[tuple[bytes, int]]:
        """(seed, dimension) of each keyed matrix the projections take, for
        prefetch_orthogonal; the projections themselves are cheap once their
        matrix is made."""
        dims = {info.source_dim for info in self.tables.values() if info.has_vectors}
        seed = derive_projection_seed(self._projection_key, self.tenant_id)
        return [(seed, d) for d in sorted(dims)]

    def projection(self, info: TableInfo) -> Projection:
        dims = (info.source_dim, info.vector_dim)
        proj = self._projections.get(dims)
        if proj is None:
            proj = Projection(self._projection_key, self.tenant_id, *dims)
            self._projections[dims] = proj
        return proj

    def query_vector(
        self, info: TableInfo, embedding: np.ndarray | None, text: str | None
    ) -> np.ndarray | None:
        """The query in the table's keyed space, or None when this table
        cannot answer it (a text query of an embedding table, or an
        embedding of another dimension)."""
        if text is not None:
            if not info.text_embedded or self.embedder is None:
                return None
            raw = self.embedder.embed(text)
        else:
            assert embedding is not None
            if info.text_embedded or embedding.shape[0] != info.source_dim:
                return None
            raw = embedding
        # Not normalized: the index scales the query onto its grid itself.
        return raw.astype(np.float32) @ self.projection(info).matrix
