"""Query-local search: each task routes, searches and merges its own query rows.

A scalar Arrow UDF over the query vector (and the allowed ids and the row's own
id): no shuffle, no key, no join back. Spark hands the UDF only those columns
and pairs each answer with its row inside the task, so nothing depends on the
order in which Spark computes or recomputes the query DataFrame, the query's
other columns never leave the JVM, and the plan streams. The index is read
into each Python worker's cache on first use.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Tuple

import numpy as np
import pyarrow as pa

from .. import testing
from ..loader import LoadedIndex, id_map, open_index, partition
from ..tasks import resolve_threads
from ..vectors import checked_queries
from . import drift
from .filtered import passing_mask, query_groups, routed, scan_passing
from .plan import SearchPlan
from .topk import Candidates

QueryColumns = Tuple[pa.Array, pa.Array, pa.Array, pa.Array]  # vector, allowed, own id, key
WATCHED_NEIGHBORS, WATCHED_FLAGS = "neighbors", "hard"  # the fields of a watched answer


def local_search_fn(plan: SearchPlan, thread_hint: int):
    """The function of the query-local search UDF: batches of (vector, allowed ids,
    own id) columns in, answers out (see :func:`answer_batch`)."""

    def run(batches: Iterator[QueryColumns]) -> Iterator[pa.Array]:
        testing.inject("search")
        index = open_index(plan.handle)
        knobs = replace(plan.knobs, threads=resolve_threads(thread_hint))
        for vectors, allowed, own, keys in batches:
            yield answer_batch(index, plan, vectors, allowed, own, keys, knobs)

    return run


def answer_batch(index: LoadedIndex, plan: SearchPlan, column: pa.Array, allowed: pa.Array,
                 own: pa.Array, keys: pa.Array, knobs) -> pa.Array:
    """The UDF's answer for one batch of query rows: their neighbours column or, when
    the plan watches query drift, a struct of it and the rows' hard flags."""
    own = own if plan.exclude_self else None
    vectors = np.empty((0, plan.dim), np.float32)
    if len(column):
        vectors = index.metric.prepare(
            checked_queries(column, plan.dim, plan.vector_col, own, plan.id_col),
            f"query column {plan.vector_col!r}")
    found = neighbours(index, plan, vectors, allowed, own, keys, knobs)
    if plan.hard_marks is None:
        return found
    flags = (drift.hard_flags(index, vectors, plan.hard_marks) if len(vectors)
             else np.zeros(0, np.int8))
    return pa.StructArray.from_arrays([found, pa.array(flags, pa.int8())],
                                      [WATCHED_NEIGHBORS, WATCHED_FLAGS])


def neighbours(index: LoadedIndex, plan: SearchPlan, vectors: np.ndarray, allowed: pa.Array,
               own: pa.Array | None, keys: pa.Array, knobs) -> pa.Array:
    """The neighbours column of prepared query vectors (best first)."""
    n = len(vectors)
    candidates = Candidates(n, plan.arrow_id_type)
    if n == 0:
        return candidates.best(plan.k)
    spec = plan.item_filter
    groups = query_groups(spec, keys, n)
    subset = np.asarray(allowed.is_valid()) if plan.allowed else np.zeros(n, dtype=bool)
    plain = np.flatnonzero(~subset & (groups >= 0))
    if spec is not None:
        for group in np.unique(groups[plain]):
            if spec.scans(int(group)):
                scan_passing(index, spec, int(group), vectors, plain[groups[plain] == group],
                             plan.fetch_k, plan.with_vectors, candidates)
                plain = plain[groups[plain] != group]
    if len(plain):
        rows, pids = routed(index, spec, vectors[plain], groups[plain], plan.num_probes,
                            plan.fetch_k, plan.probe_epsilon)
        search_routed(index, plan, vectors, plain[rows], pids, groups, candidates, knobs)
    for row in np.flatnonzero(subset & (groups >= 0)):
        search_subset(index, plan, vectors[row], int(row), allowed[int(row)].values,
                      int(groups[row]), candidates, knobs)
    return candidates.best(plan.k, own)


def search_routed(index: LoadedIndex, plan: SearchPlan, vectors: np.ndarray, rows: np.ndarray,
                  pids: np.ndarray, groups: np.ndarray, candidates: Candidates, knobs) -> None:
    """Search each routed (row, partition) pair, one batched call per partition (and
    match group)."""
    if len(rows) == 0:
        return
    order = np.lexsort((groups[rows], pids))
    rows, pids = rows[order], pids[order]
    cuts = np.r_[True, (pids[1:] != pids[:-1]) | (groups[rows][1:] != groups[rows][:-1]), True]
    bounds = np.flatnonzero(cuts)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        pid = int(pids[start])
        if not index.manifest.partitions.files[pid]:
            continue  # a partition without rows
        part = partition(index, pid, plan.with_vectors)
        queries = rows[start:stop]
        if plan.item_filter is None:
            labels, dists = part.search(vectors[queries], plan.fetch_k, knobs)
        else:
            passing = passing_mask(index, plan.item_filter, pid, int(groups[queries[0]]))
            labels, dists = part.search_filtered(vectors[queries], passing, plan.fetch_k, knobs)
        candidates.add(queries, labels, dists, part.ids)


def search_subset(index: LoadedIndex, plan: SearchPlan, vector: np.ndarray, row: int,
                  allowed: pa.Array, group: int, candidates: Candidates, knobs) -> None:
    """One query restricted to ``allowed`` ids: only the partitions holding them (and,
    with a filter, only their rows that pass it)."""
    pids, labels = id_map(index).locate(allowed.cast(plan.arrow_id_type))
    for pid in np.unique(pids):
        part = partition(index, int(pid), plan.with_vectors)
        mine = labels[pids == pid]
        if plan.item_filter is not None:
            mine = mine[passing_mask(index, plan.item_filter, int(pid), group)[mine]]
            if len(mine) == 0:
                continue
        found, dists = part.search_subset(vector, mine, plan.fetch_k, knobs)
        candidates.add(np.array([row]), found, dists, part.ids)
