"""Subset searches, query keys and large k: both strategies give exact search's answer.

The index is small and searched exhaustively (every partition probed, a beam wider
than a partition), so exact search on numpy knows every row's answer. It is built
with two id-location buckets, as an index of more than 2^20 rows would be.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import vectors_frame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkann import ANNIndex
from sparkann.build import LOCATION_BUCKETS_CONF

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
    st.one_of(st.none(), st.lists(ids, max_size=3), st.lists(ids, min_size=10, max_size=40)),
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
