"""Per-row codec costs: row payloads, opening a frame, the hashing text embedder.

The pieces every row crosses, timed alone, in one process, so that a change to
one of them shows as a number beside its baseline from the same run:

* a row image encoded (`encode_row`, msgpack) and decoded two ways: the strict
  `decode_row` (msgpack's unpackb, which the wrapper uses on bytes from
  outside the fabric) and the driver's read path `read_row` (ormsgpack,
  falling back to decode_row), on a small 5-column row and on a row with a
  384-d float list and the other types the codec carries as extensions;
* opening a sealed frame of 1,000 rows with 384-d vectors (verify, decrypt,
  unseal), per row;
* `prism.fabric.embedder.TextEmbedder.embed_many`, texts per second.

These replaced timed unit tests: speed is measured here, not asserted in CI.

    python benchmark/codecs.py            # results/codecs.json + README table

Best of several repeats per figure (the machine is shared; the minimum is
the least disturbed run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import replace_readme_section  # noqa: E402
from index_bench import environment, log  # noqa: E402

from prism.fabric import wrapper_pb2  # noqa: E402
from prism.fabric.embedder import TextEmbedder  # noqa: E402
from prism.fabric.frames import build_frame, open_frame  # noqa: E402
from prism.fabric.keys import derive_epoch_keys  # noqa: E402
from prism.fabric.payload import decode_row, encode_key, encode_row, read_row  # noqa: E402
from prism.fabric.sealing import Sealer  # noqa: E402

RESULTS = HERE / "results" / "codecs.json"


def best_us(fn: Callable[[], Any], number: int, repeat: int = 7) -> float:
    """Microseconds per call, best of `repeat` runs of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def rows() -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(0)
    return {
        "small (5 columns: 3 ints, 2 short texts)": {
            "id": 12345,
            "title": "Get the bracket as an array or as a single bracket.",
            "body": "Returns the bracket, or a list of brackets when asked for several.",
            "rev": 94,
            "customer": 1234,
        },
        "wide (384 floats, Decimal, datetime, bool, text)": {
            "id": 123456,
            "name": "Red running shoes, size 42",
            "price": Decimal("129.90"),
            "created": dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
            "in_stock": True,
            "embedding": rng.standard_normal(384).tolist(),
        },
    }


def row_codecs(number: int) -> list[dict[str, Any]]:
    out = []
    for name, row in rows().items():
        data = encode_row(row)
        assert read_row(data) == decode_row(data)
        res = {
            "row": name,
            "payload_bytes": len(data),
            "encode_row_us": best_us(lambda r=row: encode_row(r), number),
            "decode_row_us": best_us(lambda d=data: decode_row(d), number),
            "read_row_us": best_us(lambda d=data: read_row(d), number),
            "msgpack_unpackb_us": best_us(lambda d=data: msgpack.unpackb(d), number),
        }
        log(
            f"{name}: encode {res['encode_row_us']:.2f} us, decode_row "
            f"{res['decode_row_us']:.2f} us, read_row {res['read_row_us']:.2f} us"
        )
        out.append(res)
    return out


def frame_open(n: int = 1000, dim: int = 384) -> dict[str, Any]:
    sealer = Sealer(derive_epoch_keys(b"s" * 32, "acme", 3), dim)
    frame = build_frame(
        sealer=sealer,
        tenant_id="acme",
        stream_id="s",
        kind=wrapper_pb2.CHANGES,
        table="t",
        sequence=1,
        commit_position=n,
        head_position=n,
        commit_time_us=0,
        keys=[encode_key([i]) for i in range(n)],
        ops=b"U" * n,
        positions=range(1, n + 1),
        vectors=np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32),
        vector_mask=None,
        payloads=[encode_row({"id": i, "name": f"n{i}"}) for i in range(n)],
        vector_dim=dim,
    )
    data = frame.SerializeToString()

    def once(unseal: bool) -> None:
        d = open_frame(
            wrapper_pb2.Frame.FromString(data),
            lambda e: sealer,
            tenant_id="acme",
            stream_id="s",
            unseal=unseal,
        )
        assert d.count == n

    # The driver opens frames without unsealing (driver/space.py); the
    # unsealed figure is what it cost before, and what tools still pay.
    us = best_us(lambda: once(False), 3)
    unsealed = best_us(lambda: once(True), 3)
    log(
        f"open a {n}-row {dim}-d frame: {us / 1e3:.2f} ms ({us / n:.2f} us a row); "
        f"unsealing too: {unsealed / 1e3:.2f} ms ({unsealed / n:.2f} us a row)"
    )
    return {
        "rows": n,
        "dim": dim,
        "frame_bytes": len(data),
        "ms": us / 1e3,
        "us_per_row": us / n,
        "unsealed_ms": unsealed / 1e3,
        "unsealed_us_per_row": unsealed / n,
    }


def text_embedder() -> dict[str, Any]:
    e = TextEmbedder()
    words = [f"w{i}" for i in range(3000)] + ["the", "a", "red", "shoes", "mug"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 30)) for _ in range(4000)]
    e.embed_many(texts[:500])
    us = best_us(lambda: e.embed_many(texts), 1, repeat=3)
    rate = len(texts) / (us / 1e6)
    log(f"TextEmbedder.embed_many: {rate:,.0f} texts/s (30 words each)")
    return {"texts": len(texts), "words_per_text": 30, "texts_per_s": rate}


def table(res: dict[str, Any]) -> str:
    env = res["environment"]
    lines = [
        "<!-- codecs:start -->",
        f"Run: {env['when']}, commit {env.get('commit', '?')}, {env['cpus']} CPUs; best of 7.",
        "",
        "| row | payload B | encode_row µs | decode_row µs (msgpack, strict) | read_row µs "
        "(ormsgpack, the driver's reads) | msgpack.unpackb alone µs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['row']} | {r['payload_bytes']} | {r['encode_row_us']:.2f} | "
            f"{r['decode_row_us']:.2f} | {r['read_row_us']:.2f} | {r['msgpack_unpackb_us']:.2f} |"
        )
    f, t = res["frame_open"], res["text_embedder"]
    lines += [
        "",
        "| other | figure |",
        "| --- | --- |",
        f"| open a sealed frame, {f['rows']} rows × {f['dim']}-d | {f['ms']:.2f} ms "
        f"({f['us_per_row']:.2f} µs a row) |",
        f"| TextEmbedder.embed_many, {t['words_per_text']} words a text | "
        f"{t['texts_per_s']:,.0f} texts/s |",
        "<!-- codecs:end -->",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=5000, help="calls per repeat, rows")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    res: dict[str, Any] = {"environment": environment()}
    res["rows"] = row_codecs(args.number)
    res["frame_open"] = frame_open()
    res["text_embedder"] = text_embedder()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {args.out}")
    replace_readme_section(
        "<!-- codecs:start -->", "<!-- codecs:end -->", "## Per-row codecs", table(res)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
