"""benchmark/results/index.json → the "Index" table in benchmark/README.md.

python benchmark/index_report.py [results/index.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import nested  # noqa: E402

START, END = "<!-- index:start -->", "<!-- index:end -->"


def _ms(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def verdict(value: Any, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "**met**"
    if higher_is_better:
        return f"**missed**: {value / target:.2f}× of the target ({target - value:.3g} short)"
    return f"**missed**: {value / target:.2f}× the target ({value - target:.3g} over)"


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _env_line(r: dict[str, Any]) -> str:
    env = r["environment"]
    la0 = ", ".join(f"{x:.1f}" for x in env["loadavg_start"])
    la1 = ", ".join(f"{x:.1f}" for x in env.get("loadavg_end", []))
    return (
        f"Measured {env['when']} on {env['cpus']} CPUs ({env['cpu']}), Python {env['python']}, "
        f"numpy {env['numpy']}, commit `{env['commit']}`; load average {la0} at the start, "
        f"{la1} at the end (the machine is shared). Whole run: {r.get('wall_seconds', 0):.0f} s. "
        "Source: `benchmark/results/index.json`."
    )


def _data_line(r: dict[str, Any]) -> str:
    ds = r.get("dataset", {})
    big, real = ds.get("rows_big") or 0, ds.get("rows_big_real") or 0
    return (
        f"Data: {ds.get('rows_small', 0):,} real MiniLM embeddings (from "
        f"{ds.get('corpus_texts', 0):,} distinct corpus texts); the 1M set is {real:,} real + "
        f"{big - real:,} synthetic mixtures of real ones. {ds.get('queries', 0)} held-out real "
        f"queries. The 0.5 ms link: {nested(r, 'link', 'how')}."
    )


def _f(v: Any, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _query_rows(r: dict[str, Any]) -> list[str]:
    t = r["targets"]
    p = lambda *a: nested(r, *a)  # noqa: E731
    out = []
    for size, key, npk, target in (
        ("100k", "prism_small", "numpy_small", t["query_p50_ms_100k"]),
        ("1M", "prism_big", "numpy_big", t["query_p50_ms_1m"]),
    ):
        q, n = p(key, "ms", "p50"), p(npk, "ms", "p50")
        base = f"numpy exact {_ms(n)}" + (f" ({n / q:.0f}× prism's time)" if q and n else "")
        if size == "100k":
            base += (
                f"; pgvector exact {_ms(p('pg_loopback', 'exact', 'ms', 'p50'))}, HNSW "
                f"{_ms(p('pg_loopback', 'hnsw', 'ms', 'p50'))} (loopback); over the 0.5 ms "
                f"link: exact {_ms(p('pg_link', 'exact', 'ms', 'p50'))}, HNSW "
                f"{_ms(p('pg_link', 'hnsw', 'ms', 'p50'))}"
            )
        out.append(
            _row(
                f"top-10 `driver.query` p50 at {size}, ms",
                f"{_ms(q)} (p99 {_ms(p(key, 'ms', 'p99'))})",
                base,
                f"≤ {target}",
                verdict(q, target, False),
            )
        )
        rec = p(key, "recall_at_10")
        base = f"numpy {_f(p(npk, 'recall_at_10'))}"
        if size == "100k":
            base += f"; pgvector HNSW {_f(p('pg_loopback', 'hnsw', 'recall_at_10'))}"
        out.append(
            _row(
                f"recall@10 at {size}",
                f"{_f(rec)} (`exact=True`: {_f(p(key + '_exact', 'recall_at_10'))})",
                base,
                f"≥ {t['recall_at_10']}",
                verdict(rec, t["recall_at_10"], True),
            )
        )
    return out


def _other_rows(r: dict[str, Any]) -> list[str]:
    t = r["targets"]
    p = lambda *a: nested(r, *a)  # noqa: E731
    g = p("get", "us", "p50")
    out = [
        _row(
            "`driver.get` p50, µs",
            f"{_f(g, '.2f')} (p99 {_f(p('get', 'us', 'p99'), '.2f')})",
            f"PostgreSQL PK lookup: loopback {_ms(p('pg_loopback', 'pk', 'ms', 'p50'))} ms; over "
            f"the 0.5 ms link {_ms(p('pg_link', 'pk', 'ms', 'p50'))} ms (`SELECT 1` there "
            f"{_ms(p('pg_link', 'ping', 'ms', 'p50'))} ms)",
            f"≤ {t['get_p50_us']}",
            verdict(g, t["get_p50_us"], False),
        )
    ]
    idx = p("index_big") or {}
    per = idx.get("bytes_per_vector")
    if per:
        x = per / (4 * 384)
        out.append(
            _row(
                "index bytes per row at 1M",
                f"{per:,.0f} = {x:.2f}× the float32 grid vectors (1,536 B); beyond them: "
                f"{x - 1:.2f}×; RSS grew {idx.get('rss_delta_per_vector', 0):,.0f} B/row",
                "numpy: 1,536 B/row",
                f"≤ {t['index_overhead_x']}×",
                f"{verdict(x, t['index_overhead_x'], False)} as total ÷ vectors; "
                f"{verdict(x - 1, t['index_overhead_x'], False)} as added ÷ vectors",
            )
        )
    for size, key in (("100k", "ingest_small"), ("1M", "ingest_big")):
        for kind in ("insert", "update"):
            v = p(key, kind, "per_s")
            if v is None:
                continue
            out.append(
                _row(
                    f"upserts/s into the index, {kind}s, {size}",
                    f"{v:,.0f} (1,024 a batch: p50 {p(key, kind, 'batch_ms', 'p50'):.1f} ms, "
                    f"max {p(key, kind, 'batch_ms', 'max'):.0f} ms)",
                    "",
                    f"≥ {t['upserts_per_s']:,}",
                    verdict(v, t["upserts_per_s"], True),
                )
            )
    if p("ingest_big", "delete_per_s"):
        out.append(_row("deletes/s, 1M", f"{p('ingest_big', 'delete_per_s'):,.0f}", "", "", ""))
    d = p("during_ingest_big")
    if d:
        out.append(
            _row(
                f"queries between update batches at 1M ({d['rounds']} × 512 upserts + 512 deletes)",
                f"query p50 {_ms(d['query_ms']['p50'])} ms, p99 {_ms(d['query_ms']['p99'])}; "
                f"batch p50 {d['batch_ms']['p50']:.1f} ms, max {d['batch_ms']['max']:.1f} ms; "
                f"deleted rows returned: {d['deleted_rows_returned']}",
                "",
                "no stop-the-world pause; never a deleted row",
                ("**met**" if d["deleted_rows_returned"] == 0 else "**missed**")
                + " (a query waits at most one batch)",
            )
        )
    return out


def render(r: dict[str, Any]) -> str:
    s = nested(r, "stats_small") or {}
    lines = [
        _env_line(r),
        "",
        _data_line(r),
        "",
        _row("measurement", "prism", "baselines (same run)", "target", "verdict"),
        _row("---", "---", "---", "---", "---"),
        *_query_rows(r),
        *_other_rows(r),
        "",
        f"`driver.stats()['index']` at 100k: kind `{s.get('kind')}` (exact_limit "
        f"{s.get('exact_limit')}), nlist {s.get('nlist')}, nprobe {s.get('nprobe')}, reduced_dim "
        f"{s.get('reduced_dim')}, rerank {s.get('rerank')}, {s.get('bytes_per_vector', 0):,.0f} "
        f"B/vector. pgvector HNSW build over 100k: {nested(r, 'pg_hnsw_build_s') or 0:.0f} s.",
    ]
    return "\n".join(lines)


def write_readme(path: Path) -> None:
    r = json.loads(path.read_text())
    readme = HERE / "README.md"
    text = readme.read_text()
    block = f"{START}\n{render(r)}\n{END}"
    if START in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text += f"\n## Index (`python benchmark/index_bench.py`)\n\n{block}\n"
    readme.write_text(text)


if __name__ == "__main__":
    write_readme(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results" / "index.json")
