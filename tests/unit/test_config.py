"""Wrapper config: every bad value is refused at start, naming key and fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prism.driver import DriverConfig, DriverConfigError
from prism.wrapper.config import FIELDS, config_from_mapping, describe_fields, load_config
from prism.wrapper.errors import ConfigError
from support.configs import UNUSED_SERVER

BASE: dict[str, Any] = {
    "database": {"flavor": "postgres", "dsn": "host=db"},
    "chorus": {
        "listen_port": 50051,
        "tenant_id": "acme",
        "secret_file": "/etc/s",
        "insecure": True,
    },
    "tables": [{"name": "items", "vector_column": "emb", "vector_dim": 384}],
}


def with_(**sections: Any) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in BASE.items()}
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return data


def test_defaults_and_seed_keys() -> None:
    cfg = config_from_mapping(BASE, env={})
    assert cfg.dsn == "host=db" and [t.id for t in cfg.tenants] == ["acme"]
    assert cfg.tables[0].tenant == "acme"
    assert cfg.server.listen_port == 50051
    assert cfg.store.retention_seconds == 7 * 24 * 3600
    t = cfg.table("public.items")  # schema defaults to public
    assert (cfg.source_dim(t), cfg.table_dim(t)) == (384, 384)


def test_environment_overrides_the_file() -> None:
    cfg = config_from_mapping(
        BASE, env={"PRISM_CHORUS_LISTEN_PORT": "6000", "PRISM_DATABASE_BINARY": "false"}
    )
    assert cfg.server.listen_port == 6000 and cfg.database.binary is False
    with pytest.raises(ConfigError, match=r"chorus.listen_port.*PRISM_CHORUS_LISTEN_PORT"):
        config_from_mapping(BASE, env={"PRISM_CHORUS_LISTEN_PORT": "lots"})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            with_(database={"dsn": None}) | {"database": {"flavor": "postgres"}},
            "missing required key database.dsn",
        ),
        (with_(chorus={"listen_port": 70000}), "listen_port = 70000.*TCP port"),
        (with_(chorus={"listen_port": True}), "expected an integer"),
        (with_(database={"flavor": "oracle"}), "database.flavor"),
        (with_(database={"slot": "bad-name;"}), "database.slot"),
        (with_(chorus={"tenant_id": ""}), "chorus.tenant_id"),
        (with_(store={"synchronous": "off"}), "store.synchronous"),
        (with_(chorus={"colour": "blue"}), "unknown key chorus.colour"),
        (with_(extra={"a": 1}), r"unknown section \[extra\]"),
        (
            with_(
                tables=[],
                chorus={"tenant_id": "", "secret_file": ""},
                tenants=[{"id": "a", "secret_files": ["/a"]}, {"id": "b", "secret_files": ["/b"]}],
            ),
            r"no \[\[tables\]\].*2 tenants",
        ),
        (with_(tables=[{"name": "x", "vector_column": "v"}]), "vector_dim.*required"),
        (
            with_(
                tables=[{"name": "x", "vector_column": "v", "vector_dim": 3, "text_columns": ["a"]}]
            ),
            "either vector_column or text_columns",
        ),
        (
            with_(tables=[{"name": "x", "vectr_column": "v"}]),
            r"unknown key\(s\) \['vectr_column'\]",
        ),
        (with_(tables=[{"name": "x"}, {"name": "public.x"}]), "lists a table twice"),
        (with_(tables=[{"name": "x; drop"}]), "not schema.table"),
        (with_(vectors={"dimension": 512}), "larger than table public.items"),
        (
            with_(tables=[{"name": "x", "writable": "yes"}]),
            r"tables\[0\].writable \(public.x\): expected true or false, got 'yes'",
        ),
        (with_(tables=[{"name": "x", "writable_columns": ["a"]}]), "set writable = true"),
        (with_(database={"write_retries": 50}), "database.write_retries"),
        (
            with_(tables=[{"name": "x", "text_columns": ["a"], "vector_in_rows": False}]),
            "vector_in_rows.*only applies to a table with vector_column",
        ),
        (with_(store={"commit_interval_ms": -1}), "store.commit_interval_ms"),
    ],
)
def test_bad_values_are_refused_by_name(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(data, env={})


def test_writes_table_only_when_something_is_writable() -> None:
    assert config_from_mapping(BASE, env={}).writes_table is None
    cfg = config_from_mapping(
        with_(
            tables=[{"name": "x", "writable": True, "writable_columns": ["a"]}],
            database={"writes_table": "my_writes"},
        ),
        env={},
    )
    assert cfg.writes_table == "public.my_writes"
    assert cfg.table("public.x").writable_columns == ("a",)


TLS = {"cert_file": "/etc/prism/server.pem", "key_file": "/etc/prism/server.key"}


def two_tenants(**acme: Any) -> dict[str, Any]:
    return {
        "database": {"dsn": "host=db"},
        "tls": dict(TLS),
        "tenants": [
            {"id": "acme", "secret_files": ["/s/acme.new", "/s/acme.old"]} | acme,
            {"id": "bank", "secret_files": "/s/bank"},
        ],
        "tables": [{"name": "items", "tenant": "acme"}, {"name": "ledger", "tenant": "bank"}],
    }


def test_several_tenants_each_with_their_tables() -> None:
    cfg = config_from_mapping(
        two_tenants(old_secrets_until="2026-12-31T00:00:00Z"), env={}, origin="w.toml"
    )
    acme, bank = cfg.tenants
    assert acme.secret_files == ("/s/acme.new", "/s/acme.old")
    assert acme.old_secrets_until == 1798675200.0
    assert bank.secret_files == ("/s/bank",) and bank.old_secrets_until is None
    assert [t.name for t in cfg.tables_of("bank")] == ["public.ledger"]
    assert not cfg.insecure and cfg.tls.cert_file == TLS["cert_file"]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({**two_tenants(), "tls": {}}, "missing required keys tls.cert_file, tls.key_file"),
        (
            {**two_tenants(), "tls": TLS | {"client_ca_file": "/ca"}, "chorus": {"insecure": True}},
            "client_ca_file needs TLS",
        ),
        (two_tenants(client_identities=["app"]), "set tls.client_ca_file"),
        (two_tenants(id="bank"), "lists a tenant twice"),
        (two_tenants(id="bad tenant!"), r"tenants\[0\].id"),
        (two_tenants(secret_files=[]), r"tenants\[0\].secret_files \(acme\): expected a list"),
        (two_tenants(colour="red"), r"unknown key\(s\) \['colour'\]"),
        (
            two_tenants(old_secrets_until="next week"),
            r"tenants\[0\].old_secrets_until \(acme\): expected a date-time",
        ),
        (two_tenants(old_secrets_until="2026-12-31T00:00:00"), "with a time zone"),
        (
            {**two_tenants(), "tables": [{"name": "items"}]},
            r"tables\[0\].tenant \(public.items\): required with several tenants",
        ),
        (
            {**two_tenants(), "tables": [{"name": "items", "tenant": "carol"}]},
            "'carol' is not one of",
        ),
        (
            {**two_tenants(), "chorus": {"tenant_id": "acme", "secret_file": "/s"}},
            "both given; keep one",
        ),
        (
            {"database": {"dsn": "x"}, "tls": TLS, "tables": [{"name": "t"}]},
            "missing required keys server.tenant_id, server.secret_file",
        ),
    ],
)
def test_bad_tenant_and_tls_settings_are_refused_by_name(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(data, env={})


def test_client_identity_mapped_to_two_tenants_is_refused() -> None:
    data = two_tenants(client_identities=["app"])
    data["tenants"][1]["client_identities"] = ["app"]
    data["tls"] = TLS | {"client_ca_file": "/ca"}
    with pytest.raises(ConfigError, match="'app' maps to both 'acme' and 'bank'"):
        config_from_mapping(data, env={})


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[database\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_example_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "deploy" / "config.example.toml")
    assert [t.name for t in cfg.tables] == ["public.products", "public.articles"]


def test_reference_lists_every_key_once() -> None:
    ref = describe_fields()
    for f in FIELDS:
        assert ref.count(f.dotted + " ") == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"wrapper_port": 0}, "wrapper_port"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"secret_file": ""}, "secret_file"),
        ({"reconnect_min_s": -1}, "reconnect_min_s"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_max_s"),
        ({"max_frame_rows": 0}, "max_frame_rows"),
        ({"wrapper_host": ""}, "wrapper_host"),
        ({"snapshot_dir": ""}, "snapshot_dir"),
        ({"snapshot_dir": 3}, "snapshot_dir"),
        ({"snapshot_dir": __file__}, "snapshot_dir: .* is not a directory"),
        ({"snapshot_interval_s": 0}, "snapshot_interval_s"),
        ({"snapshot_interval_s": float("nan")}, "snapshot_interval_s"),
        ({"link_silence_s": 1}, "link_silence_s: 1 must be at least 2 seconds"),
        ({"link_silence_s": float("inf")}, "link_silence_s"),
        ({"link_silence_s": "15"}, "link_silence_s"),
    ],
)
def test_driver_config_rejects_bad_arguments(kw: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"tenant_id": "acme", "secret_file": "/s"} | kw
    with pytest.raises(DriverConfigError, match=match):
        DriverConfig(**args)


@pytest.mark.parametrize(
    ("insecure", "asks_for_tls"), [(" Yes ", False), ("on", False), ("no", True)]
)
def test_the_missing_keys_list_reads_insecure_as_the_config_does(
    insecure: str, asks_for_tls: bool
) -> None:
    """A first config's list of missing keys asks for TLS files unless
    insecure is on, spelled any way the config itself takes (switchwords)."""
    with pytest.raises(ConfigError, match=r"database\.dsn") as err:
        config_from_mapping(
            {
                "database": {"flavor": "postgres"},
                "server": {
                    "listen_port": 7000,
                    "tenant_id": "t",
                    "secret_file": "/s",
                    "insecure": insecure,
                },
            }
        )
    assert ("tls.cert_file" in str(err.value)) is asks_for_tls
    # And the config itself reads the same word the same way.
    with_dsn = {
        "database": {"dsn": "host=unused"},
        "server": {**UNUSED_SERVER, "insecure": insecure},
    }
    if asks_for_tls:
        with pytest.raises(ConfigError, match=r"tls\.cert_file"):
            config_from_mapping(with_dsn, env={})
    else:
        assert config_from_mapping(with_dsn, env={}).insecure
