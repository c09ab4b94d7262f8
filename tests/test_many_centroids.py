"""Above 4,096 centroids: two-level training in Spark tasks and meta-HNSW routing that
assigns and routes by one rule, for every metric."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import vectors_frame

from sparkann import datasets, exact
from sparkann.build import train_fine_level
from sparkann.metrics import get_metric
from sparkann.partitioning import kmeans
from sparkann.partitioning.router import (
    META_HNSW_MIN_CENTROIDS,
    CentroidRanker,
    Router,
    ShardPlan,
    build_centroid_graph,
    rank_brute_force,
)

CENTROIDS = 4200


@pytest.fixture(scope="module")
def vectors():
    return datasets.clustered(30_000, 24, num_clusters=300, rank=24, seed=13)


@pytest.mark.parametrize("metric_name", ["l2", "ip", "cosine"])
def test_assignment_and_routing_share_one_rule_above_4096_centroids(vectors, metric_name):
    metric = get_metric(metric_name)
    prepared = metric.prepare(vectors)
    centroids = prepared[np.random.default_rng(0).choice(len(prepared), CENTROIDS, False)]
    centroids = centroids + 0.01 * np.random.default_rng(1).standard_normal(
        centroids.shape).astype(np.float32)
    assert len(centroids) > META_HNSW_MIN_CENTROIDS
    ranker = CentroidRanker(centroids, metric, build_centroid_graph(centroids, metric, seed=0))
    assert ranker.uses_graph
    rows = prepared[:3000]
    assigned = ranker.nearest(rows)  # what the build does with every row
    truth = rank_brute_force(rows, centroids, metric.centroid_space, 1)[0][:, 0]
    assert (assigned == truth).mean() >= 0.99  # the graph finds the true nearest centroid
    sizes = np.bincount(assigned, minlength=CENTROIDS) + 1
    router = Router(ranker, sizes, ShardPlan.from_cluster_sizes(sizes, 10_000))
    positions, partitions = router.route(rows, 1, 1)
    first = partitions[np.r_[0, np.flatnonzero(np.diff(positions)) + 1]]
    np.testing.assert_array_equal(first, assigned)  # a row's first probe is its own partition
    ranked, _ = ranker.rank(rows[:300], 10)
    brute, _ = rank_brute_force(rows[:300], centroids, metric.centroid_space, 10)
    assert exact.recall_at_k(ranked, brute, 10) >= 0.95


def test_cosine_centroids_rank_by_the_rule_they_were_trained_with(vectors):
    # k-means centroids of unit vectors are not unit vectors: ranking them by inner
    # product (an "ip" space) would disagree with the build's Euclidean assignment
    metric = get_metric("cosine")
    prepared = metric.prepare(vectors)
    centroids = kmeans.train(prepared[:20_000], 200, seed=3)
    assert metric.centroid_space == "l2"
    by_l2 = rank_brute_force(prepared[20_000:], centroids, "l2", 1)[0][:, 0]
    by_ip = rank_brute_force(prepared[20_000:], centroids, "ip", 1)[0][:, 0]
    assert (by_l2 != by_ip).mean() > 0.01  # the two rules really differ on this data
    ranker = CentroidRanker(centroids, metric)
    np.testing.assert_array_equal(ranker.nearest(prepared[20_000:]), by_l2)


@pytest.mark.parametrize("metric_name", ["l2", "cosine"])
def test_fine_centroids_are_trained_in_spark_tasks(spark, vectors, metric_name):
    metric = get_metric(metric_name)
    rows = vectors_frame(spark, vectors)
    coarse = kmeans.train(metric.prepare(vectors[:5000]), kmeans.coarse_count(5000), seed=1)
    centroids, counts = train_fine_level(rows, metric, coarse, 5000, 20_000, len(vectors), 24,
                                         seed=2)
    assert centroids.shape == (5000, 24) and np.isfinite(centroids).all()
    assert counts.sum() > 0.8 * 20_000  # the sample's rows, counted per fine centroid
    prepared = metric.prepare(vectors[:2000])
    nearest = rank_brute_force(prepared, centroids, metric.centroid_space, 1)[1][:, 0]
    coarse_nearest = rank_brute_force(prepared, coarse, metric.centroid_space, 1)[1][:, 0]
    assert np.median(nearest) < 0.7 * np.median(coarse_nearest)  # finer: closer centroids
    again, _ = train_fine_level(rows.repartition(3), metric, coarse, 5000, 20_000,
                                len(vectors), 24, seed=2)
    assert np.allclose(np.sort(again, axis=0), np.sort(centroids, axis=0), atol=1e-4)
