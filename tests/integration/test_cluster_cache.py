"""The shared cache tier with real parts: PostgreSQL, the prism-wrapper
process, and app nodes as separate processes (each a PrismDriver and a
ClusterCache with the real MiniLM model): a hit on node B for node A's
answer without calling the LLM, invalidation seen on every node, no hit
across tenants, a restarted node serving after its bootstrap, a wrapper
kill -9 losing no committed entry, one row for a question missed
concurrently."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prism.cache.shared import table_name
from prism.fabric.keys import write_secret
from support.cluster import NodeProcess, cache_tables, create_cache_tables
from support.servers import parse_metrics, sample

pytestmark = pytest.mark.integration

Q = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for n in started:
        n.stop()


def start_node(
    nodes: list[NodeProcess], proc: Any, secret: Path, name: str, **kw: Any
) -> NodeProcess:
    n = NodeProcess(proc.port, secret, name, ca=proc.ca_file, log_dir=proc.log_path.parent, **kw)
    nodes.append(n)
    return n.start()


def settle(*ns: NodeProcess) -> None:
    """Every node's replica shows what any of them wrote: flush each
    node's writes, then wait for the highest position on all."""
    for n in ns:
        n.call("flush")
    top = max(n.call("state")["position"] for n in ns)
    for n in ns:
        n.call("wait_position", position=top)


def test_hit_on_another_node_and_invalidation(db, wrapper, secret_file, nodes) -> None:  # type: ignore[no-untyped-def]
    with db.connect() as c:
        create_cache_tables(c, "acme")
    proc = wrapper(cache_tables("acme"))
    a = start_node(nodes, proc, secret_file, "a")
    b = start_node(nodes, proc, secret_file, "b")

    first = a.call("ask", query=Q, answer="Use the reset link.", tags=["account"])
    assert first["called"] and first["response"] == "Use the reset link."
    settle(a, b)
    # Node B: the same question and a paraphrase, answered by node A's entry.
    same = b.call("ask", query=Q, answer="B's own answer")
    para = b.call("ask", query=PARAPHRASE, answer="B's own answer")
    assert not same["called"] and same["response"] == "Use the reset link."
    assert not para["called"] and para["response"] == "Use the reset link."
    # A look-alike trap is not served on B either.
    trap = b.call("ask", query="How do I not reset my password?", answer="trap answer")
    assert trap["called"]
    b.call("flush")
    sb = b.call("state")
    assert sb["llm_calls"] == 1 and sb["extra"]["shared_hits"] == 2
    assert sb["tokens_saved"] == 2 * (350 + 60)
    got = parse_metrics(sb["prometheus"])
    assert sample(got, "prism_cache_lookups_total", tenant="acme", result="shared_exact_hit") == 1
    assert (
        sample(got, "prism_cache_lookups_total", tenant="acme", result="shared_semantic_hit") == 1
    )
    assert sample(got, "prism_cache_shared_rows", tenant="acme") == 2  # A's answer, B's trap
    sa = parse_metrics(a.call("state")["prometheus"])
    assert sample(sa, "prism_cache_shared_writes_total", tenant="acme", outcome="written") == 1
    assert sample(sa, "prism_cache_shared_visible_seconds", tenant="acme", quantile="0.5") > 0
    # The sync API, from a thread other than the driver's loop.
    sync = b.call("ask_thread", query="how do I reset my password", answer="B sync")
    assert not sync["called"] and sync["response"] == "Use the reset link."

    # B answers another tagged question; A invalidates the tag: both rows go.
    b.call("ask", query="Which plans do you offer?", answer="Basic and Pro.", tags=["account"])
    settle(a, b)
    assert not a.call("ask", query="Which plans do you offer?", answer="x")["called"]
    assert a.call("invalidate", tag="account")["removed"] == 2
    settle(a, b)
    with db.connect() as c:
        assert c.execute(f"SELECT count(*) FROM {table_name('acme')}").fetchone() == (1,)
    for n in (a, b):
        assert n.call("lookup", query=Q)["hit"] is None, n.node_id
        assert n.call("lookup", query="Which plans do you offer?")["hit"] is None
    # A's own local copy of its answer is not served once its row is gone.
    again = a.call("ask", query=Q, answer="A newer answer.")
    assert again["called"] and again["response"] == "A newer answer."
    settle(a, b)
    assert b.call("ask", query=Q, answer="x")["response"] == "A newer answer."

    # clear() empties the table for everyone.
    b.call("clear")
    settle(a, b)
    with db.connect() as c:
        assert c.execute(f"SELECT count(*) FROM {table_name('acme')}").fetchone() == (0,)
    assert a.call("ask", query=Q, answer="after clear")["called"]


def test_tenants_never_share(db, wrapper, secret_file, tmp_path, nodes) -> None:  # type: ignore[no-untyped-def]
    other_secret = tmp_path / "other.secret"
    write_secret(other_secret)
    with db.connect() as c:
        create_cache_tables(c, "acme", "other")
    proc = wrapper(
        cache_tables("acme", "other"),
        tenants=[
            {"id": "acme", "secret_files": [str(secret_file)]},
            {"id": "other", "secret_files": [str(other_secret)]},
        ],
    )
    a = start_node(nodes, proc, secret_file, "a")
    o = start_node(nodes, proc, other_secret, "o", tenant="other")
    assert a.call("ask", query=Q, answer="acme's answer")["called"]
    settle(a)
    time.sleep(0.5)  # were acme's row sent to the other tenant, it would be there by now
    got = o.call("ask", query=Q, answer="other's answer")
    assert got["called"] and got["response"] == "other's answer"
    st = o.call("state")
    assert st["tables"] == [table_name("other")]
    assert table_name("acme") not in st["rows"]
    settle(o)
    assert a.call("ask", query=Q, answer="x")["response"] == "acme's answer"
    with db.connect() as c:
        for t in ("acme", "other"):
            assert c.execute(f"SELECT count(*) FROM {table_name(t)}").fetchone() == (1,)


def test_restart_and_wrapper_kill9(db, wrapper, secret_file, nodes) -> None:  # type: ignore[no-untyped-def]
    with db.connect() as c:
        create_cache_tables(c, "acme")
    proc = wrapper(cache_tables("acme"))
    a = start_node(nodes, proc, secret_file, "a")
    b = start_node(nodes, proc, secret_file, "b")
    questions = [f"What is the shipping cost to zone {i}?" for i in range(20)]
    out = a.call(
        "asks", items=[{"query": q, "answer": f"cost {i}"} for i, q in enumerate(questions)]
    )
    assert all(r["called"] for r in out["results"])
    a.call("flush")  # every write acknowledged: committed, and in A's replica

    # The wrapper dies with kill -9 and comes back: no committed entry is lost.
    proc.kill9()
    proc.start()
    # Node B restarts: its replica bootstraps from the wrapper's store.
    b.stop()
    nodes.remove(b)
    b2 = start_node(nodes, proc, secret_file, "b2")
    served = b2.call("asks", items=[{"query": q, "answer": "x"} for q in questions])
    assert not any(r["called"] for r in served["results"])
    assert [r["response"] for r in served["results"]] == [f"cost {i}" for i in range(20)]
    with db.connect() as c:
        assert c.execute(f"SELECT count(*) FROM {table_name('acme')}").fetchone() == (20,)
    # A survived the wrapper's restart too: it resumed and still serves and writes.
    assert not a.call("ask", query=questions[3], answer="x")["called"]
    assert a.call("ask", query="A new question after the restart?", answer="y")["called"]
    settle(a, b2)
    assert not b2.call("ask", query="A new question after the restart?", answer="z")["called"]


def test_concurrent_misses_write_one_row(db, wrapper, secret_file, nodes) -> None:  # type: ignore[no-untyped-def]
    with db.connect() as c:
        create_cache_tables(c, "acme")
    proc = wrapper(cache_tables("acme"))
    a = start_node(nodes, proc, secret_file, "a")
    b = start_node(nodes, proc, secret_file, "b")
    start = time.time() + 1.0
    q = "Can I change the delivery address after ordering?"
    a.send("ask", query=q, answer="from a", llm_ms=80, start_at=start)
    b.send("ask", query=q, answer="from b", llm_ms=80, start_at=start)
    ra, rb = a.result(), b.result()
    assert ra["called"] and rb["called"]  # no cross-node single flight: both missed
    settle(a, b)
    with db.connect() as c:
        rows = c.execute(f"SELECT response, node_id FROM {table_name('acme')}").fetchall()
    assert len(rows) == 1
    winner = json.loads(rows[0][0])["choices"][0]["message"]["content"]
    assert winner in ("from a", "from b")
    # The second write was a replay of the first (same request id): dropped.
    extras = [n.call("state")["extra"] for n in (a, b)]
    assert sum(e.get("shared_writes", 0) for e in extras) == 1
    assert sum(e.get("shared_writes_deduplicated", 0) for e in extras) == 1
    for n in (a, b):
        assert n.call("ask", query=q, answer="x")["response"] == winner


def test_expiry_on_every_node_and_the_sweep(db, wrapper, secret_file, nodes) -> None:  # type: ignore[no-untyped-def]
    with db.connect() as c:
        create_cache_tables(c, "acme")
    proc = wrapper(cache_tables("acme"))
    a = start_node(nodes, proc, secret_file, "a", sweep_s=0.5)
    b = start_node(nodes, proc, secret_file, "b")
    assert a.call("ask", query=Q, answer="short-lived", ttl_s=2.0)["called"]
    settle(a, b)
    assert not b.call("ask", query=Q, answer="x", ttl_s=60)["called"]
    time.sleep(2.2)
    # Expired: neither node serves it, whether its row was swept yet or not.
    assert b.call("lookup", query=Q)["hit"] is None
    assert a.call("lookup", query=Q)["hit"] is None
    # A's sweep (due every 0.5 s, run by its next call) deletes its own expired row.
    a.call("ask", query="Another question to wake the sweep?", answer="y")
    deadline = time.monotonic() + 20
    with db.connect() as c:
        while time.monotonic() < deadline:
            (n,) = c.execute(
                f"SELECT count(*) FROM {table_name('acme')} WHERE query = %s", (Q,)
            ).fetchone()
            if n == 0:
                break
            time.sleep(0.2)
        assert n == 0
