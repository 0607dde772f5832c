"""Filtered reads over one replica table: `find` and filtered vector search.

Between the public reads (driver/api.py) and the replica's parts: the rows
(driver/replica.py), the declared equality indexes (driver/colindex.py) and
the vector index (driver/index.py); the filter comes compiled from
driver/filters.py. Pure code over in-memory state, no I/O, run
synchronously on the event loop like every read, so it sees whole batches.

Which rows a filter can match: when it `and`s an eq / in / IS NULL, or a
range (lt / lte / gt / gte), on an indexed column, the index gives the
candidates (the smallest such set); otherwise every row is a candidate.
Candidates are decoded and checked against the whole filter, unless that
one equality *is* the whole filter (the index is exact, so its answer is
the result).

Filtered vector search, with the top-k of the matching rows as the goal:
* the matching set is known (an index answered, or the vector index is
  exact anyway, or the caller asked `exact=True`) and small: score exactly
  the matching rows (VectorIndex.query_among);
* otherwise search the partitions with more partitions probed and more
  candidates scored than unfiltered, in proportion to how rare a match is
  (_overfetch), keeping the candidates that match, best first, until k
  matched; when the probed partitions run dry first, fall back to the exact
  search over the matching rows, found by a scan. A result therefore never
  holds fewer than k rows when k rows match.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from operator import itemgetter
from typing import Any

import numpy as np

from prism.driver.errors import QueryError
from prism.driver.filters import Columns, Filter, sort_rows
from prism.driver.index import VectorIndex
from prism.driver.replica import TableReplica
from prism.fabric.payload import read_row, read_rows

# Key column categories whose values sort as filters.norm sorts them (no NaN).
_SORT_AS_IS = frozenset({"int", "text"})

# A range look-up is tried when no equality narrowed the rows below this many,
# and used when it holds at most this share of its column's distinct values.
RANGE_WORTH_IT = 64
RANGE_SHARE = 0.9

# Above this many matching rows (known from an equality index), a filtered
# search over a partitioned index over-fetches instead of scoring them all.
EXACT_MATCHES = 4096


def candidates(t: TableReplica, flt: Filter) -> tuple[Mapping[str, bytes] | None, bool]:
    """({key: payload} to check, complete): the smallest set of rows a
    declared index gives, by equality or by range, or None for every row.
    `complete`: the index's answer is the filter's (the filter is that one
    equality), so nothing needs checking. The mapping may be the index's
    own: read it now, never change it."""
    if t.columns is None:
        return None, False
    cols = t.columns
    lookups = flt.equality_lookups(cols.names)
    best: Mapping[str, bytes] | None = None
    for column, values in lookups:
        rows = cols.lookup(column, values)
        if best is None or len(rows) < len(best):
            best = rows
        if not best:
            break
    if best is not None and len(lookups) == 1 and len(flt.tree.parts) == 1:
        return best, True
    ranges = flt.range_lookups(cols.names)
    if ranges and (best is None or len(best) > RANGE_WORTH_IT):
        # The range holding the smallest share of its column's distinct
        # values (the likeliest fewest rows); one that holds nearly all of
        # them narrows nothing a scan would not.
        shares = [(cols.range_size(*r) / max(1, cols.distinct(r[0])), r) for r in ranges]
        share, r = min(shares, key=itemgetter(0))
        if share <= RANGE_SHARE:
            rows = cols.range_lookup(*r)
            if best is None or len(rows) < len(best):
                best = rows
    return best, False


# Rows a scan decodes at once: one read_rows call per chunk, and never a
# decoded copy of a whole large table in memory.
_SCAN_CHUNK = 1024


def matching_rows(t: TableReplica, flt: Filter) -> tuple[list[str], list[dict[str, Any]]]:
    """(keys, rows) of every row the filter matches, in no particular order."""
    cands, complete = candidates(t, flt)
    if complete:  # the index's answer is the filter's: nothing to check
        assert cands is not None
        return list(cands), read_rows(_prefetched(list(cands.values())))
    pred = flt.predicate
    source = t.payloads if cands is None else cands
    all_keys, all_payloads = list(source), list(source.values())
    out_keys: list[str] = []
    out_rows: list[dict[str, Any]] = []
    for lo in range(0, len(all_keys), _SCAN_CHUNK):
        rows = read_rows(all_payloads[lo : lo + _SCAN_CHUNK])
        for k, row in zip(all_keys[lo : lo + _SCAN_CHUNK], rows, strict=True):
            if pred(row):
                out_keys.append(k)
                out_rows.append(row)
    return out_keys, out_rows


def _prefetched(payloads: list[bytes]) -> list[bytes]:
    """`payloads`, after one C loop has read them all (a join, thrown
    away): the cache misses of a few scattered rows overlap there instead
    of stalling each decode in turn. Measured on `find` of 10 random rows
    of 100k: about 0.3 µs saved of 5.5 (benchmark/README.md). A scan's
    chunks are not joined: it reads most rows anyway."""
    b"".join(payloads)
    return payloads


def matching_keys(t: TableReplica, flt: Filter) -> Collection[str]:
    cands, complete = candidates(t, flt)
    if complete:
        assert cands is not None
        return cands.keys()
    return matching_rows(t, flt)[0]


def _key_order(
    key_columns: tuple[str, ...], columns: Columns
) -> tuple[list[tuple[str, str, bool]], bool]:
    """(the primary key's ascending order as sort_rows takes it, whether it
    sorts as the values themselves); an empty order when a key column's type
    has no order (the key strings' order is used). Kept on `columns`: a
    table's key and column types change only with a new Columns."""
    plan: tuple[list[tuple[str, str, bool]], bool] | None = columns.memo.get(key_columns)
    if plan is None:
        order = []
        for c in key_columns:
            try:
                order.append((c, columns.category(c, "key"), False))
            except QueryError:
                order = []
                break
        plan = order, bool(order) and all(cat in _SORT_AS_IS for _, cat, _ in order)
        columns.memo[key_columns] = plan
    return plan


def find_rows(
    t: TableReplica,
    flt: Filter,
    columns: Columns,
    order: Sequence[tuple[str, str, bool]],
    limit: int | None,
) -> list[dict[str, Any]]:
    """The matching rows in `order`, ties (and no order at all) broken by
    the primary key ascending, at most `limit`."""
    keys, rows = matching_rows(t, flt)
    key_order, plain = _key_order(t.key_columns, columns)
    if not key_order:  # deterministic, whatever the key types
        rows = [r for _, r in sorted(zip(keys, rows, strict=True), key=itemgetter(0))]
    elif plain:  # a key is never NULL, and ints and text sort as themselves: one C sort
        rows.sort(key=itemgetter(*(c for c, _, _ in key_order)))
    else:
        sort_rows(rows, key_order)
    # Stable: `order` on top of the key order leaves ties in key order.
    sort_rows(rows, order)
    return rows if limit is None else rows[:limit]


def filtered_search(
    t: TableReplica,
    flt: Filter,
    unit_query: np.ndarray,
    top_k: int,
    threshold: float,
    exact: bool,
) -> list[tuple[str, float]]:
    """The top_k (key, score) of the rows the filter matches, best first."""
    idx = t.index
    assert idx is not None
    cands, complete = candidates(t, flt)
    if cands is not None:
        matched = cands.keys() if complete else matching_keys(t, flt)
        if exact or idx.kind == "exact" or len(matched) <= EXACT_MATCHES:
            return idx.query_among(unit_query, matched, top_k, threshold)
        member = matched if isinstance(matched, AbstractSet) else set(matched)
        found = _overfetch(
            idx, unit_query, top_k, threshold, member.__contains__, len(member) / len(idx)
        )
    elif exact or idx.kind == "exact":
        return idx.query_among(unit_query, matching_keys(t, flt), top_k, threshold)
    else:
        payloads, pred = t.payloads, flt.predicate
        found = _overfetch(
            idx, unit_query, top_k, threshold, lambda k: pred(read_row(payloads[k])), None
        )
    if found is not None:
        return found
    return idx.query_among(unit_query, matching_keys(t, flt), top_k, threshold)


def _overfetch(
    idx: VectorIndex,
    unit_query: np.ndarray,
    top_k: int,
    threshold: float,
    matches: Callable[[str], bool],
    share: float | None,
) -> list[tuple[str, float]] | None:
    """Search the partitions for the top_k matching rows; None when the
    probed partitions run out of candidates first.

    The share of rows that match (`share`: known from an index, or
    estimated from a first round at the index's own settings) sets how far
    to look: the true top-k of the matching rows sit about 1/share deep in
    the unfiltered ranking, so the partitions probed and the candidates
    scored both grow by 1/sqrt(share), and at least 2x (measured in
    benchmark/replica_queries.py: recall@10 >= 0.95 from 0.1% to 50%), and
    by 4x more each round that still falls short."""
    p = idx.params
    base = max(p.rerank, 4 * top_k)
    if share is None:
        hits, checked, short = idx.query_where(
            unit_query, top_k, threshold, matches, base, p.nprobe
        )
        share = len(hits) / checked if checked else 0.0
        if share >= 0.9 and len(hits) == top_k:
            return hits  # nearly every row matches: as good as unfiltered
        if short and len(hits) < top_k:
            return None
    scale = max(2.0, 1.0 / math.sqrt(max(share, 1e-4)))
    while True:
        count = min(len(idx), math.ceil(base * scale))
        nprobe = math.ceil(p.nprobe * scale)
        hits, _, short = idx.query_where(unit_query, top_k, threshold, matches, count, nprobe)
        if len(hits) == top_k:
            return hits
        if short or count >= len(idx):
            return None
        scale *= 4
