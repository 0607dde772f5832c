"""The embedded default, end to end: the product's main job on one machine.

Starts an embedded PostgreSQL 16 with a sample `products` table, writes a
tenant secret and a wrapper config, runs the real `prism-wrapper` process,
and then acts as the application: a PrismDriver syncs the table, answers
`get` and similarity queries in process, shows a change made in the
database arriving in the replica, and writes through the wrapper. Then the
cache half (examples/cache_demo.py): PrismCache answers a question through
a stand-in LLM once, serves a paraphrase, refuses a look-alike trap and
prints its metrics. Everything prints with timings.

    python examples/demo.py [--rows 5000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg

from prism.driver import DriverConfig, PrismDriver
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.keys import write_secret
from prism.wrapper.certs import generate as generate_certs
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, remove_tree, shared_tmp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cache_demo

ADJECTIVES = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "light",
    "heavy",
    "waterproof",
    "wireless",
    "vintage",
    "organic",
    "compact",
    "foldable",
    "ergonomic",
    "stainless",
    "bamboo",
    "leather",
    "wooden",
    "electric",
]
NOUNS = [
    "running shoes",
    "hiking boots",
    "coffee mug",
    "water bottle",
    "desk lamp",
    "office chair",
    "yoga mat",
    "rain jacket",
    "backpack",
    "headphones",
    "keyboard",
    "notebook",
    "tea kettle",
    "cutting board",
    "tent",
    "sleeping bag",
    "bicycle helmet",
    "sunglasses",
    "wrist watch",
    "phone case",
]
USES = [
    "for trail running",
    "for the office",
    "for camping trips",
    "for daily commuting",
    "for the kitchen",
    "for travel",
    "for students",
    "for rainy days",
    "for long hikes",
    "for home workouts",
]


def sample_products(n: int, seed: int = 42) -> list[tuple[int, str, str, float]]:
    rng = random.Random(seed)
    rows = []
    for i in range(1, n + 1):
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        desc = f"A {rng.choice(ADJECTIVES)} {name} {rng.choice(USES)}."
        rows.append((i, name, desc, round(rng.uniform(3, 300), 2)))
    return rows


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def wait_serving(port: int, proc: subprocess.Popen[bytes], ca: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"prism-wrapper exited with {proc.returncode}")
            try:
                if stub.Health(pb.HealthRequest(), timeout=1).status == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise SystemExit("prism-wrapper did not start serving in time")


async def app(port: int, secret: Path, ca: Path, dsn: str, args_rows: int) -> None:
    cfg = DriverConfig(
        wrapper_host="127.0.0.1",
        wrapper_port=port,
        tenant_id="demo",
        secret_file=secret,
        tls_ca_file=ca,  # TLS by default: trust the development CA
    )
    t0 = time.perf_counter()
    async with PrismDriver(cfg) as driver:
        await driver.wait_ready(timeout=120)
        stats = driver.stats()
        print(
            f"\n[app] replica ready in {ms(time.perf_counter() - t0)}: "
            f"{stats['rows']} rows, position {stats['position']}"
        )

        t = time.perf_counter_ns()
        row = driver.get("public.products", 42)
        print(f"[app] get(products, 42) in {(time.perf_counter_ns() - t) / 1000:.1f} µs -> {row}")

        for text in (
            "waterproof hiking boots for long hikes",
            "coffee mug for the office",
            "wireless headphones for travel",
        ):
            t1 = time.perf_counter()
            matches = await driver.query(text=text, top_k=3)
            took = time.perf_counter() - t1
            print(f"\n[app] query(text={text!r}, top_k=3) in {ms(took)}")
            for m in matches:
                print(f"       {m.score:.3f}  #{m.row_id}  {m.text_repr}  ${m.row['price']}")

        # Another service changes the database; the replica follows by itself.
        with psycopg.connect(dsn, autocommit=True) as conn:
            before = driver.position
            t2 = time.perf_counter()
            conn.execute(
                "UPDATE products SET price = 9.99, name = 'limited edition coffee mug' "
                "WHERE id = 42"
            )
            while (driver.get("public.products", 42) or {}).get("price") != Decimal("9.99"):
                await asyncio.sleep(0.0005)
            print(
                f"\n[app] UPDATE in PostgreSQL visible in the replica after "
                f"{ms(time.perf_counter() - t2)} (position {before} -> {driver.position})"
            )
            print(f"[app] get(products, 42) -> {driver.get('public.products', 42)}")

        # The app writes through the driver (no database credentials here) and
        # reads its own write at once.
        t3 = time.perf_counter()
        ack = await driver.write(
            row_id=args_rows + 1,
            data={
                "name": "trail running shoes",
                "description": "A light trail running shoe.",
                "price": Decimal("120.00"),
            },
        )
        took = time.perf_counter() - t3
        print(
            f"\n[app] driver.write(...) -> event {ack.event_id} at position {ack.position}, "
            f"visible locally after {ms(took)}: {driver.get('public.products', args_rows + 1)}"
        )
        hits = await driver.query(text="trail running shoes", top_k=1)
        print(
            f"[app] query(text='trail running shoes') -> #{hits[0].row_id} "
            f"{hits[0].text_repr} ({hits[0].score:.3f})"
        )

        lat = []
        keys = list(range(1, 1001))
        for k in keys:
            t = time.perf_counter_ns()
            driver.get("public.products", k)
            lat.append(time.perf_counter_ns() - t)
        lat.sort()
        print(f"\n[app] 1000 gets: p50 {lat[500] / 1000:.1f} µs, p99 {lat[990] / 1000:.1f} µs")
        print(f"[app] stats: {driver.stats()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    base = shared_tmp("prismlib-demo-")
    wrapper: subprocess.Popen[bytes] | None = None
    pg = EmbeddedPostgres(base / "pg")
    ok = False
    try:
        t0 = time.perf_counter()
        pg.start()
        print(
            f"[db] embedded PostgreSQL 16 on port {pg.port} ready in "
            f"{ms(time.perf_counter() - t0)} ({base})"
        )
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL, "
                "description text, price numeric(10, 2))"
            )
            t1 = time.perf_counter()
            with conn.cursor().copy("COPY products FROM STDIN") as copy:
                for r in sample_products(args.rows):
                    copy.write_row(r)
            print(f"[db] loaded {args.rows} sample products in {ms(time.perf_counter() - t1)}")
        secret = base / "demo.secret"
        write_secret(secret)
        pki = generate_certs(base / "pki", hosts=["localhost", "127.0.0.1"])
        print(f"[wrapper] development CA and TLS certificate in {base / 'pki'}")
        port = free_port()
        config = base / "prism-wrapper.toml"
        config.write_text(f"""
[database]
flavor = "postgres"
dsn = "{pg.dsn}"

[server]
listen_host = "127.0.0.1"
listen_port = {port}
tenant_id = "demo"
secret_file = "{secret}"

[tls]
cert_file = "{pki.server_cert}"
key_file = "{pki.server_key}"

[store]
path = "{base / "store.sqlite3"}"

[[tables]]
name = "public.products"
text_columns = ["name", "description"]
writable = true
writable_columns = ["name", "description", "price"]
""")
        log = (base / "wrapper.log").open("wb")
        t2 = time.perf_counter()
        wrapper = subprocess.Popen(
            [sys.executable, "-m", "prism.wrapper.cli", "run", "--config", str(config)],
            stdout=log,
            stderr=log,
        )
        wait_serving(port, wrapper, pki.ca_cert)
        kept = "kept" if args.keep else "removed at the end unless the demo fails; --keep keeps it"
        print(
            f"[wrapper] prism-wrapper serving TLS on 127.0.0.1:{port} after "
            f"{ms(time.perf_counter() - t2)} (log: {base / 'wrapper.log'}, {kept})"
        )
        asyncio.run(app(port, secret, pki.ca_cert, pg.dsn, args.rows))
        wrapper.send_signal(signal.SIGTERM)
        print(f"\n[wrapper] SIGTERM -> exit code {wrapper.wait(30)}")
        wrapper = None
        ok = True
        cache_demo.main()  # the product's second half: PrismCache
        return 0
    finally:
        if wrapper is not None:
            wrapper.kill()
        pg.stop()
        if args.keep or not ok:
            # A failed demo keeps its directory: the wrapper's log is what to read.
            print(f"[demo] kept {base} (wrapper.log, pg/postgres.log, the store)")
        else:
            remove_tree(base)
            print(f"[demo] removed {base}; run with --keep to keep its logs and store")


if __name__ == "__main__":
    sys.exit(main())
