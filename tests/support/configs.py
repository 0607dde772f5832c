"""Wrapper configs for tests that build a source, a plan or an applier
without a daemon: a valid WrapperConfig whose server section is never used
(no secret file is read, nothing listens)."""

from __future__ import annotations

from typing import Any

from prism.wrapper.config import WrapperConfig, config_from_mapping

# What config_from_mapping requires of [server], for configs no server reads.
UNUSED_SERVER: dict[str, Any] = {"tenant_id": "t", "secret_file": "/unused", "insecure": True}


def offline_config(
    tables: list[dict[str, Any]], database: dict[str, Any] | None = None
) -> WrapperConfig:
    """The config of `tables` ([[tables]] entries) on `database` (PostgreSQL
    at an unused DSN by default), with no environment read."""
    return config_from_mapping(
        {
            "database": database if database is not None else {"dsn": "host=unused"},
            "server": dict(UNUSED_SERVER),
            "tables": tables,
        },
        env={},
    )
