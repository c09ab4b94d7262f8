"""Coarse partitioning: centroids from a sample, defaults derived from data size.

Pure numpy + scikit-learn; the Spark side (assigning every row) lives in
:mod:`sparkann.build`.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

# Rows per cluster the defaults aim at; big graphs search faster per probe.
TARGET_CLUSTER_ROWS = 100_000
# A partition's serialised graph stays under this many bytes by default.
TARGET_PARTITION_BYTES = 512 << 20
_FULL_KMEANS_MAX_WORK = 2e9  # rows * clusters * dim for exact Lloyd iterations


def default_num_clusters(num_rows: int) -> int:
    """Number of coarse centroids for ``num_rows`` vectors."""
    return max(1, math.ceil(num_rows / TARGET_CLUSTER_ROWS))


def default_num_probes(num_clusters: int) -> int:
    """Clusters visited per query when the user does not say."""
    return int(min(num_clusters, max(3, math.ceil(math.sqrt(num_clusters)))))


def default_max_partition_rows(dim: int, hnsw_m: int) -> int:
    """Rows per shard so a serialised graph stays near ``TARGET_PARTITION_BYTES``."""
    bytes_per_row = 4 * dim + 8 * (hnsw_m + 1) + 16
    return max(1000, TARGET_PARTITION_BYTES // bytes_per_row)


def default_sample_size(num_clusters: int) -> int:
    """Training rows for k-means: enough points per centroid, bounded."""
    return int(min(1_000_000, max(20_000, 64 * num_clusters)))


def train_centroids(sample: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """Seeded k-means centroids (num_clusters, d) float32 of a sample."""
    sample = np.asarray(sample, dtype=np.float32)
    if num_clusters == 1:
        return sample.mean(axis=0, keepdims=True)
    if len(sample) <= num_clusters:
        raise ValueError(
            f"numPartitions={num_clusters} needs more sample rows than centroids; "
            f"got {len(sample)} rows (lower numPartitions or raise sampleSize)"
        )
    work = len(sample) * num_clusters * sample.shape[1]
    if work <= _FULL_KMEANS_MAX_WORK:
        model = KMeans(num_clusters, n_init=1, max_iter=25, random_state=seed)
    else:
        model = MiniBatchKMeans(
            num_clusters, n_init=1, batch_size=8192, max_iter=50, random_state=seed
        )
    return model.fit(sample).cluster_centers_.astype(np.float32)
