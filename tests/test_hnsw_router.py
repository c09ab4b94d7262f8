"""Pure modules: HNSW payloads, routing, partitioning defaults, exact search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkann import datasets, exact, hnsw, partitioner
from sparkann.router import Router, ShardPlan, centroid_distances, nearest_centroids


@pytest.fixture(scope="module")
def data():
    return datasets.clustered(3000, 24, seed=3), datasets.clustered(100, 24, seed=3, sample_seed=4)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_hnsw_recall_and_distances_match_exact(data, metric):
    base, queries = data
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    graph = hnsw.build(base, metric, M=16, ef_construction=100)
    labels, dists = hnsw.search(graph, queries, 10, 100, metric)
    truth, truth_d = exact.knn(base, queries, 10, metric)
    assert exact.recall_at_k(labels, truth, 10) >= 0.95
    expected = exact.pairwise_distances(queries[:1], base[labels[0]], metric)[0]
    np.testing.assert_allclose(dists[0], expected, rtol=1e-4, atol=1e-4)
    assert (np.diff(dists, axis=1) >= -1e-6).all()


def test_payload_round_trip_gives_identical_answers(data):
    base, queries = data
    graph = hnsw.build(base, "l2", M=8, ef_construction=50, seed=1)
    loaded = hnsw.from_bytes(hnsw.to_bytes(graph))
    a = hnsw.search(graph, queries, 5, 50, "l2")
    b = hnsw.search(loaded, queries, 5, 50, "l2")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(hnsw.vectors_of(loaded), base)


def test_k_larger_than_graph_returns_every_vector(data):
    base, queries = data
    graph = hnsw.build(base[:3], "l2")
    labels, dists = hnsw.search(graph, queries[:2], 10, 10, "l2")
    assert labels.shape == (2, 3) and sorted(labels[0]) == [0, 1, 2]


def test_building_zero_vectors_is_refused():
    with pytest.raises(ValueError, match="zero vectors"):
        hnsw.build(np.empty((0, 4), np.float32), "l2")


@pytest.mark.parametrize("cut", [0, 10, 30, 200, -1])
def test_truncated_payload_is_reported_damaged(data, cut):
    payload = hnsw.to_bytes(hnsw.build(data[0][:200], "l2", M=8))
    with pytest.raises(ValueError, match="damaged"):
        hnsw.from_bytes(payload[:cut])


def test_overwritten_link_bytes_are_caught(data):
    payload = bytearray(hnsw.to_bytes(hnsw.build(data[0][:500], "l2", M=8)))
    payload[-64:] = b"\xff" * 64  # upper-level links of the last elements
    with pytest.raises(ValueError, match="damaged"):
        hnsw.from_bytes(bytes(payload))


def test_newer_payload_format_is_refused(data):
    payload = bytearray(hnsw.to_bytes(hnsw.build(data[0][:50], "l2")))
    payload[8] = 99
    with pytest.raises(ValueError, match="newer"):
        hnsw.from_bytes(bytes(payload))


def test_shard_plan_splits_large_clusters():
    plan = ShardPlan.from_cluster_sizes(np.array([10, 0, 25, 5]), max_rows=10)
    assert plan.counts.tolist() == [1, 0, 3, 1]
    assert plan.offsets.tolist() == [0, 1, 1, 4]
    assert plan.num_partitions == 5


def test_router_probes_nearest_clusters_and_all_their_shards():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    plan = ShardPlan.from_cluster_sizes(np.array([100, 250, 100]), max_rows=100)
    router = Router(centroids, "l2", [100, 250, 100], plan)
    rows, parts = router.route(np.array([[9.0, 0.0], [0.0, 1.0]], np.float32), 1, 10)
    assert sorted(parts[rows == 0].tolist()) == [1, 2, 3]  # cluster 1 = three shards
    assert parts[rows == 1].tolist() == [0]


def test_router_adds_clusters_until_k_vectors_are_reachable():
    centroids = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    sizes = np.array([2, 3, 0, 50])
    router = Router(centroids, "l2", sizes, ShardPlan.from_cluster_sizes(sizes, 1000))
    rows, parts = router.route(np.array([[0.0]], np.float32), 1, 10)
    assert parts.tolist() == [0, 1, 2]  # clusters 0, 1 and 3; the empty one has no shard


def test_meta_hnsw_routing_agrees_with_brute_force(monkeypatch):
    import sparkann.router as router_module

    centroids = datasets.clustered(600, 16, seed=5)
    queries = datasets.clustered(50, 16, seed=5, sample_seed=1)
    monkeypatch.setattr(router_module, "META_HNSW_MIN_CENTROIDS", 100)
    sizes = np.full(600, 10)
    router = Router(centroids, "l2", sizes, ShardPlan.from_cluster_sizes(sizes, 100))
    assert router._graph is not None
    ranked, distances = router.rank(queries, 5)
    truth, truth_distances = centroid_distances(queries, centroids, "l2", 5)
    assert exact.recall_at_k(ranked, truth, 5) >= 0.95
    np.testing.assert_allclose(distances[:, 0], truth_distances[:, 0], rtol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_centroid_distances_follow_the_metric(metric):
    centroids = datasets.clustered(40, 8, seed=3)
    queries = datasets.clustered(20, 8, seed=3, sample_seed=4)
    ranked, distances = centroid_distances(queries, centroids, metric, 3)
    np.testing.assert_array_equal(ranked, nearest_centroids(queries, centroids, metric, 3))
    full = exact.pairwise_distances(queries, centroids, metric)
    np.testing.assert_allclose(distances, np.take_along_axis(full, ranked, 1),
                               rtol=1e-4, atol=1e-3)


def test_probe_pruning_skips_far_clusters_but_keeps_k_reachable():
    centroids = np.array([[0.0], [1.0], [1.3], [5.0]], np.float32)
    sizes = np.array([20, 20, 20, 20])
    router = Router(centroids, "l2", sizes, ShardPlan.from_cluster_sizes(sizes, 1000))
    query = np.array([[0.6]], np.float32)  # distances 0.6, 0.4, 0.7, 4.4
    assert sorted(router.route(query, 4, 10)[1].tolist()) == [0, 1, 2, 3]
    assert sorted(router.route(query, 4, 10, epsilon=0.6)[1].tolist()) == [0, 1]
    assert sorted(router.route(query, 4, 10, epsilon=0.8)[1].tolist()) == [0, 1, 2]
    assert sorted(router.route(query, 2, 10, epsilon=100)[1].tolist()) == [0, 1]
    # pruning never leaves fewer than k vectors reachable
    assert sorted(router.route(query, 4, 30, epsilon=0.01)[1].tolist()) == [0, 1]


@settings(max_examples=30, deadline=None)
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
    plan = ShardPlan.from_cluster_sizes(sizes, max_rows)
    router = Router(centroids, "l2", sizes, plan)
    queries = rng.standard_normal((7, 3)).astype(np.float32)
    rows, parts = router.route(queries, probes, k, epsilon=seed % 3 * 0.25)
    cluster_of = np.repeat(np.arange(len(sizes)), plan.counts)
    for q in range(len(queries)):
        mine = parts[rows == q]
        assert len(set(mine.tolist())) == len(mine)  # no partition twice
        clusters = set(cluster_of[mine].tolist())
        reachable = sizes[list(clusters)].sum()
        assert reachable >= min(k, sizes.sum())
        for c in clusters:  # every shard of a probed cluster is probed
            assert plan.counts[c] == (cluster_of[mine] == c).sum()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(1, 70), seed=st.integers(0, 100))
def test_exact_top_k_matches_full_sort(n, k, seed):
    d = np.random.default_rng(seed).integers(0, 5, size=(4, n)).astype(np.float32)
    idx, val = exact.top_k(d, k)
    order = np.lexsort((np.broadcast_to(np.arange(n), d.shape), d), axis=1)[:, :k]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(val, np.take_along_axis(d, order, axis=1))


def test_defaults_scale_with_data():
    assert partitioner.default_num_clusters(10) == 1
    assert partitioner.default_num_clusters(10**9) == 10_000
    assert partitioner.default_num_probes(1) == 1
    assert 3 <= partitioner.default_num_probes(100) <= 10
    assert partitioner.default_max_partition_rows(128, 16) > 500_000


def test_kmeans_is_seeded_and_refuses_too_few_rows(data):
    a = partitioner.train_centroids(data[0], 8, seed=1)
    b = partitioner.train_centroids(data[0], 8, seed=1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="numPartitions=8"):
        partitioner.train_centroids(data[0][:5], 8, seed=1)


def test_synthetic_data_is_seeded_and_clustered():
    a = datasets.clustered(500, 64, rank=8, seed=2)
    np.testing.assert_array_equal(a, datasets.clustered(500, 64, rank=8, seed=2))
    q = datasets.clustered(500, 64, rank=8, seed=2, sample_seed=3)
    assert not np.allclose(a, q)
    variance = np.linalg.svd(a - a.mean(0), compute_uv=False) ** 2
    assert variance[:8].sum() > 0.9 * variance.sum()  # low rank
