"""Partitioning (k-means, centroid ranking, shards, routing), exact search and synthetic
data. Pure numpy, scikit-learn and hnswlib; no Spark."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkann import datasets, exact
from sparkann.index import REGISTRY
from sparkann.metrics import get_metric
from sparkann.partitioning import kmeans
from sparkann.partitioning.router import (
    CentroidRanker,
    Router,
    ShardPlan,
    build_centroid_graph,
    rank_brute_force,
    within_slack,
)

FAST = settings(max_examples=30, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def data():
    return datasets.clustered(3000, 24, seed=3), datasets.clustered(100, 24, seed=3, sample_seed=4)


def l2_router(centroids, sizes, max_rows=1000):
    centroids = np.asarray(centroids, np.float32)
    sizes = np.asarray(sizes)
    return Router(CentroidRanker(centroids, get_metric("l2")), sizes,
                  ShardPlan.from_cluster_sizes(sizes, max_rows))


# --------------------------------------------------------- ranking centroids


@pytest.mark.parametrize("space", ["l2", "ip"])
def test_brute_force_ranking_follows_the_space(space):
    centroids = datasets.clustered(40, 8, seed=3)
    queries = datasets.clustered(20, 8, seed=3, sample_seed=4)
    ranked, distances = rank_brute_force(queries, centroids, space, 3)
    full = get_metric(space).pairwise(queries, centroids)  # Euclidean / negative inner product
    order, best = exact.top_k(full, 3)
    np.testing.assert_array_equal(ranked, order)
    np.testing.assert_allclose(distances, best, rtol=1e-4, atol=1e-3)
    ranked, _ = rank_brute_force(queries, centroids, space, 100)
    assert ranked.shape == (20, 40)  # capped at the number of centroids


def test_brute_force_ranking_breaks_ties_by_index():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
    ranked, distances = rank_brute_force(np.zeros((1, 2), np.float32), centroids, "l2", 4)
    np.testing.assert_array_equal(ranked, [[0, 1, 2, 3]])
    np.testing.assert_allclose(distances, 1.0)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_meta_hnsw_ranking_agrees_with_brute_force(metric):
    metric = get_metric(metric)
    centroids = metric.prepare(datasets.clustered(600, 16, seed=5))
    queries = metric.prepare(datasets.clustered(50, 16, seed=5, sample_seed=1))
    graph = build_centroid_graph(centroids, metric, seed=0)
    assert graph == build_centroid_graph(centroids, metric, seed=0)  # reproducible
    ranker = CentroidRanker(centroids, metric, graph)
    assert ranker.uses_graph and not CentroidRanker(centroids, metric).uses_graph
    ranked, distances = ranker.rank(queries, 5)
    truth, truth_distances = rank_brute_force(queries, centroids, metric.centroid_space, 5)
    assert exact.recall_at_k(ranked, truth, 5) >= 0.95
    np.testing.assert_allclose(distances[:, 0], truth_distances[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ranker.nearest(queries), ranked[:, 0])
    empty, _ = ranker.rank(queries[:0], 5)
    assert empty.shape == (0, 5)


def test_centroid_graph_must_match_the_centroids():
    metric = get_metric("l2")
    centroids = datasets.clustered(50, 8, seed=1)
    graph = build_centroid_graph(centroids, metric, seed=0)
    with pytest.raises(ValueError, match="does not match"):
        CentroidRanker(centroids[:40], metric, graph)
    with pytest.raises(ValueError, match="dimension"):
        CentroidRanker(centroids[:, :4], metric, graph)
    with pytest.raises(ValueError, match="space"):
        CentroidRanker(centroids, get_metric("ip"), graph)


# --------------------------------------------------------------- shard plans


def test_shard_plan_splits_large_clusters():
    plan = ShardPlan.from_cluster_sizes(np.array([10, 0, 25, 5]), max_rows=10)
    assert plan.counts.tolist() == [1, 0, 3, 1]
    assert plan.offsets.tolist() == [0, 1, 1, 4]
    assert plan.num_partitions == 5
    assert plan.cluster_of.tolist() == [0, 2, 2, 2, 3]
    assert ShardPlan.from_cluster_sizes([7], max_rows=0).counts.tolist() == [7]


def test_shard_of_a_row_is_picked_by_its_id_hash():
    plan = ShardPlan.from_cluster_sizes(np.array([10, 0, 25, 5]), max_rows=10)
    parts = plan.partition_of(np.array([2, 2, 2, 2, 0, 3]), np.array([0, 1, 2, -1, 99, 7]))
    assert parts.tolist() == [1, 2, 3, 3, 0, 4]
    with pytest.raises(ValueError, match="no partition"):
        plan.partition_of(np.array([1]), np.array([0]))


# ------------------------------------------------------------------- routing


def test_router_probes_nearest_clusters_and_all_their_shards():
    router = l2_router([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], [100, 250, 100], max_rows=100)
    rows, parts = router.route(np.array([[9.0, 0.0], [0.0, 1.0]], np.float32), 1, 10)
    assert sorted(parts[rows == 0].tolist()) == [1, 2, 3]  # cluster 1 = three shards
    assert parts[rows == 1].tolist() == [0]
    assert rows.tolist() == sorted(rows.tolist())


def test_router_adds_clusters_until_k_vectors_are_reachable():
    router = l2_router([[0.0], [1.0], [2.0], [3.0]], [2, 3, 0, 50])
    rows, parts = router.route(np.array([[0.0]], np.float32), 1, 10)
    assert parts.tolist() == [0, 1, 2]  # clusters 0, 1 and 3; the empty one has no shard


def test_probes_needed_covers_probes_and_k():
    router = l2_router(np.zeros((5, 1)), [0, 0, 3, 4, 100])
    assert router.probes_needed(1, 1) == 4  # two empty clusters may rank first
    assert router.probes_needed(1, 8) == 5
    assert router.probes_needed(0, 1) == 4
    assert router.probes_needed(9, 1) == 5


def test_within_slack():
    distances = np.array([[1.0, 1.2, 1.6, 3.0], [-4.0, -3.9, -3.0, 0.0]])
    np.testing.assert_array_equal(within_slack(distances, 0.0), np.ones((2, 4), bool))
    np.testing.assert_array_equal(within_slack(distances, 0.5),
                                  [[True, True, False, False], [True, True, True, False]])


def test_probe_pruning_skips_far_clusters_but_keeps_k_reachable():
    router = l2_router([[0.0], [1.0], [1.3], [5.0]], [20, 20, 20, 20])
    query = np.array([[0.6]], np.float32)  # distances 0.6, 0.4, 0.7, 4.4
    assert sorted(router.route(query, 4, 10)[1].tolist()) == [0, 1, 2, 3]
    assert sorted(router.route(query, 4, 10, epsilon=0.6)[1].tolist()) == [0, 1]
    assert sorted(router.route(query, 4, 10, epsilon=0.8)[1].tolist()) == [0, 1, 2]
    assert sorted(router.route(query, 2, 10, epsilon=100)[1].tolist()) == [0, 1]
    # pruning never leaves fewer than k vectors reachable
    assert sorted(router.route(query, 4, 30, epsilon=0.01)[1].tolist()) == [0, 1]


def test_router_with_a_meta_hnsw_routes_like_brute_force(data):
    metric = get_metric("l2")
    centroids = datasets.clustered(300, 24, seed=9)
    sizes = np.full(300, 10)
    plan = ShardPlan.from_cluster_sizes(sizes, 1000)
    graph = build_centroid_graph(centroids, metric, seed=0)
    queries = data[1]
    a = Router(CentroidRanker(centroids, metric, graph), sizes, plan).route(queries, 3, 10)
    b = Router(CentroidRanker(centroids, metric), sizes, plan).route(queries, 3, 10)
    assert np.mean([len(np.intersect1d(a[1][a[0] == q], b[1][b[0] == q])) / 3
                    for q in range(len(queries))]) >= 0.95


@FAST
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    max_rows=st.integers(1, 50),
    probes=st.integers(1, 12),
    k=st.integers(1, 30),
    seed=st.integers(0, 1000),
)
def test_routing_properties(sizes, max_rows, probes, k, seed):
    rng = np.random.default_rng(seed)
    sizes = np.array(sizes)
    if sizes.sum() == 0:
        sizes[0] = 1
    centroids = rng.standard_normal((len(sizes), 3)).astype(np.float32)
    router = l2_router(centroids, sizes, max_rows)
    plan = router.plan
    queries = rng.standard_normal((7, 3)).astype(np.float32)
    epsilon = seed % 3 * 0.25
    rows, parts = router.route(queries, probes, k, epsilon=epsilon)
    assert ((parts >= 0) & (parts < plan.num_partitions)).all()
    nearest = router.ranker.rank(queries, len(sizes))[0]
    for q in range(len(queries)):
        mine = parts[rows == q]
        assert len(set(mine.tolist())) == len(mine)  # no partition twice
        clusters = set(plan.cluster_of[mine].tolist())
        assert sizes[list(clusters)].sum() >= min(k, sizes.sum())
        for c in clusters:  # every shard of a probed cluster is probed
            assert plan.counts[c] == (plan.cluster_of[mine] == c).sum()
        first = next(c for c in nearest[q] if sizes[c] > 0)
        if nearest[q][0] == first:  # the nearest cluster is probed unless it is empty
            assert first in clusters


# ------------------------------------------------------------- exact search


@FAST
@given(n=st.integers(1, 60), k=st.integers(1, 70), seed=st.integers(0, 100))
def test_exact_top_k_matches_full_sort(n, k, seed):
    d = np.random.default_rng(seed).integers(0, 5, size=(4, n)).astype(np.float32)
    idx, val = exact.top_k(d, k)
    order = np.lexsort((np.broadcast_to(np.arange(n), d.shape), d), axis=1)[:, :k]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(val, np.take_along_axis(d, order, axis=1))


def test_exact_top_k_of_zero_is_empty():
    idx, val = exact.top_k(np.ones((2, 5), np.float32), 0)
    assert idx.shape == val.shape == (2, 0)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_knn_is_a_chunked_full_sort(data, metric, monkeypatch):
    base, queries = (get_metric(metric).prepare(x) for x in data)
    monkeypatch.setattr(exact, "_CHUNK_ROWS", 7)
    labels, dists = exact.knn(base[:500], queries, 10, metric)
    full = get_metric(metric).pairwise(queries, base[:500])
    order, best = exact.top_k(full, 10)
    assert (labels == order).mean() > 0.99  # BLAS may round chunks differently: near-ties
    np.testing.assert_allclose(dists, best, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dists, np.take_along_axis(full, labels, 1), rtol=1e-5, atol=1e-5)
    labels, dists = exact.knn(base[:4], queries[:2], 10, metric)
    assert labels.shape == (2, 4)


def test_recall_at_k():
    truth = np.array([[0, 1, 2], [3, 4, 5]])
    assert exact.recall_at_k(truth, truth, 3) == 1.0
    assert exact.recall_at_k(np.array([[2, -1, 9], [5, 4, -1]]), truth, 3) == 0.5
    assert exact.recall_at_k(np.array([[0, 9, 1], [3, 9, 4]]), truth, 2) == 0.5
    with pytest.raises(ValueError, match="at least one query"):
        exact.recall_at_k(truth[:0], truth[:0], 3)


# ------------------------------------------------------------------- k-means


def test_defaults_scale_with_data():
    assert kmeans.default_num_clusters(10) == 1
    assert kmeans.default_num_clusters(250_000) == 13
    assert kmeans.default_num_clusters(10**9) == 50_000
    hnsw = REGISTRY["hnsw"]

    def rows(dim, m):
        return kmeans.default_max_partition_rows(
            hnsw.stored_row_bytes({"hnswM": m, "efConstruction": 40}, dim))
    assert rows(128, 16) > 500_000
    assert rows(128, 16) > rows(1024, 16)
    assert rows(10**6, 64) == 1000
    assert kmeans.sample_rows(1) == kmeans.MIN_SAMPLE_ROWS
    assert kmeans.sample_rows(10_000) == 640_000
    assert kmeans.sample_rows(10_000, requested=5000) == 5000
    assert kmeans.coarse_count(3) == 2 and kmeans.coarse_count(10_000) == 100
    assert not kmeans.two_level(4096) and kmeans.two_level(4097)


def test_kmeans_is_seeded_and_refuses_too_few_rows(data):
    a = kmeans.train(data[0], 8, seed=1)
    assert a.shape == (8, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, kmeans.train(data[0], 8, seed=1))
    assert not np.array_equal(a, kmeans.train(data[0], 8, seed=2))
    with pytest.raises(ValueError, match="numPartitions=8"):
        kmeans.train(data[0][:5], 8, seed=1)
    with pytest.raises(ValueError, match="numPartitions=8"):
        kmeans.train(data[0][:8], 8, seed=1)


def test_kmeans_of_one_cluster_or_no_rows(data):
    np.testing.assert_allclose(kmeans.train(data[0], 1, seed=0), data[0].mean(0, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert kmeans.train(data[0][:0], 4, seed=0).shape == (0, 24)


def test_kmeans_beats_random_rows_as_centroids(data):
    def inertia(centroids):
        return (get_metric("l2").pairwise(data[0], centroids).min(1) ** 2).sum()

    random_rows = data[0][np.random.default_rng(0).choice(len(data[0]), 16, replace=False)]
    assert inertia(kmeans.train(data[0], 16, seed=0)) < 0.8 * inertia(random_rows)


@FAST
@given(counts=st.lists(st.integers(0, 50), min_size=1, max_size=10), extra=st.integers(0, 200))
def test_fine_counts_properties(counts, extra):
    counts = np.array(counts)
    nonzero = int((counts > 0).sum())
    total = nonzero + extra
    out = kmeans.fine_counts(counts, total)
    assert out.shape == counts.shape and out.dtype == np.int64
    assert out.sum() == min(total, counts.sum())
    assert ((out >= 1) == (counts > 0)).all()  # one at least for every cluster with rows
    assert (out <= counts).all()
    if nonzero:
        with pytest.raises(ValueError, match="cannot cover"):
            kmeans.fine_counts(counts, nonzero - 1)


def test_fine_counts_are_proportional():
    assert kmeans.fine_counts(np.array([100, 300, 0, 600]), 10).tolist() == [1, 3, 0, 6]
    assert kmeans.fine_counts(np.array([1, 1, 1000]), 10).tolist() == [1, 1, 8]


def test_train_fine(data):
    rows = data[0][:30]
    np.testing.assert_array_equal(kmeans.train_fine(rows, 30, seed=0), rows)
    np.testing.assert_array_equal(kmeans.train_fine(rows, 50, seed=0), rows)
    np.testing.assert_array_equal(kmeans.train_fine(rows, 4, seed=0),
                                  kmeans.train(rows, 4, seed=0))


# ---------------------------------------------------------------- synthetic data


def test_synthetic_data_is_seeded_and_clustered():
    a = datasets.clustered(500, 64, rank=8, seed=2)
    assert a.dtype == np.float32 and a.shape == (500, 64)
    np.testing.assert_array_equal(a, datasets.clustered(500, 64, rank=8, seed=2))
    q = datasets.clustered(500, 64, rank=8, seed=2, sample_seed=3)
    assert not np.allclose(a, q)
    np.testing.assert_array_equal(q, datasets.clustered(500, 64, rank=8, seed=2, sample_seed=3))
    variance = np.linalg.svd(a - a.mean(0), compute_uv=False) ** 2
    assert variance[:8].sum() > 0.9 * variance.sum()  # low rank


def test_filtered_routing_probes_only_clusters_with_passing_rows():
    centroids = np.array([[float(c), 0.0] for c in range(8)], np.float32)
    router = l2_router(centroids, np.full(8, 100))
    passing = np.array([0, 0, 0, 40, 0, 3, 0, 200])
    query = np.array([[0.2, 0.0]], np.float32)  # nearest to cluster 0, which has none
    rows, pids = router.route_among(query, 1, 10, 0.0, passing)
    assert pids.tolist() == [3]  # the nearest cluster holding passing rows
    rows, pids = router.route_among(query, 1, 50, 0.0, passing)
    assert pids.tolist() == [3, 5, 7]  # on until 50 passing rows are covered
    rows, pids = router.route_among(query, 8, 10, 0.0, passing)
    assert sorted(pids.tolist()) == [3, 5, 7] and (rows == 0).all()
    empty = router.route_among(query, 2, 10, 0.0, np.zeros(8, np.int64))
    assert len(empty[0]) == len(empty[1]) == 0


def test_filtered_probes_follow_the_passing_share():
    from sparkann.search.filtered import WIDE_SHARE, filtered_probes

    # few passing rows in all: every cluster holding one, without epsilon pruning
    assert filtered_probes(2, 0.3, passing=500, live=10**6, clusters=37,
                           scan_rows=1000) == (37, 0.0)
    # most rows pass: the search's own settings
    assert filtered_probes(2, 0.3, int(WIDE_SHARE * 10**6), 10**6, 50, 1000) == (2, 0.3)
    # fewer pass: more probes as the share falls, capped at the clusters holding them
    wider = [filtered_probes(4, 0.3, int(s * 10**6), 10**6, 60, 1000)[0]
             for s in (0.2, 0.05, 0.01, 0.002)]
    assert wider == sorted(wider) and wider[0] > 4 and wider[-1] <= 60
    assert filtered_probes(4, 0.3, 10**4, 10**6, 60, 1000)[1] == 0.0
