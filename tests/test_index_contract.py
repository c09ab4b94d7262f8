"""The PartitionIndex contract, checked for every registered index type and metric.

Parametrised over ``sparkann.index.REGISTRY``: a new index type is tested here
as soon as it is registered. Its build params are the estimator's defaults for
the type's ``build_params`` unless :data:`VARIANTS` says otherwise. No Spark.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from sparkann import datasets, exact
from sparkann.index import REGISTRY, PartitionContext, SearchKnobs
from sparkann.metrics import get_metric

N, NQ, DIM, K = 3000, 40, 32, 10
METRICS = ["l2", "ip", "cosine"]
RECALL = 0.9

# Param overrides per index type (one test variant each); generous settings, and PQ with
# re-ranking on (rerankK > 0 stores the exact vectors). Types not listed run with defaults.
VARIANTS = {
    "hnsw": {"hnsw": {"hnswM": 16, "efConstruction": 100}},
    "pq": {
        "pq8": {"pqSubvectors": 8, "pqBits": 8, "pqCodebook": "partition", "rerankK": 1},
        "pq4-global": {"pqSubvectors": 16, "pqBits": 4, "pqCodebook": "global", "rerankK": 1},
    },
}


def default_params(cls) -> dict:
    from sparkann import ANNIndex

    estimator = ANNIndex()
    return {name: estimator.getOrDefault(name) for name in cls.build_params
            if estimator.isDefined(name)}


CASES = [(name, label, params)
         for name, cls in sorted(REGISTRY.items())
         for label, params in VARIANTS.get(name, {name: default_params(cls)}).items()]
IDS = [label for _, label, _ in CASES]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@cache
def raw_data():
    return (datasets.clustered(N, DIM, seed=41),
            datasets.clustered(NQ, DIM, seed=41, sample_seed=42),
            datasets.clustered(200, DIM, seed=41, sample_seed=43))


@cache
def setup(case: int, metric_name: str):
    """(type, context, base, queries, extra rows, stored form) of one case, built once."""
    name, _, params = CASES[case]
    cls, metric = REGISTRY[name], get_metric(metric_name)
    base, queries, extra = (metric.prepare(x) for x in raw_data())
    centroid = base.mean(0)
    context = PartitionContext(metric, DIM, dict(params), centroid)
    shared = cls.train_shared(base, base - centroid, context, seed=0)
    context = PartitionContext(metric, DIM, dict(params), centroid, shared)
    stored = cls.build(base, context, seed=0, threads=1).store()
    return cls, context, base, queries, extra, stored


@pytest.fixture(params=[(i, m) for i in range(len(CASES)) for m in METRICS],
                ids=[f"{label}-{m}" for label in IDS for m in METRICS])
def case(request):
    return setup(*request.param)


def fresh(case):
    """A new loaded copy of the case's index (tests may change it)."""
    cls, context, *_, stored = case
    return cls.load(stored, context, with_vectors=True)


def best_knobs(cls, context) -> SearchKnobs:
    """The type's most expensive search setting."""
    return cls.search_knobs(cls.search_ladder(K, context.params)[-1])


def assert_no_answer(labels, dists):
    assert (labels == -1).all() and np.isinf(dists).all() and (dists > 0).all()


def test_build_store_load_gives_identical_answers(case):
    cls, context, base, queries, _, stored = case
    knobs = best_knobs(cls, context)
    built = cls.build(base, context, seed=0, threads=1)
    assert built.count == N
    loaded = fresh(case)
    assert loaded.count == N
    for a, b in zip(built.search(queries, K, knobs), loaded.search(queries, K, knobs)):
        np.testing.assert_array_equal(a, b)
    again = cls.load(loaded.store(), context, with_vectors=True)
    for a, b in zip(built.search(queries, K, knobs), again.search(queries, K, knobs)):
        np.testing.assert_array_equal(a, b)
    subset = np.arange(0, N, 5)
    np.testing.assert_array_equal(built.search_subset(queries[0], subset, K, knobs)[0],
                                  loaded.search_subset(queries[0], subset, K, knobs)[0])


def test_recall_and_distances_follow_the_metric(case):
    cls, context, base, queries, _, _ = case
    index = fresh(case)
    labels, dists = index.search(queries, K, best_knobs(cls, context))
    assert labels.shape == dists.shape == (NQ, K)
    assert labels.dtype.kind == "i" and dists.dtype == np.float32
    truth, _ = exact.knn(base, queries, K, context.metric.name)
    assert exact.recall_at_k(labels, truth, K) >= RECALL
    assert ((labels >= 0) & (labels < N)).all()
    full = context.metric.pairwise(queries, base)
    tolerance = 1e-4 if cls.exact_distances else 3e-2  # quantized vectors: approximate
    np.testing.assert_allclose(dists, np.take_along_axis(full, labels, 1),
                               rtol=tolerance, atol=tolerance * (1 + np.abs(full).max()))
    assert (np.diff(dists, axis=1) >= -1e-5).all()  # best first


def test_search_ladder_is_cheapest_first(case):
    cls, context, *_ = case
    ladder = cls.search_ladder(K, context.params)
    assert ladder and all(isinstance(s, dict) for s in ladder)
    costs = [cls.probe_cost(s, N, DIM) for s in ladder]
    assert all(c > 0 for c in costs) and costs == sorted(costs)
    assert issubclass(cls.Knobs, SearchKnobs)
    assert all(isinstance(cls.search_knobs(s), cls.Knobs) for s in ladder)


def test_hide_removes_labels_from_every_answer(case):
    cls, context, base, queries, _, _ = case
    index = fresh(case)
    knobs = best_knobs(cls, context)
    before, _ = index.search(queries, K, knobs)
    hidden = np.unique(np.concatenate([before[:, :3].ravel(), np.arange(0, N, 4)]))
    index.hide(hidden)
    index.hide(hidden[:10])  # already hidden is fine
    labels, _ = index.search(queries, K, knobs)
    assert (labels >= 0).all() and not np.isin(labels, hidden).any()
    live = np.setdiff1d(np.arange(N), hidden)
    truth, _ = exact.knn(base[live], queries, K, context.metric.name)
    assert exact.recall_at_k(labels, live[truth], K) >= RECALL
    for query in queries[:5]:
        found, _ = index.search_subset(query, np.arange(400), K, knobs)
        assert (found >= 0).all() and not np.isin(found, hidden).any()
    found, dists = index.search_subset(queries[0], hidden[:20], K, knobs)
    assert_no_answer(found, dists)
    with pytest.raises(ValueError):
        index.hide([N])


def test_add_appends_findable_labels(case):
    cls, context, base, _, extra, _ = case
    index = fresh(case)
    index.hide([0, 1])
    index.add(extra, threads=1)
    assert index.count == N + len(extra)
    everything = np.concatenate([base, extra])
    labels, _ = index.search(extra, K, best_knobs(cls, context))
    assert not np.isin(labels, [0, 1]).any()
    live = np.arange(2, len(everything))
    truth, _ = exact.knn(everything[live], extra, K, context.metric.name)
    truth = live[truth]
    assert exact.recall_at_k(labels, truth, K) >= RECALL
    new_truth = [set(row[row >= N]) for row in truth]  # the added rows exact search finds
    found = sum(len(t & set(row)) for t, row in zip(new_truth, labels.tolist()))
    assert found >= RECALL * sum(len(t) for t in new_truth) > 0
    added = np.arange(N, N + len(extra))
    if cls.exact_distances:
        np.testing.assert_allclose(index.live_vectors(added), extra, rtol=1e-6)
    else:  # decoded vectors; rows beyond the ranges trained at build are clipped
        error = np.abs(index.live_vectors(added) - extra)
        assert (error <= 0.02 * float(np.abs(everything).max())).mean() >= 0.99
    index.add(extra[:0], threads=1)
    assert index.count == N + len(extra)


def test_compact_relabels_and_keeps_the_kept_rows(case):
    cls, context, base, queries, _, _ = case
    index = fresh(case)
    knobs = best_knobs(cls, context)
    keep = np.flatnonzero(np.random.default_rng(2).random(N) < 0.7)
    index.hide(np.setdiff1d(np.arange(N), keep))
    small = index.compact(keep, seed=0, threads=1)
    assert small.count == len(keep)
    np.testing.assert_array_equal(small.live_vectors(np.arange(len(keep))),
                                  index.live_vectors(keep))
    labels, dists = small.search(queries, K, knobs)
    assert ((labels >= 0) & (labels < len(keep))).all()
    truth, truth_dists = exact.knn(base[keep], queries, K, context.metric.name)
    assert exact.recall_at_k(labels, truth, K) >= RECALL
    hidden_labels, _ = index.search(queries, K, knobs)
    assert exact.recall_at_k(keep[labels], hidden_labels, K) >= RECALL
    stored = small.store()
    again = cls.load(stored, context, with_vectors=True)
    np.testing.assert_array_equal(again.search(queries, K, knobs)[0], labels)


def test_empty_partition_searches_to_nothing_and_accepts_rows(case):
    cls, context, base, queries, extra, _ = case
    knobs = best_knobs(cls, context)
    index = cls.build(base[:0], context, seed=0, threads=1)
    assert index.count == 0 and index.memory_bytes() > 0
    labels, dists = index.search(queries, K, knobs)
    assert labels.shape == dists.shape == (NQ, K)
    assert_no_answer(labels, dists)
    assert_no_answer(*index.search_subset(queries[0], np.arange(0), K, knobs))
    loaded = cls.load(index.store(), context, with_vectors=True)
    assert loaded.count == 0
    assert_no_answer(*loaded.search(queries, K, knobs))
    loaded.add(extra, threads=1)
    assert loaded.count == len(extra)
    labels, _ = loaded.search(extra, K, knobs)
    truth, _ = exact.knn(extra, extra, K, context.metric.name)
    assert exact.recall_at_k(labels, truth, K) >= RECALL


def test_search_of_no_queries(case):
    cls, context, *_ = case
    labels, dists = fresh(case).search(np.empty((0, DIM), np.float32), K,
                                       best_knobs(cls, context))
    assert labels.shape == dists.shape == (0, K)


def test_subset_search_is_exact_within_a_small_subset(case):
    cls, context, base, queries, _, _ = case
    index = fresh(case)
    knobs = best_knobs(cls, context)
    subset = np.random.default_rng(3).choice(N, 60, replace=False)
    for query in queries[:8]:
        found, dists = index.search_subset(query, subset, K, knobs)
        assert found.shape == dists.shape == (1, K)
        assert np.isin(found, subset).all()
        order, truth_dists = exact.knn(base[np.sort(subset)], query[None], K, context.metric.name)
        if cls.exact_distances:
            np.testing.assert_array_equal(found, np.sort(subset)[order])
            np.testing.assert_allclose(dists, truth_dists, rtol=1e-4, atol=1e-4)
        else:  # exact among the quantized vectors: near-ties may swap
            assert exact.recall_at_k(found, np.sort(subset)[order], K) >= 0.8
            np.testing.assert_allclose(dists, truth_dists, rtol=3e-2, atol=3e-2)
    found, dists = index.search_subset(queries[0], subset[:4], K, knobs)  # fewer than k
    assert sorted(found[0, :4]) == sorted(subset[:4]) and (found[0, 4:] == -1).all()
    assert np.isinf(dists[0, 4:]).all()
    with pytest.raises(ValueError):
        index.search_subset(queries[0], np.array([N]), K, knobs)


@pytest.mark.parametrize("share", [0.001, 0.01, 0.1, 0.5, 0.95])
def test_filtered_search_returns_only_passing_rows_with_high_recall(case, share):
    cls, context, base, queries, _, _ = case
    index = fresh(case)
    hidden = np.arange(1, N, 7)
    index.hide(hidden)
    passing = np.random.default_rng(int(share * 1000)).random(N) < share
    live = passing.copy()
    live[hidden] = False
    labels, dists = index.search_filtered(queries, passing, K, best_knobs(cls, context))
    assert labels.shape == dists.shape == (NQ, K)
    found = labels[labels >= 0]
    assert live[found].all()  # never a row the filter (or a deletion) excludes
    rows = np.flatnonzero(live)
    order, truth_dists = exact.knn(base[rows], queries, K, context.metric.name)
    wanted = min(K, len(rows))
    assert ((labels >= 0).sum(axis=1) == wanted).all()  # fewer than k: all of them
    floor = 0.95 if cls.exact_distances else RECALL  # quantized: near-ties may swap
    assert exact.recall_at_k(labels[:, :wanted], rows[order], wanted) >= floor
    assert (np.diff(dists[:, :wanted], axis=1) >= -1e-5).all()


def test_memory_bytes_is_positive(case):
    index = fresh(case)
    assert isinstance(index.memory_bytes(), int) and index.memory_bytes() > 0


@pytest.mark.parametrize("damage", ["truncated", "bad magic", "trailing byte"])
def test_a_damaged_payload_is_refused(case, damage):
    cls, context, *_, stored = case
    payload = {"truncated": stored.payload[: len(stored.payload) // 2],
               "bad magic": bytes([stored.payload[0] ^ 0xFF]) + stored.payload[1:],
               "trailing byte": stored.payload + b"\x00"}[damage]
    with pytest.raises(ValueError):
        cls.load(replace(stored, payload=payload), context, with_vectors=False)


def test_build_params_and_knobs_round_trip(case):
    cls, context, *_ = case
    spec = cls.spec(context.params)
    assert spec.index_type == cls.name
    assert spec.params.to_params() == {name: context.params[name] for name in cls.build_params}
    assert cls.spec(spec.params) == spec
    for setting in cls.search_ladder(K, context.params):
        knobs = cls.search_knobs(setting, threads=2)
        assert knobs.threads == 2 and knobs.settings() == setting
        assert cls.model_knobs(setting, K, set(), 2) == knobs
        assert not knobs.needs_vectors or cls.keeps_vectors(context.params)
