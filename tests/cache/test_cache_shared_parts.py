"""The shared tier's pure parts (no server): table names, row keys, the
row format, request ids, the DDL beside deploy/cache-table.sql, and the
arguments a shared cache refuses. Its behaviour with real servers is in
tests/integration/test_cluster_cache.py."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from prism.cache import CacheConfigError, MiniLMEmbedder, PrismCache
from prism.cache.keys import exact_key, make_scope, normalize_query
from prism.cache.shared import (
    COLUMNS,
    DEDUP_WINDOW_S,
    WRITABLE,
    TableSpec,
    parse_row,
    request_id,
    row_key,
    table_name,
)
from prism.driver import DriverConfig, PrismDriver

DEPLOY_SQL = Path(__file__).parents[2] / "deploy" / "cache-table.sql"


def test_table_names_are_distinct_identifiers() -> None:
    assert table_name("acme") == "public.prism_cache_acme"
    names = {table_name(t) for t in ("acme", "ACME", "ac-me", "ac_me", "ac me", "x" * 80)}
    assert len(names) == 6  # a tenant id that had to be changed gets a digest
    for n in names:
        assert re.fullmatch(r"public\.[a-z0-9_]{1,63}", n), n


def test_row_key_is_per_tenant_scope_and_normalized_question() -> None:
    sk = make_scope("gpt-4o-mini", None).key
    k = row_key("acme", exact_key(sk, normalize_query("Reset my password?")))
    assert k == row_key("acme", exact_key(sk, normalize_query("  reset MY password ")))
    assert k != row_key("other", exact_key(sk, normalize_query("Reset my password?")))
    other_scope = make_scope("gpt-4o-mini", {"temperature": 0.5}).key
    assert k != row_key("acme", exact_key(other_scope, normalize_query("Reset my password?")))
    assert re.fullmatch(r"[0-9a-f]{32}", k)


def test_request_id_is_one_per_question_and_window() -> None:
    t = 1_800_000_000.0
    assert request_id("k", t) == request_id("k", t + 1)
    assert request_id("k", t) != request_id("k", t + DEDUP_WINDOW_S)
    assert request_id("k", t) != request_id("j", t)
    assert len(request_id("f" * 32, t)) <= 200  # the wrapper's limit


def test_rows_parse_or_are_refused() -> None:
    row = {
        "key": "k",
        "scope": "s",
        "query": "q",
        "response": json.dumps({"a": [1]}),
        "tags": ["x"],
        "created_at": 1.0,
        "expires_at": None,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "tokens_estimated": False,
        "node_id": "n",
        "version": "v",
    }
    r = parse_row(row)
    assert r is not None and r.response == {"a": [1]} and r.tags == ("x",)
    assert not r.expired(1e12)
    assert parse_row(row | {"expires_at": 5.0}).expired(5.0)  # type: ignore[union-attr]
    assert parse_row(row | {"response": "not json"}) is None
    assert parse_row({k: v for k, v in row.items() if k != "version"}) is None


def test_deploy_sql_is_the_spec_ddl() -> None:
    """deploy/cache-table.sql holds exactly what TableSpec generates."""
    text = DEPLOY_SQL.read_text()
    statements = "".join(line + "\n" for line in text.splitlines() if not line.startswith("--"))
    assert TableSpec("shop", role="prism").ddl().strip() == statements.strip()
    spec = TableSpec("shop").wrapper_table()
    assert spec["writable_columns"] == list(WRITABLE) and "key" not in WRITABLE
    assert COLUMNS[0][0] == "key"
    assert f"writable_columns = {json.dumps(list(WRITABLE))[:40]}" in text.replace("\n--", "")


def driver(tenant: str, secret: Path) -> PrismDriver:
    return PrismDriver(
        DriverConfig(tenant_id=tenant, secret_file=secret, insecure=True, wrapper_port=1)
    )


def test_bad_shared_arguments(tmp_path: Path, minilm: MiniLMEmbedder) -> None:
    from prism.fabric.keys import write_secret

    secret = tmp_path / "s"
    write_secret(secret)
    d = driver("acme", secret)
    with pytest.raises(CacheConfigError, match="event loop"):
        PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, shared=d)

    async def inside() -> None:
        with pytest.raises(CacheConfigError, match="tenant 'acme', the cache to 'other'"):
            PrismCache.build(tenant_id="other", llm_model="m", embedder=minilm, shared=d)
        with pytest.raises(CacheConfigError, match="exclude each other"):
            PrismCache.build(
                tenant_id="acme", llm_model="m", embedder=minilm, shared=d, path=tmp_path / "f"
            )
        with pytest.raises(CacheConfigError, match="need shared=driver"):
            PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, node_id="n1")
        with pytest.raises(CacheConfigError, match="PrismDriver"):
            PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, shared=object())
        cache = PrismCache.build(tenant_id="acme", llm_model="m", embedder=minilm, shared=d)
        # The sync API would block the loop the driver runs on.
        with pytest.raises(CacheConfigError, match=r"await cache\.aget_or_call"):
            cache.get_or_call(query="q", call_fn=lambda: "a")
        with pytest.raises(CacheConfigError, match=r"await cache\.ainvalidate"):
            cache.invalidate(tag="t")

    asyncio.run(inside())
