"""Recall with default settings on the shared real datasets: run when the data folder
(``$SPARKANN_DATA``, else ``../shared/data`` beside the checkout) holds them, else
skipped with the reason printed in the test summary. The default tier indexes the
first 15,000 Fashion-MNIST rows against 500 of its queries; the heavy tier all
60,000 against all 10,000."""

from __future__ import annotations

import time

import pytest
from conftest import neighbor_ids, shared_dataset, vectors_frame

from sparkann import ANNIndex, exact


def _default_recall(spark, data, truth):
    base = vectors_frame(spark, data["base"])
    queries = vectors_frame(spark, data["queries"], id_name="qid")
    start = time.perf_counter()
    model = ANNIndex().fit(base)
    built = time.perf_counter() - start
    start = time.perf_counter()
    found = neighbor_ids(model.transform(queries).collect(), key="qid")
    searched = time.perf_counter() - start
    recall = exact.recall_at_k(found, truth, 10)
    print(f"recall@10={recall:.4f} build={built:.1f}s search={searched:.1f}s")
    return recall


def test_sift10k_default_recall(spark):
    data = shared_dataset("sift10k")
    assert _default_recall(spark, data, data["groundtruth"][:, :10]) >= 0.95


@pytest.mark.parametrize("size", [
    (15_000, 500), pytest.param(None, marks=pytest.mark.heavy, id="full")])
def test_fashion_mnist_default_recall(spark, size):
    data = shared_dataset("fashion-mnist")
    if size is not None:
        data = {"base": data["base"][:size[0]], "queries": data["queries"][:size[1]]}
    truth, _ = exact.knn(data["base"], data["queries"], 10)
    assert _default_recall(spark, data, truth) >= 0.95
