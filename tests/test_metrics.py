"""sparkann.metrics: each metric's conversions against brute-force definitions. No Spark."""

from __future__ import annotations

import faiss
import hnswlib
import numpy as np
import pytest

from sparkann import datasets, exact
from sparkann.metrics import METRICS, get_metric

NAMES = ["l2", "ip", "cosine"]
N, NQ, DIM, K = 400, 20, 12, 10


@pytest.fixture(scope="module")
def raw():
    """Unprepared float64 base and query vectors (the definitions are taken on these)."""
    base = datasets.clustered(N, DIM, seed=31).astype(np.float64)
    queries = datasets.clustered(NQ, DIM, seed=31, sample_seed=32).astype(np.float64)
    return base, queries


def definition(name: str, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """The documented distance of each query (nq, d) to its candidates (nq, j, d), in
    float64 on the unprepared vectors: Euclidean, negative inner product, 1 - cosine."""
    queries = np.asarray(queries, np.float64)
    found = np.asarray(found, np.float64)
    if name == "l2":
        return np.sqrt(((queries[:, None, :] - found) ** 2).sum(-1))
    dots = np.einsum("qd,qjd->qj", queries, found)
    if name == "ip":
        return -dots
    norms = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(found, axis=2)
    return 1.0 - dots / norms


def assert_distances(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * (1.0 + np.abs(want).max()))


# ------------------------------------------------------------------ lookup


def test_get_metric_knows_every_metric_and_names_the_choices():
    assert sorted(METRICS) == sorted(NAMES)
    for name in NAMES:
        metric = get_metric(name)
        assert metric is METRICS[name] and metric.name == name
        assert name in repr(metric)
    with pytest.raises(ValueError, match=r"metric='manhattan'.*\['cosine', 'ip', 'l2'\]"):
        get_metric("manhattan")


@pytest.mark.parametrize("name, hnsw_space, faiss_ip, centroid_space", [
    ("l2", "l2", False, "l2"),
    ("ip", "ip", True, "ip"),
    ("cosine", "ip", True, "l2"),
])
def test_spaces_of_each_metric(name, hnsw_space, faiss_ip, centroid_space):
    metric = get_metric(name)
    assert (metric.hnsw_space, metric.faiss_inner_product, metric.centroid_space) == (
        hnsw_space, faiss_ip, centroid_space)


# ------------------------------------------------------------- conversions


@pytest.mark.parametrize("name", NAMES)
def test_from_hnsw_converts_real_hnswlib_scores(raw, name):
    metric = get_metric(name)
    base, queries = raw
    graph = hnswlib.Index(space=metric.hnsw_space, dim=DIM)
    graph.init_index(max_elements=N, M=16, ef_construction=200, random_seed=1)
    graph.add_items(metric.prepare(base), np.arange(N), num_threads=1)
    graph.set_ef(N)
    labels, scores = graph.knn_query(metric.prepare(queries), k=K, num_threads=1)
    labels = labels.astype(np.int64)
    dists = metric.from_hnsw(scores)
    assert dists.dtype == np.float32
    assert_distances(dists, definition(name, queries, base[labels]))
    assert (np.diff(dists, axis=1) >= -1e-5).all()  # hnswlib's order is the metric's order
    truth, _ = exact.knn(metric.prepare(base), metric.prepare(queries), K, name)
    assert exact.recall_at_k(labels, truth, K) >= 0.99


@pytest.mark.parametrize("name", NAMES)
def test_from_faiss_converts_real_faiss_scores(raw, name):
    metric = get_metric(name)
    base, queries = raw
    index = faiss.IndexFlatIP(DIM) if metric.faiss_inner_product else faiss.IndexFlatL2(DIM)
    index.add(metric.prepare(base))
    scores, labels = index.search(metric.prepare(queries), K)
    dists = metric.from_faiss(scores)
    assert dists.dtype == np.float32
    assert_distances(dists, definition(name, queries, base[labels]))
    assert (np.diff(dists, axis=1) >= -1e-5).all()
    truth, truth_dists = exact.knn(metric.prepare(base), metric.prepare(queries), K, name)
    assert exact.recall_at_k(labels, truth, K) >= 0.99
    np.testing.assert_allclose(dists[:, 0], truth_dists[:, 0], rtol=1e-4, atol=1e-4)


def test_l2_conversions_clamp_tiny_negative_squares_to_zero():
    for convert in (get_metric("l2").from_hnsw, get_metric("l2").from_faiss):
        np.testing.assert_array_equal(convert(np.array([[-1e-7, 0.0, 4.0]])), [[0.0, 0.0, 2.0]])


@pytest.mark.parametrize("name", NAMES)
def test_pairwise_matches_the_definition(raw, name):
    metric = get_metric(name)
    base, queries = raw
    got = metric.pairwise(metric.prepare(queries), metric.prepare(base))
    assert got.shape == (NQ, N)
    want = definition(name, queries, np.broadcast_to(base, (NQ, N, DIM)))
    assert_distances(got, want)
    np.testing.assert_array_equal(
        got, exact.pairwise_distances(metric.prepare(queries), metric.prepare(base), name))


@pytest.mark.parametrize("name", NAMES)
def test_among_matches_the_definition_and_pairwise(raw, name):
    metric = get_metric(name)
    base, queries = raw
    picks = np.random.default_rng(5).integers(0, N, size=(NQ, 7))
    picks[::3, 2] = -1  # a missing candidate
    prepared = metric.prepare(base)
    got = metric.among(metric.prepare(queries), prepared, picks)
    assert got.shape == (NQ, 7)
    assert np.isinf(got[::3, 2]).all()
    found = picks >= 0
    assert_distances(np.where(found, got, 0.0),
                     np.where(found, definition(name, queries, base[np.maximum(picks, 0)]), 0.0))
    full = metric.pairwise(metric.prepare(queries), prepared)
    np.testing.assert_allclose(got[found], np.take_along_axis(full, np.maximum(picks, 0), 1)[found],
                               rtol=1e-4, atol=1e-4)


def test_among_refuses_labels_outside_the_rows(raw):
    metric = get_metric("l2")
    base = metric.prepare(raw[0][:20])
    with pytest.raises(ValueError, match="candidate label 20 is outside the 20 rows"):
        metric.among(base[:2], base, np.array([[0, 20], [1, -1]]))
    with pytest.raises(ValueError, match="dimension"):
        metric.among(base[:2, :-1], base, np.array([[0], [1]]))


def test_l2_distance_of_a_vector_to_itself_is_zero_not_nan(raw):
    metric = get_metric("l2")
    base = metric.prepare(raw[0][:50])
    own = metric.pairwise(base, base)
    assert np.isfinite(own).all() and (own >= 0).all()
    np.testing.assert_allclose(np.diag(own), 0.0, atol=2e-3)
    own_label = np.arange(len(base))[:, None]
    np.testing.assert_allclose(metric.among(base, base, own_label)[:, 0], 0.0, atol=2e-3)


# ----------------------------------------------------------------- prepare


def test_cosine_prepare_normalises(raw):
    metric = get_metric("cosine")
    vectors = np.asfortranarray(raw[0][:30] * 7.5)  # float64, Fortran order
    prepared = metric.prepare(vectors)
    assert prepared.dtype == np.float32 and prepared.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(prepared, axis=1), 1.0, rtol=1e-6)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(prepared, vectors / norms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metric.prepare(vectors / 7.5), prepared, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("what", ["queries", "allowed vectors"])
def test_cosine_prepare_refuses_zero_rows_naming_what_was_passed(raw, what):
    vectors = raw[0][:5].copy()
    vectors[3] = 0.0
    with pytest.raises(ValueError, match=f"^{what} holds an all-zero vector"):
        get_metric("cosine").prepare(vectors, what)
    with pytest.raises(ValueError, match="^vector holds an all-zero vector"):
        get_metric("cosine").prepare(np.zeros((1, 4)))


@pytest.mark.parametrize("name", ["l2", "ip"])
def test_l2_and_ip_prepare_keep_values(raw, name):
    vectors = np.asfortranarray(raw[0][:30])
    vectors[0] = 0.0  # zero rows are fine outside cosine
    prepared = get_metric(name).prepare(vectors, "queries")
    assert prepared.dtype == np.float32 and prepared.flags.c_contiguous
    np.testing.assert_array_equal(prepared, vectors.astype(np.float32))
