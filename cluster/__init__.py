"""prism.cluster: the seed's names for the cache shared across app nodes.

    from prism.cluster.cache import ClusterCache

    async with PrismDriver(config) as driver:
        await driver.wait_ready()
        cache = ClusterCache(node_id="app-1", driver=driver, llm_model="gpt-4o-mini")
        answer = await cache.aget_or_call(query=q, call_fn=lambda: allm(q))

A thin face over PrismCache's shared tier (prism.cache.shared): the entries
live in a table that prism-wrapper replicates to every node of the tenant.
"""

from prism.cluster.cache import ClusterCache

__all__ = ["ClusterCache"]
