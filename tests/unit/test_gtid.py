"""Unit tests of the GTID state logic (wrapper/sources/mysql/gtid.py), no server:
MariaDB GTID positions and MySQL executed sets, their text forms as the
servers print them, set arithmetic, and the purge / lag checks that decide
whether a stream can resume by GTID."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.wrapper.errors import GtidError, SourceError
from prism.wrapper.sources.mysql.gtid import (
    MariaGtid,
    MariaPosition,
    MySQLGtid,
    MySQLGtidSet,
    decode_state,
    encode_state,
)

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "19d69c1e-ae97-4b8c-a1ef-9e12ba966457"

# -- MariaDB ---------------------------------------------------------------------


def test_maria_position_text_forms() -> None:
    # As BINLOG_GTID_POS / gtid_binlog_pos print it, and a Gtid_list event as
    # SHOW BINLOG EVENTS prints it ("[0-1-7]", captured from MariaDB 10.11).
    p = MariaPosition.parse("1-2-7,0-1-42")
    assert str(p) == "0-1-42,1-2-7"  # canonical: by domain
    assert MariaPosition.parse("[0-1-7]") == MariaPosition.parse("0-1-7")
    assert str(MariaPosition.parse("")) == "" and str(MariaPosition.parse("[]")) == ""
    assert MariaPosition.parse(" 0-1-4 , 1-1-2 ") == MariaPosition.parse("1-1-2,0-1-4")
    assert p.get(1) == MariaGtid(1, 2, 7) and p.get(5) is None


@pytest.mark.parametrize(
    "bad", ["0-1", "a-b-c", "0-1-2-3", "0-1-42,0-2-43", "0-1-18446744073709551616"]
)
def test_maria_position_rejects_bad_text(bad: str) -> None:
    with pytest.raises(GtidError) as e:
        MariaPosition.parse(bad)
    assert isinstance(e.value, SourceError)


def test_maria_contains_and_add() -> None:
    p = MariaPosition.parse("0-1-42")
    assert p.contains(MariaGtid(0, 1, 42)) and p.contains(MariaGtid(0, 2, 40))
    assert not p.contains(MariaGtid(0, 1, 43)) and not p.contains(MariaGtid(1, 1, 1))
    q = p.copy()
    q.add(MariaGtid(0, 2, 43))
    q.add(MariaGtid(1, 1, 1))
    assert str(q) == "0-2-43,1-1-1" and str(p) == "0-1-42"
    with pytest.raises(GtidError, match="not a mariadb GTID"):
        p.add(MySQLGtid(U1, 1))


def test_maria_purged_problem() -> None:
    # The oldest binlog file's Gtid_list says what came before it.
    ours = MariaPosition.parse("0-1-4")
    assert ours.purged_problem(MariaPosition.parse("0-1-4")) is None
    assert ours.purged_problem(MariaPosition.parse("")) is None
    problem = ours.purged_problem(MariaPosition.parse("0-1-7"))
    assert problem and "purged" in problem and "0-1-7" in problem and "0-1-4" in problem
    # A domain we never saw whose start was purged.
    assert MariaPosition.parse("0-1-9").purged_problem(MariaPosition.parse("0-1-7,1-1-3"))
    assert MariaPosition.parse("").purged_problem(MariaPosition.parse("0-1-7"))


def test_maria_missing_problem() -> None:
    ours = MariaPosition.parse("0-1-42")
    assert ours.missing_problem([MariaGtid(0, 1, 42)]) is None
    assert ours.missing_problem([MariaGtid(0, 1, 50), MariaGtid(0, 2, 60)]) is None
    lagging = ours.missing_problem([MariaGtid(0, 1, 40)])
    assert lagging and "0-1-42" in lagging
    # A promoted replica that wrote 0-2-43.. but never got 0-1-42.
    assert ours.missing_problem([MariaGtid(0, 1, 41), MariaGtid(0, 2, 50)])
    assert ours.missing_problem([]) is not None
    assert MariaPosition.parse("").missing_problem([]) is None


# -- MySQL -----------------------------------------------------------------------


def test_mysql_set_parses_server_text() -> None:
    # @@gtid_executed prints one uuid per line, in upper or lower case.
    text = f"{U1.upper()}:1-5:7:9-10,\n{U2}:1-3"
    s = MySQLGtidSet.parse(text)
    assert str(s) == f"{U2}:1-3,{U1}:1-5:7:9-10"
    assert s.intervals(U1) == [(1, 5), (7, 7), (9, 10)]
    assert MySQLGtidSet.parse("") == MySQLGtidSet() and not MySQLGtidSet.parse(" \n")
    # The same uuid twice, overlapping and adjacent intervals: merged.
    assert str(MySQLGtidSet.parse(f"{U1}:1-3:3-5,{U1}:6:8")) == f"{U1}:1-6:8"


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid:1-2",
        f"{U1}",
        f"{U1}:0",
        f"{U1}:5-3",
        f"{U1}:1-x",
        f"{U1}:9223372036854775808",
    ],
)
def test_mysql_set_rejects_bad_text(bad: str) -> None:
    with pytest.raises(GtidError):
        MySQLGtidSet.parse(bad)


def test_mysql_tagged_gtids_are_refused_clearly() -> None:
    with pytest.raises(GtidError) as e:
        MySQLGtidSet.parse(f"{U1}:1-5,{U2}:my_tag:1-3")
    msg = str(e.value)
    assert "tagged" in msg and "MySQL 8.4" in msg and 'database.resume = "position"' in msg


def test_mysql_add_merges_intervals() -> None:
    s = MySQLGtidSet()
    assert s.add_gno(U1, 1) and s.add_gno(U1, 2) and s.add_gno(U1, 5)
    assert str(s) == f"{U1}:1-2:5"
    assert not s.add_gno(U1, 2) and not s.add_gno(U1, 5)  # already there
    assert s.add_gno(U1, 4)  # joins the next
    assert s.add_gno(U1, 3)  # bridges both
    assert s.intervals(U1) == [(1, 5)]
    assert s.add_gno(U1, 9) and s.add_gno(U1, 7) and s.add_gno(U1, 8)
    assert s.intervals(U1) == [(1, 5), (7, 9)]
    assert s.add_gno(U2.upper(), 1)  # another uuid, normalized
    assert str(s) == f"{U2}:1,{U1}:1-5:7-9"
    assert s.has(U1, 8) and not s.has(U1, 6) and s.contains(MySQLGtid(U2, 1))
    with pytest.raises(GtidError):
        s.add_gno(U1, 0)
    with pytest.raises(GtidError):
        s.add_gno("nope", 1)


def test_mysql_difference_and_checks() -> None:
    ours = MySQLGtidSet.parse(f"{U1}:1-100,{U2}:1-5")
    executed = MySQLGtidSet.parse(f"{U1}:1-120,{U2}:1-5")
    assert ours.issubset(executed) and not executed.issubset(ours)
    assert str(executed.difference(ours)) == f"{U1}:101-120"
    assert ours.missing_problem(executed) is None
    lag = ours.missing_problem(MySQLGtidSet.parse(f"{U1}:1-90"))
    assert lag and f"{U2}:1-5" in lag and f"{U1}:91-100" in lag
    # ER_MASTER_HAS_PURGED_REQUIRED_GTIDS: purged transactions we lack.
    assert ours.purged_problem(MySQLGtidSet.parse(f"{U1}:1-50")) is None
    purged = ours.purged_problem(MySQLGtidSet.parse(f"{U1}:1-110"))
    assert purged and f"{U1}:101-110" in purged
    gap = MySQLGtidSet.parse(f"{U1}:1-10:20-30").difference(MySQLGtidSet.parse(f"{U1}:5-25"))
    assert str(gap) == f"{U1}:1-4:26-30"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), max_size=80), st.sampled_from([U1, U2]))
def test_mysql_set_matches_python_sets(gnos: list[int], uuid: str) -> None:
    s = MySQLGtidSet()
    seen: set[int] = set()
    for n in gnos:
        assert s.add_gno(uuid, n) == (n not in seen)
        seen.add(n)
    assert {n for a, b in s.intervals(uuid) for n in range(a, b + 1)} == seen
    ivs = s.intervals(uuid)
    # Sorted, disjoint and not adjacent: the one canonical form.
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ivs))
    assert MySQLGtidSet.parse(str(s)) == s
    for n in range(1, 62):
        assert s.has(uuid, n) == (n in seen)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=8)),
        max_size=12,
    )
)
def test_mysql_intervals_merge_like_python_sets(spans: list[tuple[int, int]]) -> None:
    text = ",".join(f"{U1}:{a}-{a + n}" for a, n in spans)
    s = MySQLGtidSet.parse(text)
    expected = {k for a, n in spans for k in range(a, a + n + 1)}
    assert {k for a, b in s.intervals(U1) for k in range(a, b + 1)} == expected
    ivs = s.intervals(U1)
    assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ivs))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=40), max_size=40),
    st.lists(st.integers(min_value=1, max_value=40), max_size=40),
)
def test_mysql_difference_matches_python_sets(a: list[int], b: list[int]) -> None:
    sa, sb = MySQLGtidSet(), MySQLGtidSet()
    for n in a:
        sa.add_gno(U1, n)
    for n in b:
        sb.add_gno(U1, n)
    diff = sa.difference(sb)
    assert {n for x, y in diff.intervals(U1) for n in range(x, y + 1)} == set(a) - set(b)
    assert sa.issubset(sb) == set(a).issubset(set(b))


# -- stored form -----------------------------------------------------------------


def test_stored_state_is_flavor_tagged() -> None:
    maria = MariaPosition.parse("0-1-42")
    mysql = MySQLGtidSet.parse(f"{U1}:1-3")
    assert encode_state(maria) == "mariadb:0-1-42"
    assert encode_state(mysql) == f"mysql:{U1}:1-3"
    assert encode_state(MariaPosition()) == "mariadb:"  # known and empty
    assert encode_state(None) == ""  # unknown
    assert decode_state("mariadb:0-1-42") == maria
    assert decode_state(f"mysql:{U1}:1-3") == mysql
    assert decode_state("mariadb:") == MariaPosition()
    assert decode_state("") is None
    with pytest.raises(GtidError):
        decode_state("0-1-42")
    with pytest.raises(GtidError):
        decode_state("postgres:0/16B3748")
