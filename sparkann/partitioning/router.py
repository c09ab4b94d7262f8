"""Rank centroids, plan shards and route queries. Pure numpy + hnswlib; no Spark.

A *cluster* is one coarse centroid; a cluster larger than ``maxPartitionRows``
is stored as several *shards* (partitions), always probed together. The build
assigns each row to its best cluster and the router ranks clusters for each
query with the same :class:`CentroidRanker`: the metric's centroid space
(:attr:`sparkann.metrics.Metric.centroid_space`), by brute force, or above
:data:`META_HNSW_MIN_CENTROIDS` through an HNSW graph over the centroids
(Pyramid's meta-HNSW), built once, stored with the index and used by both.
"""

from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np

from ..exact import top_k
from ..index.hnsw import graph_from_bytes, graph_to_bytes
from ..metrics import Metric

META_HNSW_MIN_CENTROIDS = 4096
META_HNSW_M = 32
META_HNSW_EF_CONSTRUCTION = 200
META_HNSW_MIN_EF = 256
_CHUNK_ROWS = 4096


def rank_brute_force(vectors: np.ndarray, centroids: np.ndarray, space: str,
                     count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` best centroids of each vector and their distances in ``space``
    (Euclidean for "l2", the negative inner product for "ip"); ties by index."""
    vectors = np.asarray(vectors, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    count = min(count, len(centroids))
    ranked = np.empty((len(vectors), count), np.int64)
    dists = np.empty((len(vectors), count), np.float32)
    sq_norms = (centroids**2).sum(axis=1)
    for start in range(0, len(vectors), _CHUNK_ROWS):
        chunk = vectors[start:start + _CHUNK_ROWS]
        rows = slice(start, start + len(chunk))
        if space == "ip":
            ranked[rows], dists[rows] = top_k(-(chunk @ centroids.T), count)
            continue
        ranked[rows], part = top_k(sq_norms[None, :] - 2.0 * (chunk @ centroids.T), count)
        dists[rows] = np.sqrt(np.maximum(part + (chunk**2).sum(axis=1)[:, None], 0.0))
    return ranked, dists


def build_centroid_graph(centroids: np.ndarray, metric: Metric, seed: int) -> bytes:
    """The meta-HNSW over the centroids, built single-threaded so it is reproducible."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    graph = hnswlib.Index(space=metric.centroid_space, dim=centroids.shape[1])
    graph.init_index(max_elements=len(centroids), M=META_HNSW_M,
                     ef_construction=META_HNSW_EF_CONSTRUCTION, random_seed=seed)
    graph.add_items(centroids, np.arange(len(centroids)), num_threads=1)
    return graph_to_bytes(graph)


class CentroidRanker:
    """Ranks centroids for prepared vectors; the one rule of the build and the router."""

    def __init__(self, centroids: np.ndarray, metric: Metric, graph: bytes = b""):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.space = metric.centroid_space
        self._graph = None
        if graph:
            self._graph = graph_from_bytes(graph, self.centroids.shape[1], self.space)
            if self._graph.get_current_count() != len(self.centroids):
                raise ValueError("the centroid graph does not match the centroids")

    @property
    def uses_graph(self) -> bool:
        return self._graph is not None

    def rank(self, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``count`` best clusters of each vector, best first, and their distances."""
        count = min(count, len(self.centroids))
        if self._graph is None or len(vectors) == 0:
            return rank_brute_force(vectors, self.centroids, self.space, count)
        self._graph.set_ef(max(META_HNSW_MIN_EF, 2 * count))
        labels, raw = self._graph.knn_query(np.ascontiguousarray(vectors, np.float32), k=count,
                                            num_threads=1)
        raw = np.asarray(raw, np.float32)
        dists = np.sqrt(np.maximum(raw, 0.0)) if self.space == "l2" else raw - 1.0
        return labels.astype(np.int64), dists

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        return self.rank(vectors, 1)[0][:, 0]


@dataclass(frozen=True)
class ShardPlan:
    """Which partitions hold each cluster: ``offsets[c] .. offsets[c] + counts[c] - 1``."""

    counts: np.ndarray

    @classmethod
    def from_cluster_sizes(cls, sizes, max_rows: int) -> "ShardPlan":
        """One shard per ``max_rows`` rows (rounded up); empty clusters get none."""
        sizes = np.asarray(sizes, dtype=np.int64)
        return cls(counts=-(-sizes // max(int(max_rows), 1)))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    @property
    def num_partitions(self) -> int:
        return int(self.counts.sum())

    def partition_rows(self, cluster_rows) -> np.ndarray:
        """Rows of each partition, from rows of each cluster (shards split them evenly)."""
        counts = np.maximum(self.counts, 1)
        return np.repeat(np.asarray(cluster_rows, dtype=np.float64) / counts, self.counts)

    @property
    def cluster_of(self) -> np.ndarray:
        """The cluster of each partition id."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    def partition_of(self, clusters: np.ndarray, id_hashes: np.ndarray) -> np.ndarray:
        """Partition ids of rows in ``clusters``: the cluster's shard picked by id hash."""
        counts = self.counts[clusters]
        if (counts == 0).any():
            raise ValueError("a row was assigned to a cluster that has no partition")
        shard = np.mod(np.asarray(id_hashes, dtype=np.int64), counts)
        return (self.offsets[clusters] + shard).astype(np.int32)


def centroid_gaps(distances: np.ndarray) -> np.ndarray:
    """How far each query's second-best centroid lies past its best, relative to the
    best's distance: small for a query between clusters or far from all of them (the
    queries that need more probes); infinite with one centroid."""
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape[1] < 2:
        return np.full(len(distances), np.inf)
    nearest = distances[:, 0]
    return (distances[:, 1] - nearest) / np.maximum(np.abs(nearest), 1e-12)


def within_slack(distances: np.ndarray, epsilon: float) -> np.ndarray:
    """Which ranked centroids lie within ``(1 + epsilon)`` of the nearest one's
    distance (query-aware pruning, as in SPANN); all of them when epsilon is 0."""
    if epsilon <= 0:
        return np.ones(distances.shape, dtype=bool)
    nearest = distances[:, :1]
    return distances - nearest <= epsilon * np.abs(nearest)


class Router:
    """Maps query vectors to ``(query position, partition id)`` pairs."""

    def __init__(self, ranker: CentroidRanker, cluster_sizes, plan: ShardPlan):
        self.ranker = ranker
        self.sizes = np.asarray(cluster_sizes, dtype=np.int64)
        self.plan = plan

    def probes_needed(self, num_probes: int, k: int) -> int:
        """How many ranked clusters guarantee ``num_probes`` and ``k`` vectors."""
        ascending = np.sort(self.sizes)
        enough = int(np.searchsorted(np.cumsum(ascending), k)) + 1
        return int(min(len(self.sizes), max(num_probes, 1) + enough))

    def ranked_clusters(self, queries: np.ndarray, num_probes: int, k: int):
        """(ranked clusters, distances) deep enough for :meth:`route`."""
        return self.ranker.rank(queries, self.probes_needed(num_probes, k))

    def probed(self, ranked: np.ndarray, distances: np.ndarray, num_probes: int, k: int,
               epsilon: float = 0.0) -> np.ndarray:
        """Mask (nq, depth) of the ranked clusters to search: the nearest, up to
        ``num_probes - 1`` more within ``epsilon``, then more until ``k`` vectors."""
        sizes = self.sizes[ranked]
        before = np.cumsum(sizes, axis=1) - sizes
        position = np.arange(ranked.shape[1])[None, :]
        wanted = (position < num_probes) & within_slack(distances, epsilon)
        return (wanted | (before < k)) & (sizes > 0)

    def route(self, queries: np.ndarray, num_probes: int, k: int,
              epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Flat arrays ``(query_positions, partition_ids)``, by query then rank."""
        ranked, distances = self.ranked_clusters(queries, num_probes, k)
        rows, cols = np.nonzero(self.probed(ranked, distances, num_probes, k, epsilon))
        return self.expand(rows, ranked[rows, cols])

    def route_among(self, queries: np.ndarray, num_probes: int, k: int, epsilon: float,
                    passing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`route` over only the clusters with passing rows (``passing``: rows per
        cluster that pass a filter), ranked by brute force among them, counting ``k``
        in passing rows."""
        held = np.flatnonzero(passing > 0)
        if len(held) == 0 or len(queries) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        enough = int(np.searchsorted(np.cumsum(np.sort(passing[held])), k)) + 1
        depth = min(len(held), max(num_probes, 1) + enough)
        order, distances = rank_brute_force(queries, self.ranker.centroids[held], self.space,
                                            depth)
        ranked = held[order]
        sizes = passing[ranked]
        before = np.cumsum(sizes, axis=1) - sizes
        position = np.arange(depth)[None, :]
        wanted = ((position < num_probes) & within_slack(distances, epsilon)) | (before < k)
        rows, cols = np.nonzero(wanted)
        return self.expand(rows, ranked[rows, cols])

    @property
    def space(self) -> str:
        return self.ranker.space

    def expand(self, rows: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query positions, partition ids) of (query, cluster) pairs: every shard."""
        counts = self.plan.counts[clusters]
        query_pos = np.repeat(rows, counts)
        first = np.repeat(self.plan.offsets[clusters], counts)
        starts = np.cumsum(counts) - counts
        within = np.arange(len(first)) - np.repeat(starts, counts)
        return query_pos.astype(np.int64), (first + within).astype(np.int64)
