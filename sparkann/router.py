"""Route queries to the partitions worth searching. Pure numpy; no Spark.

A *cluster* is one coarse centroid; a cluster larger than ``maxPartitionRows``
is stored as several *shards* (partitions), always probed together. The router
ranks clusters per query, keeps the ``num_probes`` nearest, adds further
clusters until the probed ones hold at least ``k`` vectors (so every query can
be answered with exactly ``k`` neighbours), then expands clusters to shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import hnsw
from .exact import top_k

# Above this many centroids, an HNSW graph over the centroids ranks them
# (Pyramid's meta-HNSW) instead of a brute-force product.
META_HNSW_MIN_CENTROIDS = 4096
_CHUNK_ROWS = 4096


def nearest_centroids(
    vectors: np.ndarray, centroids: np.ndarray, metric: str, count: int
) -> np.ndarray:
    """Indices (n, count) of each vector's ``count`` nearest centroids, nearest first.

    ``l2`` and ``cosine`` rank by Euclidean distance (cosine vectors are already
    normalised); ``ip`` ranks by largest inner product, as IVF does for MIPS.
    """
    return _ranked_scores(vectors, centroids, metric, count)[0]


def centroid_distances(
    vectors: np.ndarray, centroids: np.ndarray, metric: str, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_centroids` and their distances: Euclidean, or for ``ip`` the
    negative inner product."""
    ranked, scores = _ranked_scores(vectors, centroids, metric, count)
    if metric == "ip":
        return ranked, scores
    sq_norms = (np.asarray(vectors, dtype=np.float32) ** 2).sum(axis=1)[:, None]
    return ranked, np.sqrt(np.maximum(scores + sq_norms, 0.0))


def _ranked_scores(vectors, centroids, metric: str, count: int):
    """Top ``count`` centroid indices and scores that rank like the distances
    (squared Euclidean minus the vector's squared norm, or negative inner product)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    count = min(count, len(centroids))
    out = np.empty((len(vectors), count), dtype=np.int64)
    scores_out = np.empty((len(vectors), count), dtype=np.float32)
    sq_norms = (centroids**2).sum(axis=1)
    for start in range(0, len(vectors), _CHUNK_ROWS):
        chunk = vectors[start : start + _CHUNK_ROWS]
        scores = -2.0 * chunk @ centroids.T if metric != "ip" else -(chunk @ centroids.T)
        if metric != "ip":
            scores += sq_norms[None, :]
        rows = slice(start, start + len(chunk))
        out[rows], scores_out[rows] = top_k(scores, count)
    return out, scores_out


def within_slack(distances: np.ndarray, epsilon: float) -> np.ndarray:
    """Which ranked centroids lie within ``(1 + epsilon)`` of the nearest one's
    distance (query-aware pruning, as in SPANN); all of them when epsilon is 0."""
    if epsilon <= 0:
        return np.ones(distances.shape, dtype=bool)
    nearest = distances[:, :1]
    return distances - nearest <= epsilon * np.abs(nearest)


@dataclass(frozen=True)
class ShardPlan:
    """Which partitions hold each cluster: ``offsets[c] .. offsets[c] + counts[c] - 1``."""

    counts: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_cluster_sizes(cls, sizes: np.ndarray, max_rows: int) -> "ShardPlan":
        """One shard per ``max_rows`` rows (rounded up); empty clusters get none."""
        sizes = np.asarray(sizes, dtype=np.int64)
        counts = -(-sizes // max(int(max_rows), 1))
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(counts=counts, offsets=offsets)

    @property
    def num_partitions(self) -> int:
        return int(self.counts.sum())

    @property
    def cluster_of(self) -> np.ndarray:
        """The cluster of each partition id."""
        return np.repeat(np.arange(len(self.counts)), self.counts)


class Router:
    """Maps query vectors to ``(query position, partition id)`` pairs."""

    def __init__(self, centroids: np.ndarray, metric: str, cluster_sizes, plan: ShardPlan):
        self.centroids = np.asarray(centroids, dtype=np.float32)
        self.metric = metric
        self.sizes = np.asarray(cluster_sizes, dtype=np.int64)
        self.plan = plan
        self._graph = None
        if len(self.centroids) >= META_HNSW_MIN_CENTROIDS:
            self._graph = hnsw.build(self.centroids, metric, M=16, ef_construction=200)

    def probes_needed(self, num_probes: int, k: int) -> int:
        """How many ranked clusters guarantee ``num_probes`` and ``k`` vectors."""
        ascending = np.sort(self.sizes)
        enough = int(np.searchsorted(np.cumsum(ascending), k)) + 1
        return int(min(len(self.sizes), max(num_probes, 1) + enough))

    def rank(self, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` nearest clusters of each query, nearest first, and their distances."""
        if self._graph is None:
            return centroid_distances(queries, self.centroids, self.metric, count)
        return hnsw.search(self._graph, queries, count, max(2 * count, 64), self.metric)

    def route(
        self, queries: np.ndarray, num_probes: int, k: int, epsilon: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return flat arrays ``(query_positions, partition_ids)``.

        Each query visits its nearest cluster and up to ``num_probes - 1`` more
        within ``epsilon`` (see :func:`within_slack`), then further clusters
        until the visited ones hold ``k`` vectors.
        """
        ranked, distances = self.rank(queries, self.probes_needed(num_probes, k))
        sizes = self.sizes[ranked]
        before = np.cumsum(sizes, axis=1) - sizes
        position = np.arange(ranked.shape[1])[None, :]
        wanted = (position < num_probes) & within_slack(distances, epsilon)
        keep = (wanted | (before < k)) & (sizes > 0)
        rows, cols = np.nonzero(keep)
        clusters = ranked[rows, cols]
        shard_counts = self.plan.counts[clusters]
        query_pos = np.repeat(rows, shard_counts)
        first = np.repeat(self.plan.offsets[clusters], shard_counts)
        starts = np.cumsum(shard_counts) - shard_counts
        within = np.arange(len(first)) - np.repeat(starts, shard_counts)
        return query_pos.astype(np.int64), (first + within).astype(np.int64)
