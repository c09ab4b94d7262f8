"""Sweeps, tuning, the evaluation report and the ``sparkann evaluate`` job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import vectors_frame

from sparkann import ANNIndex, cli, datasets, vectorio
from sparkann.evaluate import QuerySample, Trial, cheapest, plot_sweep, sweep, tune

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hard_data():
    """Broad clusters over 16 partitions: recall clearly grows with numProbes."""
    shape = dict(num_clusters=8, rank=32, seed=0)
    return (datasets.clustered(4000, 32, **shape),
            datasets.clustered(120, 32, **shape, sample_seed=1))


@pytest.fixture(scope="module")
def setup(spark, hard_data):
    base, queries = hard_data
    items, query_frame = vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")
    model = ANNIndex(numPartitions=16, k=10, seed=1).fit(items)
    sample = QuerySample(model, items, query_frame, k=10, sample=80, seed=3)
    return model, items, query_frame, sample


def test_query_sample_is_fixed_and_exact(setup, hard_data):
    from sparkann import exact

    model, items, queries, sample = setup
    assert sample.size == 80 and sample.queries.count() == 80
    again = QuerySample(model, items, queries, k=10, sample=80, seed=3)
    assert again.truth == sample.truth  # same seed, same queries
    vectors = sample.queries.orderBy("__sparkann_key").toArrow().column("vector").to_pylist()
    truth, _ = exact.knn(hard_data[0], vectors, 10)
    assert [list(row) for row in truth] == sample.truth


def test_sweep_recall_grows_with_probes_and_tune_picks_the_cheapest(setup):
    model, items, queries, sample = setup
    trials = sweep(model, items, queries, probes=[1, 2, 4, 32], ef=[5, 10, 40],
                   evaluation=sample)  # 32 > 16 partitions and ef 5 < k are skipped
    assert sorted((t.num_probes, t.ef_search) for t in trials) == [
        (1, 10), (1, 40), (2, 10), (2, 40), (4, 10), (4, 40)]
    assert [t.cost for t in trials] == sorted(t.cost for t in trials)  # cheapest first
    assert trials == sorted(trials, key=lambda t: (t.cost, t.num_probes))
    by = {(t.num_probes, t.ef_search): t.recall for t in trials}
    cost = {(t.num_probes, t.ef_search): t.cost for t in trials}
    assert cost[(1, 10)] < cost[(2, 10)] < cost[(4, 10)] and cost[(4, 10)] < cost[(4, 40)]
    assert cost[(2, 40)] == pytest.approx(4 * cost[(2, 10)], rel=1e-3)  # linear in efSearch
    assert by[(1, 40)] < by[(2, 40)] < by[(4, 40)]
    assert all(t.queries_per_second > 0 and t.seconds > 0 for t in trials)
    target = round((by[(2, 40)] + by[(4, 40)]) / 2, 4)
    expected = cheapest(trials, target)
    tuned = tune(model, items, queries, target, probes=[1, 2, 4], ef=[10, 40],
                 evaluation=sample)
    assert (tuned.num_probes, tuned.ef_search) == (expected.num_probes, expected.ef_search)
    assert tuned.recall >= target and len(tuned.trials) <= 6
    assert tuned.cost == expected.cost
    assert tuned.apply(model).getNumProbes() == tuned.num_probes
    assert tuned.params() == {"numProbes": tuned.num_probes, "efSearch": tuned.ef_search}


def test_tune_errors(setup):
    model, items, queries, sample = setup
    with pytest.raises(ValueError, match="no setting reaches recall@10 1.0"):
        tune(model, items, queries, 1.0, probes=[1], ef=[10], evaluation=sample)
    with pytest.raises(ValueError, match="target_recall"):
        tune(model, items, queries, 1.5, evaluation=sample)
    with pytest.raises(ValueError, match="no usable setting"):
        tune(model, items, queries, 0.5, probes=[99], evaluation=sample)


def test_tune_works_for_pq_on_its_rerank_ladder(spark, hard_data):
    base, queries = hard_data
    items, query_frame = vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")
    model = ANNIndex(indexType="pq", pqSubvectors=8, rerankK=20, numPartitions=4, k=10,
                     seed=1, targetRecall=0).fit(items)
    sample = QuerySample(model, items, query_frame, k=10, sample=40, seed=3)
    with pytest.raises(ValueError, match="ef=\\[16\\]: indexType='pq' has no efSearch"):
        tune(model, items, query_frame, 0.5, ef=[16], evaluation=sample)
    trials = sweep(model, items, query_frame, probes=[1, 4], evaluation=sample)
    assert {t.num_probes for t in trials} == {1, 4} and all(
        set(t.setting) == {"rerankK"} for t in trials)
    one = sorted((t for t in trials if t.num_probes == 1), key=lambda t: t.setting["rerankK"])
    assert [t.cost for t in one] == sorted(t.cost for t in one) and one[0].cost < one[-1].cost
    target = min(t.recall for t in trials if t.num_probes == 4)
    tuned = tune(model, items, query_frame, target, probes=[1, 4], evaluation=sample)
    expected = cheapest(trials, target)
    assert (tuned.num_probes, tuned.setting) == (expected.num_probes, expected.setting)
    assert tuned.apply(model).getRerankK() == tuned.setting["rerankK"]


def test_cheapest_prefers_least_work_then_fewer_probes():
    def trial(probes, ef, recall, cost):
        return Trial(probes, {"efSearch": ef}, recall, 1.0, 100.0, cost)

    trials = [trial(4, 16, 0.97, 64.0), trial(2, 32, 0.96, 64.0), trial(1, 128, 0.99, 128.0),
              trial(1, 16, 0.80, 16.0), trial(8, 16, 0.99, 60.0)]
    assert (cheapest(trials, 0.95).num_probes, cheapest(trials, 0.95).ef_search) == (8, 16)
    assert (cheapest(trials[:4], 0.95).num_probes, cheapest(trials[:4], 0.95).ef_search) == (
        2, 32)
    assert cheapest(trials, 0.999) is None


def test_plot_sweep_writes_a_png(tmp_path):
    trials = [Trial(p, {"efSearch": e}, min(1.0, 0.5 + 0.1 * p + e / 400), 1.0,
                    1000.0 / (p * e), float(p * e)) for p in (1, 2, 4) for e in (16, 64)]
    path = plot_sweep(trials, str(tmp_path / "chart.png"))
    assert Path(path).read_bytes()[:8] == PNG_MAGIC


def test_evaluate_command_writes_report_and_plot(spark, setup, hard_data, tmp_path, capsys):
    model, *_ = setup
    base, queries = hard_data
    index = str(tmp_path / "index")
    model.save(index)
    pq.write_table(vectorio.vectors_table(base), tmp_path / "base.parquet")
    pq.write_table(vectorio.vectors_table(queries), tmp_path / "queries.parquet")
    out = tmp_path / "report"
    code = cli.main(["evaluate", "--index", index, "--base", str(tmp_path / "base.parquet"),
                     "--queries", str(tmp_path / "queries.parquet"), "--out", str(out),
                     "--probes", "1,4", "--ef", "16", "--sample", "50", "--target-recall", "0.9",
                     "--log-level", "WARNING"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "report.json").read_text())
    assert report["sampleQueries"] == 50 and report["k"] == 10 and report["index"] == index
    assert [(t["numProbes"], t["efSearch"]) for t in report["trials"]] == [(1, 16), (4, 16)]
    assert report["cheapest"]["numProbes"] == 4 and report["summary"]["numPartitions"] == 16
    assert (out / "recall_vs_qps.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads(printed.strip().splitlines()[-1])["settings"] == 2


@pytest.mark.parametrize("argv, expected", [
    (["--probes", "1,x"], "comma-separated integers"),
    (["--ef", "0"], "positive integers"),
    (["--target-recall", "1.5"], "must be in (0, 1]"),
])
def test_evaluate_argument_errors(capsys, argv, expected):
    code = cli.main(["evaluate", "--index", "i", "--base", "b", "--queries", "q", "--out", "o",
                     *argv])
    assert code == 2 and expected in capsys.readouterr().err


def test_evaluate_job_is_the_cli():
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--help"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    assert done.returncode == 0 and "--target-recall" in done.stdout
