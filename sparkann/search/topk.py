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
    order = np.lexsort((np.arange(len(rows)), dists, rows))
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
