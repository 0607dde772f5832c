"""ClusterCache: the seed's name for a PrismCache shared by every app node.

The seed shared answers between nodes with a protocol of its own
(TOKEN_SYNC frames, its own failover). Here the shared tier is a table that
prism-wrapper replicates (prism.cache.shared), so this class only fixes
PrismCache's arguments: the driver is the shared tier, the tenant is the
driver's, and `node_id` names the node in the rows it writes (and in the
expiry sweep's rule: a node deletes its own expired rows first).
"""

from __future__ import annotations

from typing import Any

from prism.cache.core import PrismCache
from prism.driver import PrismDriver


class ClusterCache(PrismCache):
    """PrismCache.build(tenant_id=driver's tenant, llm_model, shared=driver,
    node_id=node_id, **options). Build it on the driver's event loop."""

    def __init__(
        self,
        node_id: str,
        driver: PrismDriver,
        *,
        llm_model: str = "gpt-4o-mini",
        tenant_id: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            tenant_id if tenant_id is not None else driver.config.tenant_id,
            llm_model,
            shared=driver,
            node_id=node_id,
            **options,
        )
        self.node_id = node_id
