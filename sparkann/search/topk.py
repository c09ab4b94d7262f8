"""Merging candidate neighbours into each query's top k. Pure numpy + pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Candidates:
    """Candidate neighbours of a batch of ``n`` queries, gathered partition by partition."""

    def __init__(self, n: int, id_type: pa.DataType):
        self.n, self.id_type = n, id_type
        self.rows: list[np.ndarray] = []
        self.dists: list[np.ndarray] = []
        self.ids: list[pa.Array] = []

    def add(self, rows: np.ndarray, labels: np.ndarray, dists: np.ndarray,
            ids: pa.Array) -> None:
        """Results (len(rows), j) of a partition whose label -> id table is ``ids``."""
        found = labels >= 0
        if not found.any():
            return
        if labels[found].max() >= len(ids):
            raise ValueError("index partition is damaged: a row label has no id")
        self.rows.append(np.repeat(np.asarray(rows, np.int64), found.sum(axis=1)))
        self.dists.append(dists[found].astype(np.float32))
        self.ids.append(ids.take(pa.array(labels[found])))

    def add_found(self, rows: np.ndarray, dists: np.ndarray, ids: pa.Array) -> None:
        """Flat candidates already mapped to ids."""
        if len(rows):
            self.rows.append(np.asarray(rows, np.int64))
            self.dists.append(np.asarray(dists, np.float32))
            self.ids.append(ids)

    def best(self, k: int, exclude: pa.Array | None = None) -> pa.Array:
        """Each query's ``k`` nearest candidates, best first (ties by arrival), as
        ``list<struct<id, distance>>``; rows' own ids in ``exclude`` are dropped."""
        if not self.rows:
            empty = pa.array([], self.id_type)
            return top_k_lists(self.n, np.empty(0, np.int64), np.empty(0, np.float32),
                               empty, k)
        rows, dists = np.concatenate(self.rows), np.concatenate(self.dists)
        ids = pa.concat_arrays([a.cast(self.id_type) for a in self.ids])
        keep = np.isfinite(dists)
        if exclude is not None:
            own = exclude.take(pa.array(rows))
            keep &= np.asarray(pc.fill_null(pc.not_equal(ids, own), True))
        if not keep.all():
            index = np.flatnonzero(keep)
            rows, dists, ids = rows[index], dists[index], ids.take(pa.array(index))
        return top_k_lists(self.n, rows, dists, ids, k)


def top_k_lists(n: int, rows: np.ndarray, dists: np.ndarray, ids: pa.Array,
                k: int) -> pa.Array:
    """``list<struct<id, distance>>`` of the ``k`` smallest distances per row
    (rows 0..n-1), best first; ties keep arrival order."""
    order = np.lexsort((dists, rows))  # stable: ties keep arrival order
    rows, dists = rows[order], dists[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows] if len(rows) else np.empty(0, np.int64)
    kept = np.flatnonzero(rank < k)
    counts = np.bincount(rows[kept], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    chosen = ids.take(pa.array(order[kept]))
    values = pa.StructArray.from_arrays([chosen, pa.array(dists[kept], pa.float32())],
                                        ["id", "distance"])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


# ------------------------------------------- records met by query key


class UnbalancedQuery(ValueError):
    """A query key whose records do not add up: ``rows`` row records, the ``need``
    results they expect and the ``cover`` results that came."""

    def __init__(self, rows: int, need: int, cover: int):
        super().__init__(f"rows {rows}, expected {need} results, got {cover}")
        self.rows, self.need, self.cover = rows, need, cover


def key_groups(k1: np.ndarray, k2: np.ndarray) -> tuple[np.ndarray, int]:
    """Each record's group (0..n-1) by its key (k1, k2), groups in key order; and n."""
    order = np.lexsort((k2, k1))
    a, b = k1[order], k2[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    groups = np.empty(len(order), np.int64)
    groups[order] = np.cumsum(new) - 1
    return groups, int(new.sum())


def first_of_each(*columns: np.ndarray) -> np.ndarray:
    """Positions of the first record (in arrival order) of each distinct tuple of
    ``columns``, ordered by those tuples."""
    order = np.lexsort(columns[::-1])  # stable: ties keep arrival order
    new = np.ones(len(order), dtype=bool)
    new[1:] = False
    for column in columns:
        ordered = column[order]
        new[1:] |= ordered[1:] != ordered[:-1]
    return order[new]


def last_key_start(k1: np.ndarray, k2: np.ndarray) -> int:
    """Where the trailing run of records sharing the last record's key starts."""
    if not len(k1):
        return 0
    other = np.flatnonzero((k1 != k1[-1]) | (k2 != k2[-1]))
    return int(other[-1]) + 1 if len(other) else 0


def grouped_top_k(n: int, groups: np.ndarray, ids: pa.Array, dists: pa.Array,
                  k: int) -> pa.Array:
    """The ``k`` best candidates of each group (0..n-1) from list columns of candidate
    ``ids`` and ``dists``, one list per record; ties keep the records' order."""
    lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(groups.astype(np.int64), lengths)
    flat = pc.list_flatten(dists).to_numpy(zero_copy_only=False).astype(np.float32)
    return top_k_lists(n, rows, flat, pc.list_flatten(ids), k)


def query_neighbours(k1: np.ndarray, k2: np.ndarray, kinds: np.ndarray, buckets: np.ndarray,
                     need: np.ndarray, cover: np.ndarray, ids: pa.Array, dists: pa.Array,
                     k: int, row_kind: int) -> tuple[np.ndarray, pa.Array]:
    """Records met by query key (k1, k2): (positions of the row records, the neighbour
    list of each).

    A record is a row record (``kinds == row_kind``, ``need`` results expected), a
    partition's candidates (``kinds`` >= 0: the partition; ``buckets``: its id-location
    bucket, or -1; lists in ``ids``, ``dists``) or another record counted in ``cover``.
    A key's candidates of the same (partition, bucket) are kept once (rows with the same
    key send the same ones); ties go to the lower (partition, bucket), then to the
    earlier candidate of its list. Raises :class:`UnbalancedQuery` when a key has no row
    record, or its ``cover`` does not sum to its ``need``.
    """
    groups, n = key_groups(k1, k2)
    is_row = kinds == row_kind
    check_counts(groups, n, is_row, need, cover)
    results = np.flatnonzero(kinds >= 0)
    kept = results[first_of_each(groups[results], kinds[results], buckets[results])]
    take = pa.array(kept, pa.int64())
    lists = grouped_top_k(n, groups[kept], ids.take(take), dists.take(take), k)
    rows = np.flatnonzero(is_row)
    return rows, lists.take(pa.array(groups[rows], pa.int64()))


def check_counts(groups: np.ndarray, n: int, is_row: np.ndarray, need: np.ndarray,
                 cover: np.ndarray) -> None:
    """:class:`UnbalancedQuery` for the first group without a row record, or whose
    ``cover`` differs from its row records' ``need``."""
    rows = np.bincount(groups, weights=is_row, minlength=n)
    needed = np.bincount(groups, weights=np.where(is_row, need, 0), minlength=n)
    covered = np.bincount(groups, weights=cover, minlength=n)
    bad = np.flatnonzero((rows == 0) | (needed != covered))
    if len(bad):
        g = bad[0]
        raise UnbalancedQuery(int(rows[g]), int(needed[g]), int(covered[g]))
