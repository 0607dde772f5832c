"""The command line's parsing and its pure helpers: the seed's form without
a subcommand, validated log levels, the status summary, the capture list,
and the source's lag in binlog bytes; and that the command line loads no
numpy before the daemon sets its BLAS threads."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from prism.fabric import wrapper_pb2 as pb
from prism.wrapper.cli import build_parser, main
from prism.wrapper.config import config_from_mapping
from prism.wrapper.sources.mysql.admin import binlog_lag
from prism.wrapper.sources.mysql.positions import pack_position
from prism.wrapper.status import as_dict, summary, target_of
from prism.wrapper.tablelist import with_tables

CFG: dict[str, Any] = {
    "database": {"dsn": "host=db"},
    "chorus": {"tenant_id": "acme", "secret_file": "/s", "insecure": True},
}


def test_config_without_a_command_means_run_and_any_case_log_level() -> None:
    args = build_parser().parse_args(["--log-level", "warning", "--config", "w.toml"])
    assert args.command is None and args.top_config == "w.toml" and args.log_level == "WARNING"
    args = build_parser().parse_args(["status", "-c", "w.toml", "--json"])
    assert args.command == "status" and args.config == "w.toml" and args.json


def test_the_command_line_loads_no_numpy_before_the_daemon_sets_its_blas_threads() -> None:
    # cmd_run sets OPENBLAS_NUM_THREADS before its imports load numpy, which
    # OpenBLAS reads once, at load: an import at the top of cli.py that pulls
    # numpy in would start OpenBLAS's worker thread again, unnoticed.
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    probe = (
        "import sys, prism.wrapper.cli; "
        "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith('numpy.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


def test_no_command_and_no_config_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: prism-wrapper" in capsys.readouterr().err


def test_a_command_that_needs_a_config_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check"])
    assert exit_.value.code == 2
    assert "check: --config FILE is required" in capsys.readouterr().err


def test_without_tables_every_keyed_table_is_captured_but_the_write_marker() -> None:
    cfg = config_from_mapping(CFG, env={})
    assert cfg.capture_all and cfg.tables == ()
    cfg = with_tables(cfg, ["sales.orders", "public.items", "public.prism_writes"])
    assert [t.name for t in cfg.tables] == ["public.items", "sales.orders"]
    assert {t.tenant for t in cfg.tables} == {"acme"}
    assert not any(t.has_vectors or t.writable for t in cfg.tables)


def test_status_reads_where_the_daemon_listens() -> None:
    def at(host: str) -> str:
        return target_of(config_from_mapping(CFG | {"server": {"listen_host": host}}, env={}))

    assert at("0.0.0.0") == "127.0.0.1:50051"
    assert at("::") == "[::1]:50051"
    assert at("10.0.0.5") == "10.0.0.5:50051"


def test_status_summary_and_json() -> None:
    h = pb.HealthResponse(
        status="DEGRADED",
        detail="connecting to PostgreSQL: connection refused",
        stream_id="abc",
        head_position=42,
        source_position="0/16B3748",
        last_commit_time_us=1_700_000_000_000_000,
        counters={
            "transactions": 3,
            "changes": 9,
            "snapshot_rows": 100,
            "retries": 4,
            "subscribers": 2,
            "frames_sent": 17,
            "store_bytes": 2_500_000,
            "store_disk_free_bytes": 8_000_000_000,
            "key_epoch:acme": 3,
            "vector_missing:public.items:null": 5,
        },
    )
    text = summary(h, "127.0.0.1:50051", now=1_700_000_010.0)
    assert text.splitlines()[0] == (
        "prism-wrapper at 127.0.0.1:50051: DEGRADED (serving drivers from its store, but not "
        "replicating)"
    )
    assert "detail       connecting to PostgreSQL: connection refused" in text
    assert "last source commit 2023-11-14 22:13:20Z, 10s ago" in text
    assert "drivers      2 subscribed; 17 frames sent" in text
    assert "store        2.5 MB, 8.0 GB free on its disk" in text
    assert "retries      4 database retries" in text
    assert "key epochs   acme 3" in text
    assert "no vector    public.items: 5 rows (null)" in text
    d = as_dict(h, "t")
    assert d["status"] == "DEGRADED" and d["counters"]["key_epoch:acme"] == 3


def test_binlog_lag_counts_the_rest_of_the_file_and_every_later_one() -> None:
    logs = [("mysql-bin.000001", 1000), ("mysql-bin.000002", 700), ("mysql-bin.000003", 300)]
    assert binlog_lag(pack_position("mysql-bin.000002", 500), logs) == 200 + 300
    assert binlog_lag(pack_position("mysql-bin.000003", 300), logs) == 0
    assert binlog_lag(pack_position("mysql-bin.000009", 4), logs) is None  # not listed
    assert binlog_lag(pack_position("mysql-bin.000002", 4, epoch=1), logs) is None
