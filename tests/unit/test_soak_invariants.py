"""The soak's half-transaction check (support.soak_workload.group_violations)
finds each way a reader could see half a group transaction, and nothing in
whole states."""

from __future__ import annotations

from typing import Any

from support.soak_workload import GROUP_ROWS, GROUP_START, GROUPS, group_violations


def start() -> dict[str, dict[str, Any]]:
    return {
        f"[{g}, {k}]": {"g": g, "k": k, "txn": 0, "peers": str(g), "v": GROUP_START}
        for g in range(GROUPS)
        for k in range(GROUP_ROWS)
    }


def apply(rows: dict[str, dict[str, Any]], txn: int, groups: list[int], only: int = 99) -> None:
    """Group transaction `txn` over `groups`; `only` rows of it applied."""
    peers = ",".join(map(str, sorted(groups)))
    deltas = [7, -3, 2, -6] * len(groups)
    deltas[-1] -= sum(deltas)
    n = 0
    for j, g in enumerate(groups):
        for k in range(GROUP_ROWS):
            if n == only:
                return
            r = rows[f"[{g}, {k}]"]
            r.update(txn=txn, peers=peers, v=r["v"] + deltas[j * GROUP_ROWS + k])
            n += 1


def test_whole_transactions_pass() -> None:
    rows = start()
    assert group_violations(rows) == []
    apply(rows, 1, [3, 9])
    apply(rows, 2, [9])
    apply(rows, 3, [1, 3, 30])
    assert group_violations(rows) == []


def test_half_of_a_group_is_seen() -> None:
    rows = start()
    apply(rows, 1, [5], only=2)
    problems = group_violations(rows)
    assert any("group 5" in p for p in problems), problems


def test_a_peer_group_left_behind_is_seen() -> None:
    rows = start()
    apply(rows, 1, [4, 8], only=GROUP_ROWS)  # group 4 whole, group 8 not yet
    problems = group_violations(rows)
    assert any("peer group 8" in p for p in problems), problems


def test_a_later_transaction_on_the_peer_is_not_half() -> None:
    rows = start()
    apply(rows, 1, [4, 8])
    apply(rows, 2, [8])
    assert group_violations(rows) == []


def test_a_changed_sum_and_a_missing_row_are_seen() -> None:
    rows = start()
    rows["[0, 0]"]["v"] += 1
    assert any("sum" in p for p in group_violations(rows))
    del rows["[0, 0]"]
    assert any("group 0" in p for p in group_violations(rows))
