"""`prism-wrapper`: the daemon's command line (run, check, gen-secret).

Config is read here, at the edge, into a frozen WrapperConfig; everything
below takes typed arguments. SIGTERM (systemd stop) stops the pipeline after
its current store commit, drains the gRPC streams for chorus.grace_seconds,
and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from prism.fabric.errors import PrismError
from prism.fabric.keys import load_secret, write_secret
from prism.wrapper.config import WrapperConfig, describe_fields, load_config
from prism.wrapper.logs import setup_logging

log = logging.getLogger("prism.wrapper")


def cmd_run(cfg: WrapperConfig) -> int:
    from prism.wrapper.pipeline import Pipeline
    from prism.wrapper.server import WrapperState, create_server
    from prism.wrapper.store import Store
    from prism.wrapper.writes import WriteExecutor

    secret = load_secret(cfg["chorus.secret_file"])
    store = Store(cfg.store_path, str(cfg["store.synchronous"]))
    pipeline = Pipeline(cfg, store, secret)
    writes = (
        WriteExecutor(
            cfg, store, lambda: pipeline.shapes, lambda: pipeline.status.state == "STREAMING"
        )
        if cfg.writes_table is not None
        else None
    )
    state = WrapperState(cfg=cfg, store=store, pipeline=pipeline, secret=secret, writes=writes)
    address = f"{cfg['chorus.listen_host']}:{cfg['chorus.listen_port']}"
    server, port = create_server(state, address)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
    worker.start()
    server.start()
    if cfg["chorus.insecure"]:
        log.warning("serving gRPC without TLS (chorus.insecure = true)")
    log.info(
        "listening",
        extra={
            "host": cfg["chorus.listen_host"],
            "port": port,
            "tenant": cfg.tenant_id,
            "store": str(cfg.store_path),
            "stream_id": store.meta.stream_id,
        },
    )
    while not stop.is_set():
        stop.wait(0.5)
        if not worker.is_alive():
            break
    pipeline.stop()
    worker.join(timeout=30)
    server.stop(float(cfg["chorus.grace_seconds"])).wait()
    if writes is not None:
        writes.close()
    store.close()
    err = pipeline.status.error
    if err is not None and not stop.is_set():
        print(f"prism-wrapper: {err}", file=sys.stderr)
        return 1
    log.info("stopped", extra={"head": store.meta.head})
    return 0


def cmd_check(cfg: WrapperConfig) -> int:
    """Validate config, secret and database prerequisites; print the fixes."""
    from prism.wrapper.sources.postgres import PostgresSource

    problems: list[str] = []
    try:
        load_secret(cfg["chorus.secret_file"])
    except PrismError as exc:
        problems.append(str(exc))
    source = PostgresSource(cfg)
    try:
        problems += source.check_prerequisites()
        try:
            shapes = source.discover()
            for name, shape in shapes.items():
                print(
                    f"ok   table {name}: key ({', '.join(shape.key_columns)}), "
                    f"{len(shape.columns)} columns"
                )
        except PrismError as exc:
            problems.append(str(exc))
        problems += source.write_privilege_problems()
        if not source.publication_exists():
            print(
                f"note publication {cfg['database.publication']!r} does not exist yet; "
                "prism-wrapper run creates it (needs CREATE on the database, or create it: "
                f"CREATE PUBLICATION {cfg['database.publication']} FOR TABLE ...)"
            )
        print(f"ok   pgoutput binary mode: {'yes' if source.binary else 'no (text mode)'}")
    except PrismError as exc:
        problems.append(str(exc))
    finally:
        source.close()
    for p in problems:
        print(f"FAIL {p}")
    if not problems:
        print("ok   ready to replicate")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prism-wrapper", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the daemon")
    p_run.add_argument("--config", "-c", required=True)
    p_check = sub.add_parser("check", help="validate config and database prerequisites")
    p_check.add_argument("--config", "-c", required=True)
    p_gen = sub.add_parser("gen-secret", help="write a new tenant secret file (mode 600)")
    p_gen.add_argument("path")
    sub.add_parser("config-reference", help="list every config key")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "gen-secret":
            write_secret(Path(args.path))
            print(f"wrote {args.path}")
            return 0
        if args.command == "config-reference":
            print(describe_fields())
            return 0
        cfg = load_config(args.config)
        if args.command == "check":
            return cmd_check(cfg)
        return cmd_run(cfg)
    except PrismError as exc:
        print(f"prism-wrapper: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
