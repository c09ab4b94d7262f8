"""Calibrated search defaults: ``fit`` tunes numProbes / efSearch to ``targetRecall``
on held-out indexed rows, and the recall holds on queries it never saw.

Every recall here is measured on queries drawn apart from the index (another sample
of the same distribution), so they are disjoint from the calibration sample, which
is made of indexed rows.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import neighbor_ids, vectors_frame

from sparkann import ANNIndex, ANNIndexModel, exact

K = 10
TARGET = 0.95


def recall_on(model, spark, queries: np.ndarray, base: np.ndarray, metric: str) -> float:
    truth = exact.knn(base, queries, K, metric)[0]
    found = neighbor_ids(model.transform(vectors_frame(spark, queries, id_name="qid"))
                         .collect(), key="qid")
    return exact.recall_at_k(found, truth, K)


def isotropic_unit(rows: int, dim: int, seed: int) -> np.ndarray:
    """High intrinsic dimension: no clusters, no low-rank structure."""
    v = np.random.default_rng(seed).standard_normal((rows, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def skewed_norms(rows: int, dim: int, seed: int) -> np.ndarray:
    """Directions in a few broad groups, norms spread over two orders of magnitude."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((8, dim))
    v = centres[rng.integers(0, 8, rows)] + 1.5 * rng.standard_normal((rows, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (v * rng.lognormal(0.0, 1.0, (rows, 1))).astype(np.float32)


HARD_CASES = {
    "cosine-high-intrinsic-dimension": ("cosine", isotropic_unit, 6000, 48),
    "ip-skewed-norms": ("ip", skewed_norms, 6000, 32),
}


@pytest.mark.parametrize("case", sorted(HARD_CASES))
def test_calibrated_defaults_reach_the_target_where_fixed_ones_fall_short(spark, case):
    metric, make, rows, dim = HARD_CASES[case]
    base, queries = make(rows, dim, seed=1), make(400, dim, seed=2)
    items = vectors_frame(spark, base)
    options = dict(metric=metric, numPartitions=16, seed=5, k=K)
    fixed = ANNIndex(targetRecall=0, **options).fit(items)
    calibrated = ANNIndex(targetRecall=TARGET, **options).fit(items)
    fixed_recall = recall_on(fixed, spark, queries, base, metric)
    calibrated_recall = recall_on(calibrated, spark, queries, base, metric)
    report = calibrated.summary()["calibration"]
    assert fixed_recall < TARGET, f"the fixed defaults already reach {fixed_recall}"
    assert report["reached"] and report["recall"] >= TARGET, report
    assert calibrated_recall >= TARGET, (
        f"{case}: calibrated {calibrated.searchSettings()} gives {calibrated_recall:.4f} on "
        f"unseen queries (fixed {fixed.searchSettings()}: {fixed_recall:.4f}); report {report}")


@pytest.fixture(scope="module")
def clustered_case(spark):
    from sparkann import datasets

    base = datasets.clustered(5000, 24, seed=21)
    queries = datasets.clustered(300, 24, seed=21, sample_seed=22)
    return base, queries, vectors_frame(spark, base)


def test_target_recall_zero_keeps_the_fixed_defaults(spark, clustered_case):
    _, _, items = clustered_case
    model = ANNIndex(targetRecall=0, numPartitions=9, k=K, seed=1).fit(items)
    assert not model.summary()["calibration"]
    settings = model.searchSettings()
    assert settings["numProbes"] == 3 and settings["efSearch"] == 64, settings
    stages = model.summary()["buildSeconds"]
    assert "calibrate" not in stages and "plan calibration" not in stages, stages
    assert not stages.get("task seconds: calibration searches"), stages


def test_calibrate_without_a_query_sample_tunes_on_indexed_rows(spark, clustered_case):
    base, queries, items = clustered_case
    model = ANNIndex(targetRecall=0, numPartitions=9, k=K, seed=1).fit(items)
    tuned = model.calibrate(TARGET)  # no queries: a sample of the indexed rows
    report = tuned.summary()["calibration"]
    assert tuned.manifest.version == model.manifest.version + 1
    assert report["sampleSource"] == "indexed rows" and report["reached"], report
    assert report["recall"] >= TARGET, report
    assert tuned.searchSettings()["numProbes"] == report["numProbes"]
    assert recall_on(tuned, spark, queries, base, "l2") >= TARGET
    assert model.searchSettings()["numProbes"] == 3  # the model called on is unchanged


def test_an_unreachable_target_warns_and_keeps_the_best_setting(spark, clustered_case, caplog):
    base, queries, items = clustered_case
    with caplog.at_level(logging.WARNING, logger="sparkann"):
        model = ANNIndex(indexType="pq", pqSubvectors=2, pqBits=4, numPartitions=4, k=K,
                         targetRecall=0.99, seed=1).fit(items)  # 1 byte per vector
    report = model.summary()["calibration"]
    assert not report["reached"] and report["recall"] < 0.99, report
    assert any("no search setting reaches recall@10 0.990" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    best = max(report_trials(model), key=lambda t: t["recall"])
    assert report["recall"] == pytest.approx(best["recall"])
    assert 0 < recall_on(model, spark, queries, base, "l2") < 0.99  # usable, not an error


def report_trials(model):
    return model.manifest.calibration["trials"]


def test_calibrate_with_a_query_sample_publishes_a_tuned_version(spark, tmp_path):
    # queries unlike the indexed rows: the same mixture shifted off its subspace
    from sparkann import datasets

    base = datasets.clustered(5000, 24, seed=31)
    shift = np.random.default_rng(3).standard_normal(24).astype(np.float32)
    sample = datasets.clustered(500, 24, seed=31, sample_seed=32) + shift
    unseen = datasets.clustered(300, 24, seed=31, sample_seed=33) + shift
    model = ANNIndex(indexPath=str(tmp_path / "index"), numPartitions=12, k=K, seed=2,
                     targetRecall=0).fit(vectors_frame(spark, base))
    tuned = model.calibrate(targetRecall=TARGET, queries=vectors_frame(spark, sample))
    report = tuned.summary()["calibration"]
    assert tuned.manifest.version == model.manifest.version + 1
    assert report["sampleSource"] == "queries" and report["sampleQueries"] == 500, report
    assert report["reached"], report
    assert recall_on(tuned, spark, unseen, base, "l2") >= TARGET
    reloaded = ANNIndexModel.load(str(tmp_path / "index"))
    assert reloaded.searchSettings() == tuned.searchSettings()
    assert ANNIndexModel.load(str(tmp_path / "index"), version=1).searchSettings() == \
        model.searchSettings()


def test_calibrated_settings_survive_save_and_load_and_yield_to_user_values(
        spark, clustered_case, tmp_path):
    _, _, items = clustered_case
    model = ANNIndex(numPartitions=9, k=K, seed=1).fit(items)
    calibrated = model.searchSettings()
    assert model.summary()["calibration"]["reached"]
    model.save(str(tmp_path / "saved"))
    loaded = ANNIndexModel.load(str(tmp_path / "saved"))
    assert loaded.searchSettings() == calibrated
    assert not loaded.isSet(loaded.efSearch)  # a calibrated default, not a user value
    pinned = ANNIndex(numPartitions=9, k=K, seed=1, efSearch=200).fit(items)
    assert pinned.searchSettings()["efSearch"] == 200  # calibration never overrides the user


def test_calibration_chooses_probe_epsilon_unless_the_user_set_it(spark, clustered_case):
    base, queries, items = clustered_case
    model = ANNIndex(numPartitions=9, k=K, seed=1).fit(items)
    report = model.summary()["calibration"]
    trials = report_trials(model)
    tried = {t["probeEpsilon"] for t in trials if t["numProbes"] > 1}
    assert tried == {0.0, 0.02, 0.05, 0.1, 0.2}, tried
    assert {t["probeEpsilon"] for t in trials if t["numProbes"] == 1} == {0.0}
    chosen = [t for t in trials if (t["numProbes"], t["probeEpsilon"], t["efSearch"]) == (
        report["numProbes"], report["probeEpsilon"], report["efSearch"])]
    assert len(chosen) == 1 and report["reached"], report
    assert all(t["cost"] >= chosen[0]["cost"] for t in trials
               if t["recall"] >= chosen[0]["recall"]
               and t["hardRecall"] >= chosen[0]["hardRecall"]), chosen  # nothing as good is cheaper
    assert report["hardRecall"] >= report["hardTarget"] > TARGET, report
    settings = model.searchSettings()
    assert settings["probeEpsilon"] == report["probeEpsilon"], settings
    assert recall_on(model, spark, queries, base, "l2") >= TARGET
    # an epsilon of the user's own is the only one tried, and it stays
    user = ANNIndex(numPartitions=9, k=K, seed=1, probeEpsilon=0.3).fit(items)
    assert {t["probeEpsilon"] for t in report_trials(user)} == {0.3}
    assert user.searchSettings()["probeEpsilon"] == 0.3


def test_a_first_round_that_leaves_the_choice_open_searches_the_rest(
        spark, clustered_case, monkeypatch):
    """Build tasks search only the ladder's cheapest settings; when those cannot decide,
    the rest is searched on the built partitions (the held-out rows hidden): the same
    settings are measured as when the build tasks search the whole ladder, and the
    choice holds on unseen queries."""
    from sparkann import calibrate, tuning

    base, queries, items = clustered_case
    searched_after = []
    search_rest = calibrate.search_rest
    monkeypatch.setattr(calibrate, "search_rest",
                        lambda *a: searched_after.append(1) or search_rest(*a))

    def fit(first_round_cost):
        monkeypatch.setattr(tuning, "FIRST_ROUND_COST", first_round_cost)
        return ANNIndex(numPartitions=9, k=K, seed=1, targetRecall=0.99).fit(items)

    whole = fit(float("inf"))  # every setting in the build tasks
    assert not searched_after
    narrow = fit(1.0)  # only the cheapest: a 0.99 target is not settled by it
    assert searched_after == [1]

    def tried(model):
        return sorted(json.dumps({k: v for k, v in t.items() if "ecall" not in k},
                                 sort_keys=True) for t in report_trials(model))

    assert tried(narrow) == tried(whole)
    report = narrow.summary()["calibration"]
    assert report["reached"] and whole.summary()["calibration"]["reached"], report
    assert report["recall"] >= 0.99
    assert recall_on(narrow, spark, queries, base, "l2") >= 0.97
