"""What the secure fabric costs: sealing and unsealing per row, and TLS
against plaintext, measured in one run.

1. Per row, in process (pure code, no I/O): build_frame (vectors sealed with
   the keyed matrix, rows encrypted with AES-256-GCM, HMAC-SHA256 watermark)
   and open_frame (verify, decrypt, unseal), for frames of the benchmark's
   rows (384-d float32 vector, ~1.8 kB payload), split into their parts.
   Baseline: protobuf serialize + parse of the same frame, the least any
   transport of these bytes costs.
2. Over the wire, real processes: the real prism-wrapper serves the same
   store alternately over TLS and in plaintext (server.insecure), and a
   driver in its own process bootstraps the whole table from it; rows/s and
   the wrapper's CPU seconds for each, alternating, so both see the same
   machine.

Results go to results/security.json and the "Security" table of README.md.

    python benchmark/security.py [--rows 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DIM,
    TABLE,
    TENANT,
    Wrapper,
    cpu_seconds,
    dev_certs,
    load_table,
    make_rows,
    replace_readme_section,
    write_wrapper_config,
)

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import build_frame, open_frame
from prism.fabric.keys import derive_epoch_keys, write_secret
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp

HERE = Path(__file__).resolve().parent
START, END = "<!-- security:start -->", "<!-- security:end -->"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- 1. per row, in process ----------------------------------------------------


def best_us_per_row(fn: Callable[[], object], rows: int, repeat: int) -> float:
    """Best of `repeat` timings of fn, in µs per row (the least disturbed)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) / rows * 1e6


def per_row_costs(frame_rows: int, repeat: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    ids = np.arange(frame_rows, dtype=np.int64)
    titles, bodies, vecs = make_rows(rng, ids)
    payloads = [
        encode_row({"id": int(i), "title": t, "body": b, "rev": 0, "embedding": v})
        for i, t, b, v in zip(ids, titles, bodies, vecs, strict=True)
    ]
    keys = [encode_key([int(i)]) for i in ids]
    sealer = Sealer(derive_epoch_keys(b"s" * 32, TENANT, 1), DIM)
    args: dict[str, Any] = dict(
        sealer=sealer,
        tenant_id=TENANT,
        stream_id="bench",
        kind=pb.CHANGES,
        table=TABLE,
        sequence=1,
        commit_position=frame_rows,
        head_position=frame_rows,
        commit_time_us=0,
        keys=keys,
        ops=b"U" * frame_rows,
        positions=list(range(1, frame_rows + 1)),
        vectors=vecs,
        vector_mask=None,
        payloads=payloads,
        vector_dim=DIM,
        subscription=b"b" * 16,
    )
    frame = build_frame(**args)
    wire = frame.SerializeToString()

    def open_() -> object:
        return open_frame(
            pb.Frame.FromString(wire),
            lambda e: sealer,
            tenant_id=TENANT,
            stream_id=None,
            subscription=b"b" * 16,
        )

    rows_block = b"".join(payloads) + b"".join(k.encode() for k in keys)
    nonce = b"n" * 12
    sealed = sealer.encrypt(nonce, rows_block, b"aad")
    sealed_vecs = sealer.seal(vecs)
    hmac_key = derive_epoch_keys(b"s" * 32, TENANT, 1).hmac_key
    n = frame_rows
    out = {
        "frame_rows": n,
        "wire_bytes_per_row": len(wire) / n,
        "payload_bytes_per_row": (len(rows_block)) / n,
        "build_frame_us": best_us_per_row(lambda: build_frame(**args), n, repeat),
        "open_frame_us": best_us_per_row(open_, n, repeat),
        "parts_us": {
            "seal vectors (V @ K)": best_us_per_row(lambda: sealer.seal(vecs), n, repeat),
            "unseal vectors (V_enc @ K.T)": best_us_per_row(
                lambda: sealer.unseal(sealed_vecs), n, repeat
            ),
            "AES-256-GCM encrypt rows": best_us_per_row(
                lambda: sealer.encrypt(nonce, rows_block, b"aad"), n, repeat
            ),
            "AES-256-GCM decrypt rows": best_us_per_row(
                lambda: sealer.decrypt(nonce, sealed, b"aad"), n, repeat
            ),
            "HMAC-SHA256 over the frame": best_us_per_row(
                lambda: hmac.digest(hmac_key, wire, "sha256"), n, repeat
            ),
        },
        "baseline_protobuf_us": best_us_per_row(
            lambda: pb.Frame.FromString(frame.SerializeToString()), n, repeat
        ),
    }
    return out


# -- 2. TLS against plaintext, real processes ---------------------------------------


async def bootstrap_once(port: int, secret: Path, ca: Path | None, timeout: float) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, str(HERE / "driver_proc.py"), "--port", str(port)]
    cmd += ["--secret", str(secret), "--timeout", str(timeout)]
    if ca is not None:
        cmd += ["--ca", str(ca)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"driver_proc.py exited with {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def transport(args: argparse.Namespace) -> dict[str, Any]:
    base = shared_tmp("prism-bench-security-")
    pg = EmbeddedPostgres(base / "pg", settings={"max_wal_size": "4GB"}).start()
    wrappers: list[Wrapper] = []
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=bench"
        log(f"loading {args.rows} rows")
        load_table(dsn, args.rows, 7)
        secret = base / "tenant.secret"
        write_secret(secret)
        certs = dev_certs(base)
        store = base / "store.sqlite3"
        modes: dict[str, tuple[Path, Path | None]] = {}
        for name, c in (("tls", certs), ("plaintext", None)):
            cfg = write_wrapper_config(base / f"{name}.toml", dsn, 0, secret, store, certs=c)
            modes[name] = (cfg, c.ca_cert if c else None)
        runs: dict[str, list[dict[str, float]]] = {"tls": [], "plaintext": []}
        order = ["tls", "plaintext"] * args.rounds
        for i, name in enumerate(order):
            cfg, ca = modes[name]
            port = free_port()
            w = Wrapper(cfg, port, base / f"{name}.log", ca).start(wait=True, timeout=600)
            wrappers.append(w)
            if i == 0:
                log("initial copy done (first start)")
            cpu0 = cpu_seconds(w.pid)
            r = asyncio.run(bootstrap_once(port, secret, ca, args.timeout))
            cpu = cpu_seconds(w.pid) - cpu0
            w.stop()
            if r["rows"] != args.rows:
                raise RuntimeError(f"{name}: driver holds {r['rows']} rows of {args.rows}")
            runs[name].append(
                {
                    "seconds": r["seconds"],
                    "rows_per_s": r["rows_per_s"],
                    "cpu": cpu,
                    "driver_cpu": r["cpu_seconds"],
                }
            )
            log(
                f"{name}: {r['rows_per_s']:,.0f} rows/s, CPU wrapper {cpu:.1f} s, "
                f"driver {r['cpu_seconds']:.1f} s"
            )
        out: dict[str, Any] = {"rows": args.rows, "rounds": args.rounds, "runs": runs}
        for name, rs in runs.items():
            out[name] = {
                "rows_per_s": statistics.median(r["rows_per_s"] for r in rs),
                "best_rows_per_s": max(r["rows_per_s"] for r in rs),
                "wrapper_cpu_s": statistics.median(r["cpu"] for r in rs),
                "driver_cpu_s": statistics.median(r["driver_cpu"] for r in rs),
            }
        out["tls_over_plaintext"] = out["tls"]["rows_per_s"] / out["plaintext"]["rows_per_s"]
        out["tls_over_plaintext_best"] = (
            out["tls"]["best_rows_per_s"] / out["plaintext"]["best_rows_per_s"]
        )
        return out
    finally:
        for w in wrappers:
            w.stop()
        pg.stop()


# -- report -------------------------------------------------------------------


def report(r: dict[str, Any]) -> str:
    c, t = r["per_row"], r["transport"]
    lines = [
        START,
        f"Run of {r['date']} on 2 CPUs, commit `{r.get('commit', '?')}`. "
        f"Frames of {c['frame_rows']} rows × {DIM}-d, {c['wire_bytes_per_row']:,.0f} bytes per "
        "row on the wire. Best of "
        f"{r['repeat']} per figure.",
        "",
        "| per row, in process | µs/row | vs protobuf serialize+parse (baseline, same run) |",
        "| --- | --- | --- |",
        f"| baseline: protobuf serialize + parse of the frame | {c['baseline_protobuf_us']:.2f} "
        "| 1.0× |",
    ]
    b = c["baseline_protobuf_us"]
    for name, key in (("build_frame (seal + encrypt + sign)", "build_frame_us"),):
        lines.append(f"| {name} | {c[key]:.2f} | {c[key] / b:.1f}× |")
    lines.append(
        f"| open_frame (verify + decrypt + unseal) | {c['open_frame_us']:.2f} "
        f"| {c['open_frame_us'] / b:.1f}× |"
    )
    for name, us in c["parts_us"].items():
        lines.append(f"|   ↳ {name} | {us:.2f} | |")
    lines += [
        "",
        f"Bootstrap of {t['rows']:,} rows by a driver in its own process, from the real "
        f"wrapper, median of {t['rounds']} alternating rounds:",
        "",
        "| transport | rows/s, median (best) | CPU s: wrapper / driver process | "
        "TLS / plaintext, median (best) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {label} | {m['rows_per_s']:,.0f} ({m['best_rows_per_s']:,.0f}) "
            f"| {m['wrapper_cpu_s']:.1f} / {m['driver_cpu_s']:.1f} | {ratio} |"
            for label, m, ratio in (
                ("plaintext (server.insecure, baseline)", t["plaintext"], "1.0×"),
                (
                    "TLS (default)",
                    t["tls"],
                    f"{t['tls_over_plaintext']:.2f}× ({t['tls_over_plaintext_best']:.2f}×)",
                ),
            )
        ),
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frame-rows", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default=str(HERE / "results" / "security.json"))
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    log("per-row costs")
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "repeat": args.repeat,
        "per_row": per_row_costs(args.frame_rows, args.repeat),
    }
    log("TLS against plaintext")
    res["transport"] = transport(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    table = report(res)
    replace_readme_section(START, END, "## Security (`python benchmark/security.py`)", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
