"""The operator's side on the real `prism-wrapper` process (issue 15): the
seed's documented command line and minimal config, capturing every keyed
table when the config names none, `status`, and the tools that must refuse
rather than fake success (rotate-keys without a store, gen-certs over an
existing CA)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prism.wrapper.certs import CertPaths
from support.servers import WrapperProcess, driver_for, new_port, write_config

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("prism-wrapper"))  # the installed console script


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def seed_config(path: Path, dsn: str, port: int, **extra: dict[str, Any]) -> Path:
    """The seed's minimal config: [database] flavor and dsn, [chorus]
    listen_port and tenant_id (plus what `extra` adds)."""
    sections: dict[str, dict[str, Any]] = {
        "database": {"flavor": "postgres", "dsn": dsn},
        "chorus": {"listen_port": port, "tenant_id": "acme"},
    }
    for name, body in extra.items():
        sections.setdefault(name, {}).update(body)
    return write_config(path, sections, [])


def store_of(proc: WrapperProcess) -> Path:
    return Path(tomllib.loads(proc.config_path.read_text())["store"]["path"])


def test_version_and_a_bad_log_level() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == "prism-wrapper 0.1.0"
    r = cli("--log-level", "chatty", "run", "--config", "/nonexistent.toml")
    assert r.returncode == 2
    assert "'chatty' is not a log level; one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in r.stderr
    assert cli("--log-level", "debug", "config-reference").returncode == 0  # any case


def test_the_seeds_minimal_config_fails_once_naming_every_missing_key(
    tmp_path: Path, db: Any
) -> None:
    cfg = seed_config(tmp_path / "wrapper.toml", db.dsn, new_port())
    r = cli("--config", str(cfg))  # the seed's form: no subcommand
    assert r.returncode == 2, r.stderr
    first, *rest = r.stderr.strip().splitlines()
    assert first == (
        f"prism-wrapper: {cfg}: missing required keys chorus.secret_file, tls.cert_file, "
        "tls.key_file; add (the values are examples):"
    )
    pasted = "\n".join(rest)
    assert "# in your [chorus] section" in pasted  # the section exists: no second header
    assert 'secret_file = "/etc/prism-wrapper/acme.secret"' in pasted
    assert "[tls]" in pasted and "insecure = true in [chorus]" in pasted
    assert "Traceback" not in r.stderr


def test_seed_cli_form_runs_the_daemon_and_captures_every_keyed_table(
    tmp_path: Path, db: Any, secret_file: Path, certs: CertPaths
) -> None:
    """`prism-wrapper --config F` with the seed's config (plus a secret and
    TLS, which it lists as missing) and no [[tables]]: every table with a
    primary key is captured, logged at start and shown by `check`."""
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, title text);"
        "CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY, total int);"
        "CREATE TABLE scratch (note text);"  # no key: not captured
        "INSERT INTO items VALUES (1, 'a'), (2, 'b'); INSERT INTO sales.orders VALUES (7, 70);"
    )
    port = new_port()
    cfg = seed_config(
        tmp_path / "wrapper.toml",
        db.dsn,
        port,
        database={"slot": f"prism_{db.name}"},
        chorus={"secret_file": str(secret_file)},
        tls={"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
        store={"path": str(tmp_path / "store.sqlite3")},
    )
    check = cli("check", "--config", str(cfg))
    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        "ok   no [[tables]]: capturing every table with a primary key: public.items, sales.orders"
        in check.stdout
    )
    log = tmp_path / "wrapper.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([CLI, "--config", str(cfg)], stdout=out, stderr=out)
    wrapper = WrapperProcess(cfg, port, log, certs.ca_cert)
    wrapper.proc = proc
    try:
        wrapper.wait_serving(60)

        async def replica() -> dict[str, Any]:
            async with driver_for(wrapper, secret_file) as driver:
                await driver.wait_ready(timeout=30)
                return {n: dict(t.rows) for n, t in driver._replica.tables.items()}

        tables = asyncio.run(replica())
        assert sorted(tables) == ["public.items", "sales.orders"]
        assert len(tables["public.items"]) == 2 and len(tables["sales.orders"]) == 1
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        chosen = [x for x in lines if x["msg"].startswith("no [[tables]] configured")]
        assert chosen and chosen[0]["tables"] == ["public.items", "sales.orders"]
        # A first start is no "afresh" copy: nothing to warn about.
        assert not [x for x in lines if "afresh" in x["msg"]]
        assert [x for x in lines if x["msg"].startswith("initial copy of the tables")]
        assert wrapper.terminate() == 0
    finally:
        wrapper.stop()


def test_status_summarizes_health_and_json_gives_the_machine_form(
    wrapper: Any, db: Any, secret_file: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
    db.execute("INSERT INTO items SELECT g, 't' FROM generate_series(1, 30) g")
    proc = wrapper([{"name": "items"}])
    health = proc.health()
    r = cli("status", "--config", str(proc.config_path))
    assert r.returncode == 0, r.stdout + r.stderr
    head = r.stdout.splitlines()[0]
    assert head == f"prism-wrapper at 127.0.0.1:{proc.port}: SERVING " + (
        "(streaming from the database and serving drivers)"
    )
    assert f"stream       {health.stream_id}" in r.stdout
    assert "30 rows copied" in r.stdout and "key epochs   acme 1" in r.stdout
    r = cli("status", "--json", "--config", str(proc.config_path))
    data = json.loads(r.stdout)
    assert data["status"] == "SERVING" and data["stream_id"] == health.stream_id
    assert data["counters"]["snapshot_rows"] == 30
    assert data["counters"]["key_epoch:acme"] == 1
    assert data["counters"]["subscribers"] == 0
    assert data["counters"]["store_bytes"] > 0
    # The wrapper gone: status says so, and fails.
    proc.stop()
    r = cli("status", "--config", str(proc.config_path), "--timeout", "2")
    assert r.returncode == 1
    assert r.stdout.startswith(f"prism-wrapper at 127.0.0.1:{proc.port}: UNREACHABLE")
    r = cli("status", "--json", "--config", str(proc.config_path), "--timeout", "2")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == "UNREACHABLE"


def test_rotate_keys_refuses_a_store_that_does_not_exist(
    wrapper: Any, db: Any, tmp_path: Path
) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    proc = wrapper([{"name": "items"}], start=False)
    store = store_of(proc)
    assert not store.exists()
    r = cli("rotate-keys", "--config", str(proc.config_path))
    assert r.returncode == 2
    assert f"store {store} (store.path) does not exist" in r.stderr
    assert "key epoch" not in r.stdout
    assert not store.exists()  # and nothing was created in its place
    # Against the store of a wrapper that ran, it rotates.
    proc.start()
    r = cli("rotate-keys", "--config", str(proc.config_path))
    assert r.returncode == 0 and r.stdout.strip() == "tenant acme: key epoch 2"


def test_the_store_is_created_private(wrapper: Any, db: Any) -> None:
    """Mode 600 (directory 700) outside systemd too, whatever the umask."""
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    old = os.umask(0o022)
    try:
        proc = wrapper([{"name": "items"}])
    finally:
        os.umask(old)
    store = store_of(proc)
    for p in (store, store.with_name(store.name + "-wal")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_gen_certs_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    r = cli("gen-certs", str(out), "--client", "shop-app")
    assert r.returncode == 0, r.stderr
    ca = (out / "ca.pem").read_bytes()
    client = (out / "client-shop-app.pem").read_bytes()
    r = cli("gen-certs", str(out), "--client", "blog-app")
    assert r.returncode == 2
    assert f"gen-certs: {out / 'ca.pem'} exists" in r.stderr and "--force" in r.stderr
    assert (out / "ca.pem").read_bytes() == ca  # untouched, and nothing else written
    assert not (out / "client-blog-app.pem").exists()
    r = cli("gen-certs", str(out), "--force")
    assert r.returncode == 0 and (out / "ca.pem").read_bytes() != ca
    assert (out / "client-shop-app.pem").read_bytes() == client  # not reissued


def test_the_example_config_names_the_files_gen_certs_writes(tmp_path: Path) -> None:
    example = (Path(__file__).parents[2] / "deploy" / "config.example.toml").read_text()
    r = cli("gen-certs", str(tmp_path), "--client", "shop-app")
    assert r.returncode == 0
    written = {p.name for p in tmp_path.iterdir()}
    for key in ("cert_file", "key_file", "client_ca_file"):
        line = next(x for x in example.splitlines() if x.startswith(f"{key} ="))
        name = Path(line.split('"')[1]).name
        assert name in written, f"{key} names {name}; gen-certs writes {sorted(written)}"
