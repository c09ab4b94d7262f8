"""A saved model searches exactly like the fitted one: in a new process (the search
job through spark-submit), as a PipelineModel, and after setters on a loaded model.

The index is fitted with every setting left at its default (numPartitions included:
past 2 x 20,000 rows that builds several clusters), so the stored build values and the
calibrated search defaults are what a save has to carry."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_CONF, describe, last_json, spark_submit, vectors_frame
from pyspark.ml import PipelineModel

from sparkann import ANNIndex, ANNIndexModel, datasets, exact, vectorio
from sparkann.metrics import get_metric

ROWS, DIM = 45_000, 16


def ids_of(frame) -> list:
    return [[n.id for n in r.neighbors] for r in frame.select("id", "neighbors")
            .orderBy("id").collect()]


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    base = datasets.clustered(ROWS, DIM, seed=21)
    queries = datasets.clustered(300, DIM, seed=22)  # another generator: unlike the rows
    root = tmp_path_factory.mktemp("persist")
    vectorio.write_vectors_parquet(queries, str(root / "queries.parquet"))
    model = ANNIndex(metric="cosine").fit(vectors_frame(spark, base))
    model.write().overwrite().save(str(root / "model"))
    PipelineModel(stages=[model]).save(str(root / "pipeline"))
    frame = spark.read.parquet(str(root / "queries.parquet"))
    return model, base, queries, frame, root


def test_default_fit_builds_several_clusters_and_the_model_says_so(fitted):
    model = fitted[0]
    assert model.summary()["numPartitions"] >= 3
    assert model.getNumPartitions() == model.summary()["numPartitions"]
    assert not model.isSet(model.numPartitions)
    assert model.searchSettings()["numProbes"] >= 1


def test_the_search_job_in_a_new_process_searches_like_the_fitted_model(fitted):
    """jobs/search.py through spark-submit: its own driver JVM and Python load the saved
    index and search with the settings the fit stored."""
    model, _, _, frame, root = fitted
    (root / "job.conf").write_text(TEST_CONF)
    output = root / "neighbors.parquet"
    result = spark_submit("search.py", "--index", str(root / "model"), "--queries",
                          str(root / "queries.parquet"), "--output", str(output),
                          "--conf", str(root / "job.conf"), cwd=root)
    assert result.returncode == 0, describe(result)
    assert last_json(result.stdout)["settings"] == model.searchSettings()
    found = {r["id"]: [n["id"] for n in r["neighbors"]]
             for r in pq.read_table(output).to_pylist()}
    assert [found[i] for i in sorted(found)] == ids_of(model.transform(frame))


def test_a_loaded_model_and_pipeline_search_like_the_fitted_model(fitted):
    model, _, _, frame, root = fitted
    loaded = ANNIndexModel.load(str(root / "model"))
    stage = PipelineModel.load(str(root / "pipeline")).stages[-1]
    expected = ids_of(model.transform(frame))
    for other in (loaded, stage):
        assert other.searchSettings() == model.searchSettings()
        assert ({p.name for p in other.params if other.isSet(p)}
                == {p.name for p in model.params if model.isSet(p)})
        assert ids_of(other.transform(frame)) == expected
    assert ids_of(PipelineModel.load(str(root / "pipeline")).transform(frame)) == expected


def cosine_truth(base, queries, k=10):
    prepare = get_metric("cosine").prepare
    return exact.knn(prepare(base), prepare(queries), k, metric="cosine")[0]


def test_every_setter_changes_a_loaded_models_search(fitted):
    model, base, queries, frame, root = fitted
    loaded = ANNIndexModel.load(str(root / "model"))
    clusters = model.summary()["numPartitions"]
    assert loaded.searchSettings() == model.searchSettings()
    changes = {"numProbes": clusters, "efSearch": 200, "probeEpsilon": 0.7, "k": 3,
               "searchStrategy": "partition"}
    for name, value in changes.items():
        assert loaded.searchSettings()[name] != value, name
        getattr(loaded, "set" + name[0].upper() + name[1:])(value)
        assert loaded.searchSettings()[name] == value, name
    # all clusters and a wide beam: exact answers, in both strategies
    loaded.setK(10).setProbeEpsilon(0.0)
    truth = cosine_truth(base, queries)
    for strategy in ("partition", "local"):
        found = np.array(ids_of(loaded.setSearchStrategy(strategy).transform(frame)))
        assert exact.recall_at_k(found, truth, 10) >= 0.97, strategy


def test_user_settings_on_a_loaded_model_survive_the_next_save(fitted, tmp_path):
    model, _, _, frame, root = fitted
    loaded = ANNIndexModel.load(str(root / "model")).setEfSearch(150).setNumProbes(2)
    loaded.write().overwrite().save(str(tmp_path / "again"))
    again = ANNIndexModel.load(str(tmp_path / "again"))
    assert again.isSet(again.efSearch) and again.getEfSearch() == 150
    assert again.isSet(again.numProbes) and again.searchSettings()["numProbes"] == 2
    assert not again.isSet(again.probeEpsilon)  # still the calibrated default
    assert again.getProbeEpsilon() == model.getProbeEpsilon()
    assert again.summary()["numPartitions"] == model.summary()["numPartitions"]


def test_build_params_set_on_a_model_do_not_change_the_saved_index(fitted, tmp_path):
    model, _, _, frame, root = fitted
    changed = model.copy().setNumPartitions(2).setHnswM(4)
    changed.write().save(str(tmp_path / "copy"))
    loaded = ANNIndexModel.load(str(tmp_path / "copy"))
    assert loaded.summary()["numPartitions"] == model.summary()["numPartitions"]
    assert loaded.getHnswM() == 16
    assert ids_of(loaded.transform(frame)) == ids_of(model.transform(frame))
