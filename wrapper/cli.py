"""`prism-wrapper`: the daemon's command line (run, check, gen-secret,
gen-certs, rotate-keys, config-reference).

Config is read here, at the edge, into a frozen WrapperConfig; everything
below takes typed arguments. SIGTERM (systemd stop) stops the pipeline after
its current store commit, drains the gRPC streams for server.grace_seconds,
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
from prism.wrapper.auth import Authenticator, TenantSecrets
from prism.wrapper.config import WrapperConfig, describe_fields, load_config
from prism.wrapper.keyring import Keyring
from prism.wrapper.logs import setup_logging

log = logging.getLogger("prism.wrapper")


def tenant_secrets(cfg: WrapperConfig) -> dict[str, TenantSecrets]:
    """Every tenant's secrets, read (and checked) from their files."""
    return {
        t.id: TenantSecrets(
            id=t.id,
            secrets=tuple(load_secret(f) for f in t.secret_files),
            identities=t.client_identities,
            old_until=t.old_secrets_until,
        )
        for t in cfg.tenants
    }


def open_keyring(cfg: WrapperConfig) -> Keyring:
    return Keyring(cfg.store_path, [t.id for t in cfg.tenants], cfg.server.key_rotation_seconds)


def cmd_run(cfg: WrapperConfig) -> int:
    from prism.wrapper.pipeline import Pipeline
    from prism.wrapper.server import WrapperState, create_server, server_credentials
    from prism.wrapper.store import Store
    from prism.wrapper.writes import WriteExecutor

    secrets = tenant_secrets(cfg)
    credentials = server_credentials(cfg)
    store = Store(cfg.store_path, cfg.store.synchronous)
    keyring = open_keyring(cfg)
    pipeline = Pipeline(cfg, store, {t: keyring.projection_key(t) for t in secrets})
    auth = Authenticator(
        secrets,
        failures_per_minute=cfg.server.auth_failures_per_minute,
        session_ttl_s=cfg.server.session_ttl_seconds,
    )
    writes = (
        WriteExecutor(
            cfg, store, lambda: pipeline.shapes, lambda: pipeline.status.state == "STREAMING"
        )
        if cfg.writes_table is not None
        else None
    )
    state = WrapperState(
        cfg=cfg, store=store, pipeline=pipeline, auth=auth, keyring=keyring, writes=writes
    )
    address = f"{cfg.server.listen_host}:{cfg.server.listen_port}"
    server, port = create_server(state, address, credentials=credentials)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
    worker.start()
    server.start()
    if cfg.insecure:
        log.warning(
            "serving gRPC in PLAINTEXT (server.insecure = true): anyone on the network path "
            "can read sealed frames' metadata and session tokens; use TLS outside development"
        )
    log.info(
        "listening",
        extra={
            "host": cfg.server.listen_host,
            "port": port,
            "tenants": [t.id for t in cfg.tenants],
            "tls": "off" if cfg.insecure else "mutual" if cfg.tls.client_ca_file else "on",
            "store": str(cfg.store_path),
            "stream_id": store.meta.stream_id,
        },
    )
    while not stop.is_set():
        stop.wait(0.5)
        with state.auth_lock:
            auth.expire()
        if not worker.is_alive():
            break
    pipeline.stop()
    worker.join(timeout=30)
    server.stop(cfg.server.grace_seconds).wait()
    if writes is not None:
        writes.close()
    keyring.close()
    store.close()
    err = pipeline.status.error
    if err is not None and not stop.is_set():
        print(f"prism-wrapper: {err}", file=sys.stderr)
        return 1
    log.info("stopped", extra={"head": store.meta.head})
    return 0


def cmd_check(cfg: WrapperConfig) -> int:
    """Validate config, secret and database prerequisites; print the fixes."""
    from prism.wrapper.sources.postgres.source import PostgresSource

    problems: list[str] = []
    for t in cfg.tenants:
        for f in t.secret_files:
            try:
                load_secret(f)
                print(f"ok   tenant {t.id}: secret file {f}")
            except PrismError as exc:
                problems.append(str(exc))
    if cfg.insecure:
        print("note server.insecure = true: gRPC is served in plaintext")
    else:
        from prism.wrapper.server import server_credentials

        try:
            server_credentials(cfg)
            print(f"ok   TLS certificate {cfg.tls.cert_file}")
        except PrismError as exc:
            problems.append(str(exc))
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql.preflight import check_database

        return _verdict(problems + check_database(cfg))
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
                f"note publication {cfg.database.publication!r} does not exist yet; "
                "prism-wrapper run creates it (needs CREATE on the database, or create it: "
                f"CREATE PUBLICATION {cfg.database.publication} FOR TABLE ...)"
            )
        print(f"ok   pgoutput binary mode: {'yes' if source.binary else 'no (text mode)'}")
    except PrismError as exc:
        problems.append(str(exc))
    finally:
        source.close()
    return _verdict(problems)


def _verdict(problems: list[str]) -> int:
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
    p_certs = sub.add_parser(
        "gen-certs", help="write a development CA, a server certificate and client certificates"
    )
    p_certs.add_argument("dir")
    p_certs.add_argument(
        "--host",
        action="append",
        help="server name or IP (repeatable; default localhost, 127.0.0.1)",
    )
    p_certs.add_argument(
        "--client", action="append", help="client certificate name for mTLS (repeatable)"
    )
    p_rot = sub.add_parser(
        "rotate-keys", help="advance the key epoch now (the running daemon follows within 1 s)"
    )
    p_rot.add_argument("--config", "-c", required=True)
    p_rot.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    sub.add_parser("config-reference", help="list every config key")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        if args.command == "gen-secret":
            write_secret(Path(args.path))
            print(f"wrote {args.path}")
            return 0
        if args.command == "gen-certs":
            from prism.wrapper.certs import generate

            paths = generate(args.dir, args.host, args.client)
            print(f"wrote {paths.ca_cert}, {paths.server_cert} and their keys")
            for name, (cert, _key) in paths.clients.items():
                print(f"wrote {cert} (identity {name!r})")
            return 0
        if args.command == "config-reference":
            print(describe_fields())
            return 0
        cfg = load_config(args.config)
        if args.command == "check":
            return cmd_check(cfg)
        if args.command == "rotate-keys":
            keyring = open_keyring(cfg)
            try:
                for tenant, epoch in keyring.rotate(args.tenant).items():
                    print(f"tenant {tenant}: key epoch {epoch}")
            finally:
                keyring.close()
            return 0
        return cmd_run(cfg)
    except PrismError as exc:
        print(f"prism-wrapper: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
