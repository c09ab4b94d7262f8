"""Subset searches, query keys and large k: both strategies give exact search's answer.

The index is small and searched exhaustively (every partition probed, a beam wider
than a partition), so exact search on numpy knows every row's answer. It is built
with two id-location buckets, as an index of more than 2^20 rows would be. A
search with a huge k holds no more results than a partition has rows.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from conftest import vectors_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkann import ANNIndex
from sparkann.index import REGISTRY, PartitionContext, SearchKnobs
from sparkann.loader import IndexHandle, LoadedPartition
from sparkann.metrics import get_metric
from sparkann.search.binary import packed_rows, unpacked_lists
from sparkann.search.partition import ALLOWED, QVEC, SELF, candidate_lists
from sparkann.search.plan import SearchPlan
from sparkann.storage.transaction import LOCATION_BUCKETS_CONF

ROWS, DIM, K = 1500, 8, 5
SCHEMA = "qid long, id long, vector array<float>, allowed array<long>"


@pytest.fixture(scope="module")
def base():
    return np.random.default_rng(5).normal(size=(ROWS, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def model(spark, base):
    spark.conf.set(LOCATION_BUCKETS_CONF, "2")
    try:
        fitted = ANNIndex(numPartitions=3, targetRecall=0.0, numProbes=3, efSearch=200, k=K,
                          seed=1, allowedIdsCol="allowed").fit(vectors_frame(spark, base))
    finally:
        spark.conf.unset(LOCATION_BUCKETS_CONF)
    assert fitted.manifest.locations.buckets == 2
    return fitted


def exact_answer(base, vector, allowed, own, exclude_self, k=K):
    """Ids of the exact top k among the allowed ids (all when ``allowed`` is None)."""
    if allowed is None:
        ids = np.arange(ROWS)
    else:
        ids = np.array(sorted({a for a in allowed if a is not None and 0 <= a < ROWS}), np.int64)
    if exclude_self and own is not None:
        ids = ids[ids != own]
    dists = ((base[ids] - np.asarray(vector, np.float32)) ** 2).sum(axis=1)
    return ids[np.argsort(dists, kind="stable")[:k]].tolist()


def answers(model, spark, rows, strategy, exclude_self=False):
    """qid -> neighbour ids, with one strategy."""
    searcher = model.copy().setSearchStrategy(strategy).setExcludeSelf(exclude_self)
    found = searcher.transform(spark.createDataFrame(rows, SCHEMA)).collect()
    return {r.qid: [n.id for n in r.neighbors] for r in found}


def expected(base, rows, exclude_self=False):
    return {qid: exact_answer(base, vector, allowed, own, exclude_self)
            for qid, own, vector, allowed in rows}


def test_subset_search_reads_every_location_bucket(spark, model, base):
    rng = np.random.default_rng(3)
    rows = [(q, None, base[q].tolist(), rng.choice(ROWS, 20, replace=False).tolist())
            for q in range(40)]
    truth = expected(base, rows)
    assert answers(model, spark, rows, "local") == truth
    assert answers(model, spark, rows, "partition") == truth


def test_rows_differing_only_in_allowed_ids_or_own_id_get_their_own_answers(spark, model, base):
    vector = base[0].tolist()
    rows = [(0, None, vector, []), (1, None, vector, None), (2, 7, vector, [3, 4]),
            (3, None, vector, [3, 4, 7]), (4, None, vector, [None]), (5, None, vector, [3])]
    for exclude_self in (False, True):
        truth = expected(base, rows, exclude_self)
        assert truth[0] == [] and len(truth[1]) == K
        for strategy in ("local", "partition"):
            assert answers(model, spark, rows, strategy, exclude_self) == truth, strategy


ids = st.one_of(st.none(), st.integers(0, ROWS + 10))  # nulls and ids the index lacks
query_rows = st.lists(st.tuples(
    st.integers(0, 7),  # few distinct vectors: rows share them
    st.one_of(st.none(), st.integers(0, 9)),  # own id (for excludeSelf)
    st.one_of(st.none(), st.lists(ids, max_size=3),  # null, [], [null], ...
              st.lists(ids, min_size=10, max_size=40).map(lambda a: a + a[::3])),  # repeats
), min_size=30, max_size=60)


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=query_rows, exclude_self=st.booleans())
def test_both_strategies_match_exact_search_on_random_subsets(spark, model, base, drawn,
                                                              exclude_self):
    rows = [(qid, own, base[v].tolist(), allowed)
            for qid, (v, own, allowed) in enumerate(drawn)]
    truth = expected(base, rows, exclude_self)
    for strategy in ("local", "partition"):
        assert answers(model, spark, rows, strategy, exclude_self) == truth, strategy


def ten_row_partition() -> tuple[LoadedPartition, np.ndarray]:
    context = PartitionContext(get_metric("l2"), DIM, {"hnswM": 16, "efConstruction": 100})
    vectors = np.random.default_rng(0).normal(size=(10, DIM)).astype(np.float32)
    index = REGISTRY["hnsw"].build(vectors, context, 0, 1)
    return LoadedPartition(index, pa.array(np.arange(100, 110))), vectors


def search_plan(k: int) -> SearchPlan:
    return SearchPlan(IndexHandle("unused", 1, ""), "long", DIM, "vector", "neighbors", k, 1,
                      0.0, SearchKnobs(), False, "allowed", False, "id", "partition", "task", 1)


def test_a_large_k_allocates_no_more_than_the_partition_holds():
    part, vectors = ten_row_partition()
    queries, knobs = np.repeat(vectors, 20, axis=0), REGISTRY["hnsw"].search_knobs({"efSearch": 64})
    labels, dists = part.search(queries, 50_000, knobs)
    assert labels.shape == dists.shape == (200, 10)
    assert sorted(labels[0]) == list(range(10))
    assert part.search_subset(queries[0], np.array([1, 2, 3]), 50_000, knobs)[0].shape == (1, 3)
    allowed = pa.array([None, [100, 103, 109]] * 100, pa.list_(pa.int64()))
    group = pa.RecordBatch.from_arrays(
        [packed_rows(queries), allowed, pa.nulls(200, pa.int64())], [QVEC, ALLOWED, SELF])
    tracemalloc.start()
    try:
        cids, _ = candidate_lists(part, search_plan(50_000), group, knobs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ids = unpacked_lists(cids, pa.int64()).to_pylist()
    assert [len(found) for found in ids] == [10, 3] * 100
    assert peak < 8 << 20, f"{peak / 1e6:.0f} MB for 200 queries of a 10-row partition"


def test_k_above_the_index_size_gives_every_vector_in_both_strategies(spark, model, base):
    rows = [(q, None, base[q].tolist(), None) for q in range(3)] + [(3, None, base[3].tolist(),
                                                                      [5, 900, 1400, 9999])]
    large = model.copy().setK(2000).setEfSearch(2000)
    truth = {qid: exact_answer(base, vector, allowed, own, False, k=2000)
             for qid, own, vector, allowed in rows}
    assert [len(truth[q]) for q in range(4)] == [ROWS, ROWS, ROWS, 3]
    for strategy in ("local", "partition"):
        assert answers(large, spark, rows, strategy) == truth, strategy
