"""PrismCache's shared tier across app nodes (issue 14), beside the seed's
3-node figures and a same-run baseline of three unshared caches.

One run, one machine: an embedded PostgreSQL 16, the real prism-wrapper
process (TLS) replicating the tenant's cache table, and three app-node
processes (tests/support/cachenode.py: a PrismDriver and a ClusterCache with
the real MiniLM model each). The LLM is a coroutine that sleeps 80 ms and
answers with its question's intent (so a wrong hit is visible) and
OpenAI-style usage (350 prompt + 60 completion tokens).

Questions are fow-cache's (`pip install fow-cache`): a same-answer pair's
two questions are one intent, a trap pair's two are two intents, as in
benchmark/cache_bench.py's load run. Phases:

1. **The seed's run.** Node 1 answers `--answered` intents (one phrasing
   each); nodes 2 and 3 then ask the same questions, and the other
   phrasings of those intents: their hit rate (seed: 100% on nodes 2 and 3).
2. **Cluster workload.** `--requests` requests (Zipf-like intent
   popularity, random phrasing), spread round-robin over the three nodes,
   16 concurrent users on each: hit rate per node and for the cluster,
   tokens saved, wrong answers; then the same plan on three nodes whose
   caches are not shared (the baseline) and with no cache (LLM calls).
3. **Write → served elsewhere.** Node 1 answers fresh questions at 50 new
   entries/s while nodes 2 and 3 watch their replicas: the time from node
   1's LLM answer to node 2 (3) serving the entry (target p50 <= 50 ms, p99
   <= 200 ms), and node 1's own write call until its replica shows the row.
4. **Concurrent misses.** The same fresh question on all three nodes, node
   2 and 3 starting `delta` ms after node 1: LLM calls and rows per
   question.

Results go to results/cluster.json and the "Shared cache" section of
README.md.

    flock /work/coord/bench.lock python benchmark/cluster_bench.py [--quick]

`--quick` is a smoke test of a minute or two (its figures are not published).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import dev_certs, percentiles, replace_readme_section

from prism.cache.keys import normalize_query
from prism.cache.shared import table_name
from prism.fabric.keys import write_secret
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp
from support.cluster import NodeProcess, cache_tables, create_cache_tables
from support.servers import WrapperProcess, write_config

HERE = Path(__file__).resolve().parent
TENANT = "bench"
LLM_MS = 80.0
START, END = "<!-- cluster:start -->", "<!-- cluster:end -->"
SEED = {
    "cluster_hit_rate": 0.761,
    "answered_hit_rate_nodes_2_3": 1.0,
}
TARGET_P50_MS, TARGET_P99_MS = 50.0, 200.0


def intents() -> list[list[str]]:
    """fow-cache's questions grouped into intents (see the module doc)."""
    try:
        from fow_cache.data import load_questions
    except ImportError:
        raise SystemExit("needs the labelled pairs: pip install fow-cache") from None
    pairs = list(load_questions())
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find(normalize_query(p["a"])), find(normalize_query(p["b"]))
        if p["same_answer"]:
            parent[a] = b
    groups: dict[str, list[str]] = {}
    for p in pairs:
        for q in (p["a"], p["b"]):
            members = groups.setdefault(find(normalize_query(q)), [])
            if q not in members:
                members.append(q)
    return list(groups.values())


def answer(intent: int) -> str:
    return f"answer of intent {intent}: " + "lorem ipsum " * 20


def item(intent: int, q: str, **kw: Any) -> dict[str, Any]:
    return {"query": q, "answer": answer(intent), "llm_ms": LLM_MS, **kw}


def wrong(results: list[dict[str, Any]], items: list[dict[str, Any]]) -> int:
    return sum(r["response"] != it["answer"] for r, it in zip(results, items, strict=True))


def run_on(nodes: list[NodeProcess], per_node: list[list[dict[str, Any]]], **kw: Any) -> list[Any]:
    """Run each node's items concurrently on all nodes; their results."""
    for n, items in zip(nodes, per_node, strict=True):
        n.send("asks", items=items, **kw)
    return [n.result(timeout=1800) for n in nodes]


def settle(nodes: list[NodeProcess]) -> None:
    for n in nodes:
        n.call("flush")
    top = max(n.call("state")["position"] for n in nodes)
    for n in nodes:
        n.call("wait_position", position=top)


def reset(nodes: list[NodeProcess]) -> None:
    nodes[0].call("clear")
    settle(nodes)


def seed_run(nodes: list[NodeProcess], groups: list[list[str]], k: int) -> dict[str, Any]:
    chosen = [i for i, g in enumerate(groups) if len(g) >= 2][:k]
    first = [item(i, groups[i][0]) for i in chosen]
    r1 = nodes[0].call("asks", items=first, concurrency=16, timeout=1800)
    settle(nodes)
    again = [item(i, groups[i][0]) for i in chosen]
    para = [item(i, q) for i in chosen for q in groups[i][1:]]
    out: dict[str, Any] = {
        "intents": len(chosen),
        "node1_llm_calls": sum(r["called"] for r in r1["results"]),
    }
    # Lookups only: what nodes 2 and 3 serve from node 1's entries (no
    # misses written that the other node could hit).
    for n in nodes[1:]:
        out[n.node_id] = {}
        for kind, items in (("same_question", again), ("paraphrase", para)):
            got = n.call("lookups", queries=[it["query"] for it in items], timeout=1800)
            served = [(r, it) for r, it in zip(got["responses"], items, strict=True) if r]
            out[n.node_id][f"{kind}_hit_rate"] = len(served) / len(items)
            out[n.node_id][f"{kind}_wrong"] = sum(r != it["answer"] for r, it in served)
        out[n.node_id]["paraphrases"] = len(para)
    return out


def workload(
    nodes: list[NodeProcess], groups: list[list[str]], requests: int, seed: int = 7
) -> tuple[list[list[dict[str, Any]]], int]:
    rng = random.Random(seed)
    weights = [1.0 / (r + 1) ** 0.6 for r in range(len(groups))]
    order = list(range(len(groups)))
    rng.shuffle(order)
    plan = [order[i] for i in rng.choices(range(len(groups)), weights, k=requests)]
    per_node: list[list[dict[str, Any]]] = [[] for _ in nodes]
    for j, intent in enumerate(plan):
        q = groups[intent][rng.randrange(len(groups[intent]))]
        per_node[j % len(nodes)].append(item(intent, q))
    return per_node, len(set(plan))


def cluster_run(
    shared: list[NodeProcess], local: list[NodeProcess], groups: list[list[str]], requests: int
) -> dict[str, Any]:
    per_node, distinct = workload(shared, groups, requests)
    out: dict[str, Any] = {"requests": requests, "distinct_intents": distinct}
    for mode, nodes in (("shared", shared), ("unshared", local)):
        t0 = time.perf_counter()
        results = run_on(nodes, per_node, concurrency=16)
        wall = time.perf_counter() - t0
        calls = [sum(r["called"] for r in res["results"]) for res in results]
        lat = [r["ms"] for res in results for r in res["results"]]
        states = [n.call("state") for n in nodes]
        out[mode] = {
            "hit_rate": 1 - sum(calls) / requests,
            "per_node_hit_rate": [
                1 - c / len(items) for c, items in zip(calls, per_node, strict=True)
            ],
            "llm_calls": sum(calls),
            "wrong": sum(
                wrong(res["results"], items) for res, items in zip(results, per_node, strict=True)
            ),
            "tokens_saved": sum(s["tokens_saved"] for s in states),
            "shared_hits": sum(s["extra"].get("shared_hits", 0) for s in states),
            "latency_ms": percentiles(lat, (50, 99)),
            "wall_s": wall,
        }
    out["no_cache"] = {"llm_calls": requests, "tokens": requests * 410}
    return out


def latency_run(nodes: list[NodeProcess], n: int, rate: float) -> dict[str, Any]:
    qs = [f"What is the delivery status of parcel number {100000 + i}?" for i in range(n)]
    items = [{"query": q, "answer": f"status {i}", "llm_ms": LLM_MS} for i, q in enumerate(qs)]
    for w in nodes[1:]:
        w.send("watch", queries=qs, timeout=n / rate + 60)
    time.sleep(0.5)  # the watchers are polling
    res = nodes[0].call("asks", items=items, rate=rate, concurrency=64, timeout=1800)
    watched = [w.result(timeout=n / rate + 120) for w in nodes[1:]]
    st = nodes[0].call("state")
    answered = st["answered_at"]
    out: dict[str, Any] = {
        "entries": n,
        "rate_per_s": rate,
        "achieved_rate_per_s": n / res["seconds"],
        "writer_visible_ms": {
            "p50": st["extra"].get("shared_visible_ms_p50"),
            "p99": st["extra"].get("shared_visible_ms_p99"),
        },
    }
    for w, got in zip(nodes[1:], watched, strict=True):
        lat = [(got["served_at"][q] - answered[q]) * 1e3 for q in qs if q in got["served_at"]]
        out[w.node_id] = {"served_ms": percentiles(lat, (50, 99)), "missing": len(got["missing"])}
    return out


def duplicate_run(nodes: list[NodeProcess], per_delta: int, deltas: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d_ms in deltas:
        qs = [f"Can I pay invoice {d_ms:g}-{i} by bank transfer?" for i in range(per_delta)]
        t0 = time.time() + 2.0
        per_node = [
            [
                {
                    "query": q,
                    "answer": f"yes {i}, says node {k + 1}",
                    "llm_ms": LLM_MS,
                    "start_at": t0 + i * 0.25 + (d_ms / 1e3 if k else 0.0),
                }
                for i, q in enumerate(qs)
            ]
            for k in range(len(nodes))
        ]
        results = run_on(nodes, per_node, concurrency=per_delta)
        settle(nodes)
        calls = sum(r["called"] for res in results for r in res["results"])
        # Afterwards every node serves one answer per question, the same on all.
        again = run_on(nodes, [[{**it, "start_at": 0} for it in items] for items in per_node])
        later_calls = sum(r["called"] for res in again for r in res["results"])
        agree = sum(
            len({res["results"][i]["response"] for res in again}) == 1 for i in range(per_delta)
        )
        out[f"{d_ms:g}"] = {
            "questions": per_delta,
            "llm_calls": calls,
            "calls_per_question": calls / per_delta,
            "calls_afterwards": later_calls,
            "nodes_agree_afterwards": agree / per_delta,
        }
    return out


def rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as c:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def report(r: dict[str, Any]) -> str:
    s, c, lat, dup = r["seed_run"], r["cluster"], r["latency"], r["duplicates"]
    sh, un = c["shared"], c["unshared"]
    lines = [
        START,
        f"Run of {r['date']}: 3 app-node processes, one prism-wrapper (TLS), PostgreSQL 16, "
        f"an {LLM_MS:.0f} ms stand-in LLM, fow-cache's questions; a shared 2-core machine.",
        "",
        "| figure | shared tier | same run: 3 unshared caches | seed | target |",
        "| --- | --- | --- | --- | --- |",
        f"| nodes 2, 3: node 1's questions served (same question) | "
        f"{s['n2']['same_question_hit_rate']:.1%}, {s['n3']['same_question_hit_rate']:.1%} | "
        f"0% | 100% | |",
        f"| nodes 2, 3: paraphrases of node 1's questions served | "
        f"{s['n2']['paraphrase_hit_rate']:.1%}, {s['n3']['paraphrase_hit_rate']:.1%} "
        f"({s['n2']['paraphrases']} each) | 0% | (not stated) | |",
        f"| cluster hit rate, {c['requests']} requests over 3 nodes | {sh['hit_rate']:.1%} "
        f"(per node {', '.join(f'{x:.1%}' for x in sh['per_node_hit_rate'])}) | "
        f"{un['hit_rate']:.1%} | 76.1% | |",
        f"| LLM calls (no cache: {c['requests']}) | {sh['llm_calls']} | {un['llm_calls']} | | |",
        f"| tokens saved (no cache spends {c['no_cache']['tokens']:,}) | "
        f"{sh['tokens_saved']:,} ({sh['tokens_saved'] / c['no_cache']['tokens']:.1%}) | "
        f"{un['tokens_saved']:,} ({un['tokens_saved'] / c['no_cache']['tokens']:.1%}) | | |",
        f"| wrong answers served | {sh['wrong']} | {un['wrong']} | | |",
        f"| request latency p50 / p99 | {sh['latency_ms']['p50']:.1f} / "
        f"{sh['latency_ms']['p99']:.1f} ms | {un['latency_ms']['p50']:.1f} / "
        f"{un['latency_ms']['p99']:.1f} ms | | |",
    ]
    for w in ("n2", "n3"):
        m = lat[w]["served_ms"]
        lines.append(
            f"| node 1's answer → served on {w}, at {lat['achieved_rate_per_s']:.0f} new "
            f"entries/s: p50 / p99 / max | {m['p50']:.1f} / {m['p99']:.1f} / {m['max']:.1f} ms "
            f"({lat[w]['missing']} of {lat['entries']} missing) | — | | ≤ {TARGET_P50_MS:.0f} / "
            f"≤ {TARGET_P99_MS:.0f} ms |"
        )
    wv = lat["writer_visible_ms"]
    lines.append(
        f"| node 1: write call → its own replica shows the row, p50 / p99 | "
        f"{wv['p50']:.1f} / {wv['p99']:.1f} ms | — | | |"
    )
    for d, v in dup.items():
        lines.append(
            f"| same fresh question on 3 nodes, nodes 2–3 start {d} ms after node 1: LLM calls "
            f"per question | {v['calls_per_question']:.2f} (afterwards: "
            f"{v['calls_afterwards']} calls, nodes agree on {v['nodes_agree_afterwards']:.0%}) "
            f"| 3.00 | | |"
        )
    lines += [
        "",
        f"Rows in the shared table after the concurrent-miss phase: {r['rows_after_duplicates']} "
        f"for {r['duplicate_questions']} questions (one row per question).",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--answered", type=int, default=100)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--latency-entries", type=int, default=500)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    per_delta = 20
    if args.quick:
        args.answered, args.requests, args.latency_entries, per_delta = 10, 60, 50, 4
    groups = intents()
    base = shared_tmp("prism-bench-cluster-")
    pg = EmbeddedPostgres(base / "pg").start()
    wrapper = None
    nodes: list[NodeProcess] = []
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            create_cache_tables(c, TENANT)
        secret = base / "bench.secret"
        write_secret(secret)
        port = free_port()
        certs = dev_certs(base)
        cfg = write_config(
            base / "w.toml",
            {
                "database": {"flavor": "postgres", "dsn": pg.dsn},
                "server": {
                    "listen_host": "127.0.0.1",
                    "listen_port": port,
                    "tenant_id": TENANT,
                    "secret_file": str(secret),
                },
                "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
                "store": {"path": str(base / "store.sqlite3")},
            },
            cache_tables(TENANT),
        )
        wrapper = WrapperProcess(cfg, port, base / "wrapper.log", certs.ca_cert).start()

        def node(name: str, *extra: str) -> NodeProcess:
            n = NodeProcess(port, secret, name, tenant=TENANT, ca=certs.ca_cert, log_dir=base)
            n.args += list(extra)
            nodes.append(n)
            return n.start()

        shared = [node("n1"), node("n2"), node("n3")]
        res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print("seed run ...", flush=True)
        res["seed_run"] = seed_run(shared, groups, args.answered)
        reset(shared)
        local = [node("u1", "--local-only"), node("u2", "--local-only"), node("u3", "--local-only")]
        print("cluster workload ...", flush=True)
        res["cluster"] = cluster_run(shared, local, groups, args.requests)
        for n in local:
            n.stop()
        reset(shared)
        print("latency ...", flush=True)
        res["latency"] = latency_run(shared, args.latency_entries, args.rate)
        reset(shared)
        print("duplicates ...", flush=True)
        deltas = [0.0, 50.0, 150.0, 300.0]
        res["duplicates"] = duplicate_run(shared, per_delta, deltas)
        res["duplicate_questions"] = per_delta * len(deltas)
        res["rows_after_duplicates"] = rows(pg.dsn, table_name(TENANT))
        res["quick"] = args.quick
        out = Path(
            args.out or HERE / "results" / ("cluster-quick.json" if args.quick else "cluster.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        table = report(res)
        if not args.quick:
            replace_readme_section(
                START, END, "## Shared cache (`python benchmark/cluster_bench.py`)", table
            )
        print(table)
        return 0
    finally:
        for n in nodes:
            n.stop()
        if wrapper is not None:
            wrapper.stop()
        pg.stop()


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
