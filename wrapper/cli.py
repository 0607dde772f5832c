"""`prism-wrapper`: the daemon's command line (run, check, status,
gen-secret, gen-certs, rotate-keys, config-reference).

Config is read here, at the edge, into a frozen WrapperConfig; everything
below takes typed arguments. `prism-wrapper --config F` with no command runs
the daemon (the seed's documented form). SIGTERM (systemd stop) stops the
pipeline after its current store commit, drains the gRPC streams for
server.grace_seconds, and exits 0.

Exit codes, which the systemd unit relies on: 0 stopped; 1 the daemon
failed at run time (a restart may help: the database gone for longer than
database.retry_limit allows, a permanent database error); 2 the command or
config is wrong, or the wrapper's dependencies are not installed (a restart
cannot help: the unit's RestartPreventExitStatus=2).
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # `python -m prism.wrapper.cli`: the cyclic collector ran some thirty
    # times while the daemon's modules loaded, 13% of their 0.22 s, all of
    # it on the start-up that a restart and the initial copy wait for
    # (benchmark/README.md, "Issue 12"). Off until start-up is done: cmd_run
    # freezes what start-up made and turns it back on; every other command
    # turns it back on at once.
    gc.disable()

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# First of prism's: the daemon's gRPC loads on iomgr (prism.fabric.grpc_engine).
import prism.fabric.grpc_engine  # noqa: F401
from prism.fabric.blas import limit_process_to_one_blas_thread
from prism.fabric.errors import PrismError
from prism.fabric.keys import load_secret, write_secret
from prism.wrapper.auth import Authenticator, TenantSecrets
from prism.wrapper.config import WrapperConfig, describe_fields, load_config
from prism.wrapper.errors import ConfigError, WrapperError
from prism.wrapper.heap import keep_freed_memory
from prism.wrapper.logs import setup_logging

if TYPE_CHECKING:
    from prism.wrapper.keyring import Keyring

log = logging.getLogger("prism.wrapper")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXIT_FAILED, EXIT_USAGE = 1, 2
# The libraries each flavor's source needs: the [wrapper] extra.
_SOURCE_MODULES = {"postgres": ("psycopg",), "mysql": ("pymysql", "pymysqlreplication")}


class MissingExtraError(ConfigError):
    """This install lacks the wrapper's dependencies (prismlib[wrapper])."""


def version() -> str:
    # importlib.metadata is imported here, not with the module: it took 18 ms
    # of every start before the daemon listened (benchmark/README.md, "Issue 12").
    from importlib import metadata

    try:
        return metadata.version("prismlib")
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    """--version, looking the version up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"prism-wrapper {version()}")  # on stdout, as argparse's own action prints it
        parser.exit()


def require_wrapper_extra(flavor: str) -> None:
    """Stop with the install command, not a traceback, when the flavor's
    database libraries are missing (an install of prismlib[driver] only)."""
    missing = [m for m in _SOURCE_MODULES[flavor] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"this install has the driver only: the wrapper needs {', '.join(missing)}. "
            "Install it with: pip install 'prismlib[wrapper]'"
        )


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
    from prism.wrapper.keyring import Keyring  # numpy: after cmd_run's BLAS setting

    return Keyring(cfg.store_path, [t.id for t in cfg.tenants], cfg.server.key_rotation_seconds)


def cmd_run(cfg: WrapperConfig) -> int:
    """Serve from the store at once, whatever the database's state: its
    checks run in the pipeline, which logs them and retries, while drivers
    are served what the store holds."""
    require_wrapper_extra(cfg.flavor)
    # One BLAS thread from the start, before numpy loads OpenBLAS (nothing
    # above imports numpy): the worker thread OpenBLAS otherwise starts at
    # load spins while the daemon imports its modules, 0.1 CPU s of a start-up
    # that shares 2 cores with the database (perf of a restart,
    # benchmark/README.md "Issue 12"). A value the operator set wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    gc.disable()  # until start-up is done (see the top of this module)
    keep_freed_memory()  # large buffers reused, not faulted in afresh (prism.wrapper.heap)
    from prism.wrapper.pipeline import Pipeline
    from prism.wrapper.server import WrapperState, create_server, server_credentials
    from prism.wrapper.sources.flavor import make_probe
    from prism.wrapper.store import Store
    from prism.wrapper.tablelist import resolve_tables
    from prism.wrapper.writes import WriteExecutor

    # The daemon's matrix products are small: one BLAS thread, whatever BLAS
    # numpy loaded with the imports above (prism.fabric.blas).
    if not limit_process_to_one_blas_thread():
        log.warning("threadpoolctl is not installed: BLAS keeps its default threads")

    secrets = tenant_secrets(cfg)
    credentials = server_credentials(cfg)
    store = Store(cfg.store_path, cfg.store.synchronous)
    cfg = resolve_tables(cfg, lambda: store.table_columns())
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
    metrics_server = None
    if cfg.metrics.listen_port:
        state.metrics.watch(cfg, pipeline, store, keyring, make_probe(cfg))
        metrics_server = state.metrics.serve(cfg.metrics.listen_host, cfg.metrics.listen_port)
    address = f"{cfg.server.listen_host}:{cfg.server.listen_port}"
    server, port = create_server(state, address, credentials=credentials)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal received, draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
    # What start-up made (modules, config, the store's index of every row)
    # lives as long as the daemon: out of the collector's reach for good,
    # so its collections walk only what the stream allocates.
    gc.freeze()
    gc.enable()
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
            "version": version(),
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
    if metrics_server is not None:
        metrics_server.close()
    if state.metrics.reader is not None and state.metrics.reader.probe is not None:
        state.metrics.reader.probe.close()
    if writes is not None:
        writes.close()
    keyring.close()
    store.close()
    err = pipeline.status.error
    if err is not None and not stop.is_set():
        print(f"prism-wrapper: {err}", file=sys.stderr)
        return EXIT_FAILED
    log.info("stopped", extra={"head": store.meta.head})
    return 0


def cmd_check(cfg: WrapperConfig) -> int:
    """Validate config, secret and database prerequisites; print the fixes."""
    require_wrapper_extra(cfg.flavor)
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
    if cfg.metrics.listen_port:
        print(f"ok   metrics on {cfg.metrics.listen_host}:{cfg.metrics.listen_port}/metrics")
    if cfg.capture_all:
        from prism.wrapper.tablelist import resolve_tables

        try:
            cfg = resolve_tables(cfg)
            names = ", ".join(t.name for t in cfg.tables)
            print(f"ok   no [[tables]]: capturing every table with a primary key: {names}")
        except PrismError as exc:
            return _verdict([*problems, f"no [[tables]], and listing the tables failed: {exc}"])
    if cfg.flavor == "mysql":
        from prism.wrapper.sources.mysql.preflight import check_database

        return _verdict(problems + check_database(cfg))
    from prism.wrapper.sources.postgres.source import PostgresSource

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
        note = source.restart_point_note()
        print(f"note {note}" if note else "ok   the slot's restart point follows the stream")
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
    return EXIT_FAILED if problems else 0


def cmd_status(cfg: WrapperConfig, args: argparse.Namespace) -> int:
    from prism.wrapper.status import as_dict, channel_for, fetch_health, summary, target_of

    target = target_of(cfg)
    try:
        health = fetch_health(channel_for(cfg, args.ca, args.cert, args.key), target, args.timeout)
    except WrapperError as exc:
        if args.json:
            print(json.dumps({"target": target, "status": "UNREACHABLE", "detail": str(exc)}))
        else:
            print(f"prism-wrapper at {target}: UNREACHABLE\n  {exc}")
        return EXIT_FAILED
    print(json.dumps(as_dict(health, target), indent=2) if args.json else summary(health, target))
    return 0 if health.status == "SERVING" else EXIT_FAILED


def cmd_rotate_keys(cfg: WrapperConfig, tenants: list[str] | None) -> int:
    if not cfg.store_path.exists():
        raise ConfigError(
            f"store {cfg.store_path} (store.path) does not exist: rotate-keys changes the store "
            "of a wrapper that has run; give it that wrapper's config"
        )
    keyring = open_keyring(cfg)
    try:
        for tenant, epoch in keyring.rotate(tenants).items():
            print(f"tenant {tenant}: key epoch {epoch}")
    finally:
        keyring.close()
    return 0


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; one of {', '.join(LOG_LEVELS)}"
        )
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism-wrapper",
        description="prism-wrapper: change-data-capture from PostgreSQL or MySQL to drivers.",
        epilog="With --config and no command, runs the daemon (prism-wrapper run).",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default INFO)",
    )
    parser.add_argument(
        "--config", "-c", dest="top_config", metavar="FILE", help="the config (TOML) file"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", metavar="FILE", help="the config (TOML) file")
        return p

    with_config(sub.add_parser("run", help="run the daemon"))
    with_config(sub.add_parser("check", help="validate config and database prerequisites"))
    p_status = with_config(
        sub.add_parser("status", help="ask the running daemon's Health and summarize it")
    )
    p_status.add_argument("--json", action="store_true", help="print Health as JSON")
    p_status.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    p_status.add_argument("--ca", help="CA of the wrapper's certificate (default: see docs)")
    p_status.add_argument("--cert", help="client certificate, when the wrapper asks for one")
    p_status.add_argument("--key", help="its private key")
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
    p_certs.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every certificate it issued stops being trusted)",
    )
    p_rot = with_config(
        sub.add_parser(
            "rotate-keys", help="advance the key epoch now (the running daemon follows within 1 s)"
        )
    )
    p_rot.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    sub.add_parser("config-reference", help="list every config key")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = getattr(args, "config", None) or args.top_config
    command = args.command
    if command is None:
        if config is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        command = "run"
    setup_logging(args.log_level)
    if command != "run":
        gc.enable()
    try:
        if command == "gen-secret":
            write_secret(Path(args.path))
            print(f"wrote {args.path}")
            return 0
        if command == "gen-certs":
            from prism.wrapper.certs import generate

            paths = generate(args.dir, args.host, args.client, force=args.force)
            print(f"wrote {paths.ca_cert}, {paths.server_cert} and their keys")
            for name, (cert, _key) in paths.clients.items():
                print(f"wrote {cert} (identity {name!r})")
            return 0
        if command == "config-reference":
            print(describe_fields())
            return 0
        if config is None:
            parser.error(f"{command}: --config FILE is required")
        cfg = load_config(config)
        if command == "check":
            return cmd_check(cfg)
        if command == "status":
            return cmd_status(cfg, args)
        if command == "rotate-keys":
            return cmd_rotate_keys(cfg, args.tenant)
        return cmd_run(cfg)
    except ConfigError as exc:
        print(f"prism-wrapper: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrismError as exc:
        print(f"prism-wrapper: {exc}", file=sys.stderr)
        return EXIT_USAGE if not exc.retriable else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
