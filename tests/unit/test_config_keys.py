"""Typed config: every declared key is typed, overridable, named in its
errors and listed by `prism-wrapper config-reference`; [server] and the
seed's [chorus] are one section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from prism.fabric.switchwords import OFF_WORDS, ON_WORDS, is_on
from prism.wrapper.cli import main
from prism.wrapper.config import (
    FIELDS,
    TableConfig,
    TenantConfig,
    config_from_mapping,
    load_config,
)
from prism.wrapper.config_keys import ARRAYS, REQUIRED, SECTIONS, Field
from prism.wrapper.errors import ConfigError

TLS = {"cert_file": "/etc/prism/server.pem", "key_file": "/etc/prism/server.key"}
SERVER_CFG: dict[str, Any] = {
    "database": {"dsn": "host=db"},
    "server": {"tenant_id": "acme", "secret_file": "/etc/s"},
    "tls": TLS,
    "tables": [{"name": "items", "vector_column": "emb", "vector_dim": 384}],
}
SCALARS = [f for f in FIELDS if f.section in SECTIONS]
ENTRY_KEYS = [f for f in FIELDS if f.section in ARRAYS]


def load(data: dict[str, Any], **env: str) -> Any:
    return config_from_mapping(data, env=env)


def test_sections_are_typed_frozen_objects() -> None:
    cfg = load(SERVER_CFG)
    assert cfg.database.slot == "prism" and cfg.server.listen_port == 50051
    assert cfg.store.path == "/var/lib/prism-wrapper/store.sqlite3"
    assert cfg.table("public.items").vector_dim == 384
    python_type = {"int": int, "float": float, "bool": bool, "str": str}
    for f in SCALARS:
        value = getattr(getattr(cfg, f.section), f.key)
        assert type(value) is python_type[f.kind.name], f.dotted
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.listen_port = 1  # type: ignore[misc]


# One value of the wrong type per kind, and the text of each in an error.
WRONG = {"str": 5, "int": "x", "float": [1.5], "bool": "yes", "list[str]": 5, "date-time": 5}


@pytest.mark.parametrize("f", SCALARS, ids=lambda f: f.dotted)
def test_a_wrong_type_names_the_key_and_the_type(f: Field) -> None:
    data = {**SERVER_CFG, f.section: {**SERVER_CFG.get(f.section, {}), f.key: [1]}}
    if f.kind.name == "int":  # text reads as a number (environment values are text)
        data[f.section][f.key] = "x"
    with pytest.raises(ConfigError) as err:
        load(data)
    assert str(err.value) == (
        f"{f.dotted} (from <dict>): expected {f.kind.expected}, got {data[f.section][f.key]!r}"
    )


def test_the_issue_example_reads_as_promised() -> None:
    data = {**SERVER_CFG, "tables": [{"name": "items", "vector_column": "e", "vector_dim": "x"}]}
    with pytest.raises(ConfigError) as err:
        load(data)
    assert str(err.value) == "tables[0].vector_dim (public.items): expected an integer, got 'x'"


@pytest.mark.parametrize("f", ENTRY_KEYS, ids=lambda f: f.dotted)
def test_a_wrong_type_in_an_entry_names_entry_key_and_type(f: Field) -> None:
    """Every [[tables]] and [[tenants]] key, including their names; entries
    take TOML's own types, so "384" is not an integer there."""
    wrong = WRONG[f.kind.name]
    if f.section == "tables":
        entry: dict[str, Any] = {"name": "items", f.key: wrong}
        data = {**SERVER_CFG, "tables": [entry]}
        label = "" if f.key == "name" else " (public.items)"
    else:
        entry = {"id": "acme", "secret_files": ["/s/acme"], f.key: wrong}
        data = {
            "database": {"dsn": "host=db"},
            "tls": TLS,
            "tenants": [entry],
            "tables": [{"name": "items"}],
        }
        label = "" if f.key == "id" else " (acme)"
    with pytest.raises(ConfigError) as err:
        load(data)
    assert str(err.value) == (
        f"{f.section}[0].{f.key}{label}: expected {f.kind.expected}, got {wrong!r}"
    )


def test_entry_values_are_typed() -> None:
    data = {
        "database": {"dsn": "host=db"},
        "tls": TLS | {"client_ca_file": "/ca"},
        "tenants": [
            {
                "id": "acme",
                "secret_files": "/s/acme",
                "client_identities": ["app"],
                "old_secrets_until": "2026-12-31T00:00:00+00:00",
            }
        ],
        "tables": [
            {"name": "s.t", "text_columns": "body", "writable": True, "key_columns": ["a", "b"]}
        ],
    }
    cfg = load(data)
    assert cfg.tenants[0] == TenantConfig(
        id="acme",
        secret_files=("/s/acme",),
        client_identities=("app",),
        old_secrets_until=1798675200.0,
    )
    t = cfg.table("s.t")
    assert (t.text_columns, t.key_columns, t.writable, t.tenant) == (
        ("body",),
        ("a", "b"),
        True,
        "acme",
    )
    assert (t.vector_column, t.vector_dim, t.vector_in_rows) == (None, None, True)


def test_entry_checks_name_the_entry() -> None:
    bad_column = {**SERVER_CFG, "tables": [{"name": "items", "text_repr": ["ok", "no way"]}]}
    with pytest.raises(
        ConfigError,
        match=r"^tables\[0\].text_repr \(public.items\) = \['ok', 'no way'\]: "
        r"'no way' is not a plain column name$",
    ):
        load(bad_column)
    zero = {**SERVER_CFG, "tables": [{"name": "items", "vector_column": "e", "vector_dim": 0}]}
    with pytest.raises(ConfigError, match=r"vector_dim \(public.items\) = 0: must be greater"):
        load(zero)


# -- [server] and the seed's [chorus] ---------------------------------------


def as_chorus(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "server"}
    return out | {"chorus": data["server"]}


def test_chorus_is_the_seeds_spelling_of_server() -> None:
    server = {**SERVER_CFG, "server": SERVER_CFG["server"] | {"listen_port": 7000}}
    assert load(as_chorus(server)) == load(server)
    assert load(as_chorus(server)).server.listen_port == 7000


def test_a_chorus_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "seed.toml"
    path.write_text(
        '[database]\ndsn = "host=db"\n\n'
        '[chorus]\nlisten_port = 6001\ntenant_id = "acme"\nsecret_file = "/s"\ninsecure = true\n\n'
        '[[tables]]\nname = "items"\n'
    )
    cfg = load_config(path, env={})
    assert (cfg.server.listen_port, cfg.server.insecure, cfg.tenants[0].id) == (6001, True, "acme")


def test_the_two_spellings_merge_but_may_not_both_give_a_key() -> None:
    split = {**SERVER_CFG, "chorus": {"listen_port": 7001}}
    cfg = load(split)
    assert (cfg.server.listen_port, cfg.server.tenant_id) == (7001, "acme")
    both = {**SERVER_CFG, "chorus": {"tenant_id": "bank"}}
    with pytest.raises(
        ConfigError,
        match=r"server.tenant_id and chorus.tenant_id are both given in <dict>; keep one",
    ):
        load(both)


def test_errors_name_a_key_as_it_was_spelled() -> None:
    for section in ("server", "chorus"):
        bad_port = {**SERVER_CFG, "server": SERVER_CFG["server"] | {"listen_port": 70000}}
        if section == "chorus":
            bad_port = as_chorus(bad_port)
        with pytest.raises(ConfigError, match=rf"^{section}.listen_port = 70000 \(from <dict>\)"):
            load(bad_port)
        mutual = {
            **SERVER_CFG,
            "server": SERVER_CFG["server"] | {"insecure": True},
            "tls": TLS | {"client_ca_file": "/ca"},
        }
        if section == "chorus":
            mutual = as_chorus(mutual)
        with pytest.raises(ConfigError, match=rf"needs TLS: drop {section}.insecure = true$"):
            load(mutual)
    with pytest.raises(ConfigError, match=r"unknown key chorus.colour"):
        load(as_chorus(SERVER_CFG) | {"chorus": {"colour": "blue"}})


# -- environment overrides ----------------------------------------------------

# A valid value, other than the default, for every section key, as text.
ENV_VALUES = {
    "database.flavor": ("postgresql", "postgresql"),
    "database.dsn": ("host=elsewhere", "host=elsewhere"),
    "database.server_id": ("4242", 4242),
    "database.resume": ("gtid", "gtid"),
    "database.retry_limit": ("0", 0),
    "database.slot": ("other_slot", "other_slot"),
    "database.publication": ("other_pub", "other_pub"),
    "database.writes_table": ("marks", "marks"),
    "database.write_connections": ("2", 2),
    "database.write_retries": ("7", 7),
    "database.binary": ("off", False),
    "database.status_interval_s": ("2.5", 2.5),
    "server.listen_host": ("0.0.0.0", "0.0.0.0"),
    "server.listen_port": ("6000", 6000),
    "server.tenant_id": ("bank", "bank"),
    "server.secret_file": ("/s/bank", "/s/bank"),
    "server.insecure": ("true", True),
    "server.key_rotation_seconds": ("0", 0.0),
    "server.auth_failures_per_minute": ("3", 3),
    "server.session_ttl_seconds": ("60", 60.0),
    "server.grace_seconds": ("1.5", 1.5),
    "server.write_stream_idle_seconds": ("45", 45.0),
    "server.frame_cache_mb": ("128", 128.0),
    "server.frame_spill_mb": ("0", 0.0),
    "server.frame_spill_behind_mb": ("32", 32.0),
    "tls.cert_file": ("/other.pem", "/other.pem"),
    "tls.key_file": ("/other.key", "/other.key"),
    "tls.client_ca_file": ("/ca.pem", "/ca.pem"),
    "store.path": ("/tmp/store.sqlite3", "/tmp/store.sqlite3"),
    "store.retention_seconds": ("3600", 3600.0),
    "store.synchronous": ("normal", "normal"),
    "store.commit_interval_ms": ("2.5", 2.5),
    "vectors.dimension": ("128", 128),
    "vectors.text_dim": ("64", 64),
    "metrics.listen_port": ("9187", 9187),
    "metrics.listen_host": ("0.0.0.0", "0.0.0.0"),
}


def test_every_section_key_has_an_override_case() -> None:
    assert sorted(ENV_VALUES) == sorted(f.dotted for f in SCALARS)


@pytest.mark.parametrize("f", SCALARS, ids=lambda f: f.dotted)
def test_environment_overrides_every_section_key(f: Field) -> None:
    text, value = ENV_VALUES[f.dotted]
    assert getattr(getattr(load(SERVER_CFG), f.section), f.key) != value
    cfg = load(SERVER_CFG, **{f.env: text})
    assert getattr(getattr(cfg, f.section), f.key) == value


def test_both_server_env_spellings_override_either_file_spelling() -> None:
    for data in (SERVER_CFG, as_chorus(SERVER_CFG)):
        assert load(data, PRISM_CHORUS_LISTEN_PORT="6100").server.listen_port == 6100
        assert load(data, PRISM_SERVER_LISTEN_PORT="6200").server.listen_port == 6200
        both = load(data, PRISM_SERVER_LISTEN_PORT="6200", PRISM_CHORUS_LISTEN_PORT="6100")
        assert both.server.listen_port == 6200  # the section's own name wins


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load(SERVER_CFG, PRISM_SERVER_LISTEN_PORT="lots")
    assert str(err.value) == (
        "server.listen_port (from environment PRISM_SERVER_LISTEN_PORT): "
        "expected an integer, got 'lots'"
    )
    with pytest.raises(ConfigError, match=r"^chorus.insecure \(from environment PRISM_CHORUS_"):
        load(SERVER_CFG, PRISM_CHORUS_INSECURE="maybe")


# -- the reference ------------------------------------------------------------


def reference(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`prism-wrapper config-reference`, as {key: its line}."""
    assert main(["config-reference"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows: dict[str, str] = {}
    for line in lines:
        if line and not line[0].isspace() and not line.startswith(("#", "[")):
            name = line.split()[0]
            assert name not in rows, f"{name} listed twice"
            rows[name] = line
    return rows


def test_reference_lists_every_key_with_type_default_and_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = reference(capsys)
    declared = {
        f"{name}.{fld.name}" for name, cls in SECTIONS.items() for fld in dataclasses.fields(cls)
    } | {f"{name}[].{fld.name}" for name, cls in ARRAYS.items() for fld in dataclasses.fields(cls)}
    assert set(rows) == declared == {f.dotted for f in FIELDS}
    for f in FIELDS:
        _, kind, default, *description = rows[f.dotted].split(maxsplit=3)
        assert kind == f.kind.name, f.dotted
        assert (default == "(required)") == (f.default is REQUIRED), f.dotted
        assert description and f.description.split()[0] in description[0], f.dotted
    assert rows["tables[].vector_dim"].split()[1:3] == ["int", "(unset)"]
    assert rows["tenants[].secret_files"].split()[1:3] == ["list[str]", "(required)"]
    assert rows["server.insecure"].split()[1:3] == ["bool", "false"]
    assert rows["database.slot"].split()[1:3] == ["str", '"prism"']
    # Every TableConfig/TenantConfig field is a key; nothing else is.
    assert {fld.name for fld in dataclasses.fields(TableConfig)} == {
        f.key for f in FIELDS if f.section == "tables"
    }


def test_example_config_loads_every_section() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml"
    cfg = load_config(example, env={})
    assert (cfg.server.listen_host, cfg.server.listen_port) == ("0.0.0.0", 50051)
    assert [t.id for t in cfg.tenants] == ["shop", "blog"]
    assert cfg.table("public.products").vector_dim == 384
    assert cfg.tls.client_ca_file and cfg.store.retention_seconds == 604800.0


@pytest.mark.parametrize(
    ("word", "on"), [(w, True) for w in ON_WORDS] + [(w, False) for w in OFF_WORDS]
)
def test_a_switch_word_means_the_same_in_config_and_environment_switches(
    word: str, on: bool
) -> None:
    """A word the config reads as on (from a PRISM_* variable) is one that
    the environment switches read before gRPC loads take as on too
    (prism.fabric.switchwords), in upper case as well."""
    assert load(SERVER_CFG, PRISM_DATABASE_BINARY=word.upper()).database.binary is on
    assert load(SERVER_CFG, PRISM_DATABASE_BINARY=f" {word} ").database.binary is on
    assert is_on(word.upper()) is on
    assert is_on(f" {word} ") is on
