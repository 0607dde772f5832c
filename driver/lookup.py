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
from collections.abc import Callable, Collection, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from prism.driver.errors import QueryError
from prism.driver.filters import Columns, Filter, sort_rows
from prism.driver.index import VectorIndex
from prism.driver.replica import TableReplica
from prism.fabric.payload import decode_row

# Key column categories whose values sort as filters.norm sorts them (no NaN).
_SORT_AS_IS = frozenset({"int", "text"})

# A range look-up is tried when no equality narrowed the rows below this many,
# and used when it holds at most this share of its column's distinct values.
RANGE_WORTH_IT = 64
RANGE_SHARE = 0.9

# Above this many matching rows (known from an equality index), a filtered
# search over a partitioned index over-fetches instead of scoring them all.
EXACT_MATCHES = 4096


def candidates(t: TableReplica, flt: Filter) -> tuple[Collection[str] | None, bool]:
    """(keys to check, complete): the smallest set a declared index gives,
    by equality or by range, or None for every row. `complete`: the index's
    answer is the filter's (the filter is that one equality), so nothing
    needs checking."""
    if t.columns is None:
        return None, False
    cols = t.columns
    lookups = flt.equality_lookups(cols.names)
    best: set[str] | None = None
    for column, values in lookups:
        keys = cols.lookup(column, values)
        if best is None or len(keys) < len(best):
            best = keys
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
            keys = cols.range_lookup(*r)
            if best is None or len(keys) < len(best):
                best = keys
    return best, False


def matching_rows(t: TableReplica, flt: Filter) -> list[tuple[str, dict[str, Any]]]:
    """(key, row) of every row the filter matches, in no particular order."""
    keys, complete = candidates(t, flt)
    payloads = t.payloads
    if complete:  # the index's answer is the filter's: nothing to check
        assert keys is not None
        return [(k, decode_row(payloads[k])) for k in keys]
    pred = flt.predicate
    items = payloads.items() if keys is None else ((k, payloads[k]) for k in keys)
    out = []
    for k, p in items:
        row = decode_row(p)
        if pred(row):
            out.append((k, row))
    return out


def matching_keys(t: TableReplica, flt: Filter) -> Collection[str]:
    keys, complete = candidates(t, flt)
    if complete:
        assert keys is not None
        return keys
    return [k for k, _ in matching_rows(t, flt)]


def find_rows(
    t: TableReplica,
    flt: Filter,
    columns: Columns,
    order: Sequence[tuple[str, str, bool]],
    limit: int | None,
) -> list[dict[str, Any]]:
    """The matching rows in `order`, ties (and no order at all) broken by
    the primary key ascending, at most `limit`."""
    found = matching_rows(t, flt)
    key_order = []
    for c in t.key_columns:
        try:
            key_order.append((c, columns.category(c, "key"), False))
        except QueryError:  # a key of a type without an order: the key string's
            key_order = []
            break
    if not key_order:
        found.sort(key=lambda kr: kr[0])  # deterministic, whatever the key types
    rows = [r for _, r in found]
    if key_order and all(cat in _SORT_AS_IS for _, cat, _ in key_order):
        # A key is never NULL, and ints and text sort as themselves: one C sort.
        rows.sort(key=itemgetter(*(c for c, _, _ in key_order)))
    elif key_order:
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
    keys, complete = candidates(t, flt)
    if keys is not None:
        matched = keys if complete else matching_keys(t, flt)
        if exact or idx.kind == "exact" or len(matched) <= EXACT_MATCHES:
            return idx.query_among(unit_query, matched, top_k, threshold)
        member = matched if isinstance(matched, set | frozenset) else set(matched)
        found = _overfetch(
            idx, unit_query, top_k, threshold, member.__contains__, len(member) / len(idx)
        )
    elif exact or idx.kind == "exact":
        return idx.query_among(unit_query, matching_keys(t, flt), top_k, threshold)
    else:
        payloads, pred = t.payloads, flt.predicate
        found = _overfetch(
            idx, unit_query, top_k, threshold, lambda k: pred(decode_row(payloads[k])), None
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
