"""Queries unlike the indexed rows: the calibrated defaults keep the target, or the
search says the queries are harder than the calibration sample and a calibration on
them restores it. Queries come from the same mixture drawn wider (farther from every
centre and between centres), as rarer items of one embedding space are."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import vectors_frame

from sparkann import ANNIndex, datasets, exact
from sparkann.metrics import get_metric
from sparkann.search.drift import DRIFT_METRIC, drift_report

ROWS, DIM, K = 30_000, 32, 10
MIXTURE = dict(num_clusters=200, rank=16, seed=8)


def draw(rows, sample_seed, spread=0.7, noise=0.1):
    return datasets.clustered(rows, DIM, spread=spread, noise=noise, sample_seed=sample_seed,
                              **MIXTURE)


def shifted(rows, sample_seed):
    return draw(rows, sample_seed, spread=1.3, noise=0.3)


def recall_of(model, spark, queries, base, metric) -> float:
    rows = model.transform(vectors_frame(spark, queries)).select("id", "neighbors").collect()
    found = np.array([[n.id for n in r.neighbors] for r in sorted(rows, key=lambda r: r.id)])
    prepare = get_metric(metric).prepare
    truth, _ = exact.knn(prepare(base), prepare(queries), K, metric=metric)
    return exact.recall_at_k(found, truth, K)


def streamed_counts(spark, model, queries, tmp_path) -> dict:
    """The drift counts a stream of ``queries`` reports in its progress."""
    source = str(tmp_path / "queries")
    vectors_frame(spark, queries).write.parquet(source)
    stream = spark.readStream.schema(spark.read.parquet(source).schema).parquet(source)
    query = (model.transform(stream).writeStream.format("memory").queryName("drift_stream")
             .trigger(availableNow=True).start())
    try:
        query.awaitTermination(300)
        metrics = [p["observedMetrics"].get(DRIFT_METRIC) for p in query.recentProgress
                   if p.get("observedMetrics")]
    finally:
        query.stop()
    assert metrics, query.recentProgress
    return {name: sum(int(m[name]) for m in metrics if m)  # each micro-batch its own
            for name in ("queries", "hardQueries", "farQueries")}


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_shifted_queries_keep_the_target_or_are_reported(spark, metric, caplog, tmp_path):
    base = draw(ROWS, 1)
    if metric == "ip":  # skewed norms, as inner-product embeddings have
        base *= np.random.default_rng(2).lognormal(0, 0.3, (ROWS, 1)).astype(np.float32)
    model = ANNIndex(metric=metric, numPartitions=12, k=K, seed=3).fit(
        vectors_frame(spark, base))
    calibration = model.summary()["calibration"]
    assert calibration["reached"] and calibration["hardGap"] > 0, calibration
    typical = recall_of(model, spark, draw(1000, 5), base, metric)
    assert typical >= 0.95
    typical_report = model.searchReport()
    assert typical_report["queries"] == 1000 and not typical_report["harder"], typical_report
    shuffle_join = model.copy().setSearchStrategy("partition")
    shuffle_join.transform(vectors_frame(spark, draw(1000, 5))).collect()
    assert shuffle_join.searchReport() == typical_report  # the same counts in both strategies
    if metric == "l2":
        assert streamed_counts(spark, model, draw(1000, 5), tmp_path) == {
            "queries": 1000, "hardQueries": round(typical_report["hardShare"] * 1000),
            "farQueries": round(typical_report["farShare"] * 1000)}
    queries = shifted(1000, 6)
    with caplog.at_level(logging.WARNING, logger="sparkann"):
        defaults = recall_of(model, spark, queries, base, metric)
        report = model.searchReport()
        model.searchReport()  # asked again: no second warning for the same search
    warnings = [r for r in caplog.records if "calibrate(targetRecall, queries=...)" in r.message]
    assert report["queries"] == 1000
    assert report["hardShare"] > typical_report["hardShare"]  # nearer the borders
    assert len(warnings) == (1 if report["harder"] else 0)
    print(f"{metric}: calibration estimate {calibration['recall']:.3f}, typical {typical:.3f}, "
          f"shifted with defaults {defaults:.3f}, drift {report}")
    if defaults >= 0.95:
        return
    assert report["harder"], (defaults, report)
    tuned = model.calibrate(0.95, queries=vectors_frame(spark, shifted(1000, 7)))
    assert recall_of(tuned, spark, queries, base, metric) >= 0.95


def test_drift_report_needs_a_clear_excess():
    sample = {"hardShare": 0.25, "sampleSource": "held-out indexed rows"}
    counts = lambda n, hard, far: {"queries": n, "hardQueries": hard, "farQueries": far}  # noqa: E731
    assert not drift_report(counts(1000, 270, 260), sample)["harder"]
    assert drift_report(counts(1000, 400, 200), sample)["harder"]
    assert drift_report(counts(1000, 240, 600), sample)["harder"]
    assert not drift_report(counts(20, 8, 8), sample)["harder"]  # too few to tell
    assert not drift_report(counts(0, None, None), sample)["harder"]
