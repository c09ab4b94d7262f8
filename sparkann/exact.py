"""Exact (brute-force) k-nearest neighbours and recall. Pure numpy; no Spark."""

from __future__ import annotations

import numpy as np

from .metrics import get_metric

_CHUNK_ROWS = 1024


def pairwise_distances(queries: np.ndarray, base: np.ndarray, metric: str) -> np.ndarray:
    """Distances (nq, n) between prepared vectors (see :mod:`sparkann.metrics`)."""
    return get_metric(metric).pairwise(queries, base)


def knn(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2"
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (nq, min(k, n)) into ``base`` and their distances, best first.

    Ties are broken by the smaller row index, so results are deterministic.
    """
    base = np.asarray(base, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    k = min(k, len(base))
    labels = np.empty((len(queries), k), np.int64)
    dists = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), _CHUNK_ROWS):
        d = pairwise_distances(queries[start : start + _CHUNK_ROWS], base, metric)
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


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true ``k`` nearest found among the first ``k`` answers."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(truth)[:, :k]
    if len(truth) == 0:
        raise ValueError("recall needs at least one query")
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / (len(truth) * truth.shape[1])
