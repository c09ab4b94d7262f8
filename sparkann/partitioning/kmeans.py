"""Seeded k-means for the coarse centroids, in one or two levels. No Spark.

One level trains every centroid on a driver-sized sample. Two levels train
``coarse`` centroids on that sample, then each coarse cluster's share of the
fine centroids on that cluster's rows of a larger sample, in parallel Spark
tasks: no step holds more than a bounded sample, whatever the number of rows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# Rows per partition the defaults aim at. Small graphs need a narrower beam for the
# same recall and build faster; calibrated border probes (probeEpsilon) keep the
# number of partitions each query searches near one on clustered data.
TARGET_CLUSTER_ROWS = 20_000
# A partition's serialised graph stays under this many bytes by default.
TARGET_PARTITION_BYTES = 512 << 20
# Training rows per centroid, and the bounds of a driver sample.
SAMPLE_PER_CENTROID = 64
MIN_SAMPLE_ROWS = 20_000
MAX_DRIVER_SAMPLE_ROWS = 262_144
# Above this many centroids the fine ones are trained in Spark tasks.
SINGLE_LEVEL_MAX_CENTROIDS = 4096
_FULL_KMEANS_MAX_WORK = 2e9  # rows * clusters * dim for exact Lloyd iterations


def default_num_clusters(num_rows: int) -> int:
    """Number of coarse centroids for ``num_rows`` vectors."""
    return max(1, math.ceil(num_rows / TARGET_CLUSTER_ROWS))


def default_max_partition_rows(row_bytes: int) -> int:
    """Rows per shard so a stored partition of rows of ``row_bytes`` bytes each stays
    near ``TARGET_PARTITION_BYTES``."""
    return max(1000, TARGET_PARTITION_BYTES // max(row_bytes, 1))


def sample_rows(num_clusters: int, requested: int | None = None) -> int:
    """Rows sampled to train ``num_clusters`` centroids (the fine sample when two-level)."""
    if requested:
        return int(requested)
    return int(max(MIN_SAMPLE_ROWS, SAMPLE_PER_CENTROID * num_clusters))


def coarse_count(num_clusters: int) -> int:
    """First-level centroids of a two-level training: about sqrt(C), at least 2."""
    return int(max(2, round(math.sqrt(num_clusters))))


def two_level(num_clusters: int) -> bool:
    return num_clusters > SINGLE_LEVEL_MAX_CENTROIDS


def train(sample: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """Seeded k-means centroids (num_clusters, d) float32 of prepared vectors."""
    sample = np.asarray(sample, dtype=np.float32)
    if num_clusters == 1 or len(sample) == 0:
        return sample.mean(axis=0, keepdims=True) if len(sample) else sample[:1]
    if len(sample) <= num_clusters:
        raise ValueError(
            f"numPartitions={num_clusters} needs more sample rows than centroids; "
            f"got {len(sample)} rows (lower numPartitions or raise sampleSize)"
        )
    from sklearn.cluster import KMeans, MiniBatchKMeans  # slow to import: only where used
    from sklearn.exceptions import ConvergenceWarning

    work = len(sample) * num_clusters * sample.shape[1]
    if work <= _FULL_KMEANS_MAX_WORK:
        model = KMeans(num_clusters, n_init=1, max_iter=25, random_state=seed)
    else:
        model = MiniBatchKMeans(num_clusters, n_init=1, batch_size=8192, max_iter=50,
                                random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(sample).cluster_centers_.astype(np.float32)


def fine_counts(sample_counts: np.ndarray, total: int) -> np.ndarray:
    """Fine centroids per coarse cluster, proportional to its sample rows (largest
    remainder), at least one for every cluster with rows, never more than its rows."""
    counts = np.asarray(sample_counts, dtype=np.int64)
    if total < int((counts > 0).sum()):
        raise ValueError(f"{total} centroids cannot cover {(counts > 0).sum()} coarse clusters")
    share = counts / max(counts.sum(), 1) * total
    out = np.where(counts > 0, np.maximum(np.floor(share), 1), 0).astype(np.int64)
    out = np.minimum(out, counts)
    while out.sum() < total:
        room = (counts - out) > 0
        if not room.any():
            break
        out[np.argmax(np.where(room, share - out, -np.inf))] += 1
    while out.sum() > total:
        out[np.argmax(np.where(out > 1, out - share, -np.inf))] -= 1
    return out


def train_fine(rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The fine centroids of one coarse cluster (a task of the two-level training)."""
    rows = np.asarray(rows, dtype=np.float32)
    if count >= len(rows):
        return rows[:count].copy()
    return train(rows, count, seed)
