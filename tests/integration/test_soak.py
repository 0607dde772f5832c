"""The fault soak in CI: tests/support/soak.py with a short, fixed plan,
once against PostgreSQL and once against MariaDB (benchmark/soak.py runs
the long, seeded soaks whose figures are published).

Every fault of the plan happens (kill -9 of the wrapper, also while a write
is in flight; SIGSTOP; a database crash and a clean restart; the driver
link cut, stalled and slowed; the database link cut and stalled; the
wrapper's veth link down; a driver restarted; a driver process stopped past
the store's retention; the store's disk full), and the checks are of
correctness only, never of timing: the replicas equal the database at
every checkpoint, no reader saw half a transaction, every answered write
is in the database exactly once, the slot kept advancing, the store is
intact, the wrapper never had to be restarted by anyone but the plan.

Needs root (a network namespace, a tmpfs for the store), as CI has; fails
rather than skips under CI=true without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.servers import unavailable
from support.soak import SoakConfig, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLANS = {
    "postgres": [
        "kill9_write",
        "cut_app",
        "db_crash",
        "disk_full",
        "stall_db",
        "sigstop",
        "driver_restart",
        "veth",
        "db_restart",
        "stall_app",
        "cut_db",
        "driver_stall",
        "kill9",
        "slow_app",
    ],
    "mariadb": [
        "kill9",
        "db_crash",
        "cut_db",
        "disk_full",
        "sigstop",
        "driver_restart",
        "veth",
        "stall_app",
        "db_restart",
        "stall_db",
        "driver_stall",
        "kill9",
    ],
}


@pytest.mark.timeout(480)
@pytest.mark.parametrize("flavor", ["postgres", "mariadb"])
async def test_fault_soak(flavor: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("the fault soak", PermissionError("needs root for netns and tmpfs"))
    plan = PLANS[flavor]
    report = await run_soak(
        SoakConfig(
            flavor=flavor,
            seed=11,
            work=tmp_path / "soak",
            plan=plan,
            checkpoint_every=4,
            retention_s=4.0,
            hold=(0.5, 3.0),
            gap=(0.5, 1.5),
            store_mb=64,
            rate=100.0,
            initial_transactions=100,
            ddl_every=100,
            converge_timeout=150.0,
            full_detect_timeout=120.0,
        )
    )
    (tmp_path / "report.json").write_text(json.dumps(report, indent=1, default=str))
    assert report["failures"] == [], "\n\n".join(report["failures"])
    assert report["faults"] == {k: plan.count(k) for k in plan}, report["notes"]
    f = report["figures"]
    assert f["divergent_rows"] == 0 and f["half_transactions_seen"] == 0
    assert f["lost_or_doubled_writes"] == 0
    checks = report["checkpoints"]
    assert len(checks) == -(-len(plan) // 4) and all(c["ok"] for c in checks), checks
    assert report["observations"] > 1000 and f["committed_transactions"] > 1000
    assert report["disk_full"] == {"reported": 1, "bootstraps_served_while_full": 1}
    assert report["wrapper_exits"] == []
    if flavor == "postgres":
        w = report["writes"]
        assert w["acked"] > 20 and not w["failed"] and not w["read_your_writes_violations"]
        assert report["slot"]["checks"] >= 5 and report["slot"]["violations"] == []
