"""Exact (brute-force) k-nearest neighbours and recall. Pure numpy; no Spark.

These are the package's only exact-search kernel (:func:`knn` over :func:`top_k`)
and its only recall count (:func:`hit_counts`): the Spark drivers in
:mod:`sparkann.evaluate` and :mod:`sparkann.calibrate` run them inside tasks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .metrics import Metric, get_metric

_CHUNK_ROWS = 1024


def pairwise_distances(queries: np.ndarray, base: np.ndarray, metric: str) -> np.ndarray:
    """Distances (nq, n) between prepared vectors (see :mod:`sparkann.metrics`)."""
    return get_metric(metric).pairwise(queries, base)


def knn(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str | Metric = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (nq, min(k, n)) into ``base`` and their distances, best first.

    Vectors are compared as given (prepared, see :meth:`Metric.prepare`). Ties are
    broken by the smaller row index, so results are deterministic.
    """
    measure = get_metric(metric) if isinstance(metric, str) else metric
    base = np.asarray(base, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = max(0, min(k, len(base)))
    labels = np.empty((len(queries), k), np.int64)
    dists = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), _CHUNK_ROWS):
        d = measure.pairwise(queries[start : start + _CHUNK_ROWS], base)
        labels[start : start + len(d)], dists[start : start + len(d)] = top_k(d, k)
    return labels, dists


def top_k(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the ``k`` smallest entries per row, ascending.

    Ties are broken by the smaller column index, also at the k-th place.
    """
    k = max(0, min(k, distances.shape[1]))
    if k == 0:  # no columns asked for (or none there): argpartition has no k-1st
        return (np.empty((len(distances), 0), np.intp),
                np.empty((len(distances), 0), distances.dtype))
    if k < distances.shape[1]:
        part = np.argpartition(distances, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(distances, part, axis=1).max(axis=1, keepdims=True)
        ambiguous = ((distances <= kth).sum(axis=1) > k).nonzero()[0]
        if len(ambiguous):  # ties straddle the cut: settle those rows by a stable sort
            stable = np.argsort(distances[ambiguous], axis=1, kind="stable")[:, :k]
            part[ambiguous] = stable
    else:
        part = np.broadcast_to(np.arange(distances.shape[1]), distances.shape).copy()
    values = np.take_along_axis(distances, part, axis=1)
    order = np.lexsort((part, values), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


def hit_counts(n: int, found_rows: np.ndarray, found_ids, truth_rows: np.ndarray,
               truth_ids) -> tuple[np.ndarray, np.ndarray]:
    """Per query ``0..n-1``: how many of its true neighbours it found, and how many it
    has. Both sides are flat ``(query, id)`` pairs; ids are numbers or strings, and
    an id found twice by one query counts once."""
    import pandas as pd

    found_rows = np.asarray(found_rows, dtype=np.int64)
    truth_rows = np.asarray(truth_rows, dtype=np.int64)
    if len(found_rows) != len(found_ids) or len(truth_rows) != len(truth_ids):
        raise ValueError("every (query, id) pair needs both its query and its id")
    if (len(found_rows) and not 0 <= found_rows.min() <= found_rows.max() < n) or (
            len(truth_rows) and not 0 <= truth_rows.min() <= truth_rows.max() < n):
        raise ValueError(f"a query position is outside 0..{n - 1}")
    codes, uniques = pd.factorize(_joined(np.asarray(found_ids), np.asarray(truth_ids)))
    width = len(uniques) + 1
    found_keys = found_rows * width + codes[:len(found_rows)]
    truth_keys = truth_rows * width + codes[len(found_rows):]
    hit = np.isin(truth_keys, found_keys)
    return (np.bincount(truth_rows[hit], minlength=n), np.bincount(truth_rows, minlength=n))


def _joined(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two id arrays as one, with no numeric cast (int64 ids above 2**53 stay exact)."""
    if not len(first) or not len(second) or first.dtype.kind != second.dtype.kind:
        kinds = {a.dtype for a in (first, second) if len(a)}
        dtype = kinds.pop() if len(kinds) == 1 else object
        return np.concatenate([first.astype(dtype), second.astype(dtype)])
    return np.concatenate([first, second])


def first_k(lists: Sequence | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(query, id)`` pairs of the first ``k`` entries of each query's list
    (a 2-D array or a sequence of sequences)."""
    if isinstance(lists, np.ndarray) and lists.ndim == 2:
        head = lists[:, :k]
        return np.repeat(np.arange(len(head)), head.shape[1]), head.reshape(-1)
    heads = [list(entries)[:k] for entries in lists]
    values = np.empty(sum(len(h) for h in heads), dtype=object)
    values[:] = [value for head in heads for value in head]
    return np.repeat(np.arange(len(heads)), [len(h) for h in heads]), values


def share(hits: np.ndarray, wanted: np.ndarray) -> float:
    """Recall: true neighbours found over true neighbours wanted (1.0 when none are)."""
    total = int(np.sum(wanted))
    return float(np.sum(hits)) / total if total else 1.0


def recall_at_k(found, truth, k: int) -> float:
    """Share of each query's true ``k`` nearest among its first ``k`` answers, over all
    queries. ``found`` holds row labels (negative: no answer); ``truth`` their exact
    counterparts; both (nq, j) arrays or sequences of sequences."""
    if len(truth) == 0:
        raise ValueError("recall needs at least one query")
    if len(found) != len(truth):
        raise ValueError(f"found has {len(found)} queries, truth {len(truth)}")
    found_rows, found_ids = first_k(found, k)
    answered = (found_ids >= 0 if found_ids.dtype.kind in "iuf" else np.asarray(
        [not (isinstance(i, (int, np.integer)) and i < 0) for i in found_ids], dtype=bool))
    truth_rows, truth_ids = first_k(truth, k)
    hits, wanted = hit_counts(len(truth), found_rows[answered], found_ids[answered],
                              truth_rows, truth_ids)
    return share(hits, wanted)
