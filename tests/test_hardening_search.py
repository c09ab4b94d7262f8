"""Subset searches, query keys and large k: both strategies give exact search's answer.

The index is small and searched exhaustively (every partition probed, a beam wider
than a partition), so exact search on numpy knows every row's answer. It is built
with two id-location buckets, as an index of more than 2^20 rows would be.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import vectors_frame

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
