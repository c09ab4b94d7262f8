"""ANNIndex / ANNIndexModel end to end on a local SparkSession."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import loaded_index, neighbor_ids, vectors_frame
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from sparkann import ANNIndex, ANNIndexModel, datasets, exact
from sparkann.evaluate import exact_neighbors, recall_at_k


def _normalized(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _truth(base, queries, k, metric):
    if metric == "cosine":
        base, queries = _normalized(base), _normalized(queries)
    return exact.knn(base, queries, k, metric)


@pytest.fixture(scope="module")
def frames(spark, clustered_data):
    base, queries = clustered_data
    return vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_recall_against_exact_search(frames, clustered_data, metric):
    base, queries = clustered_data
    model = ANNIndex(metric=metric, numPartitions=8, seed=3).fit(frames[0])
    rows = model.transform(frames[1]).collect()
    found = neighbor_ids(rows, key="qid")
    truth, truth_d = _truth(base, queries, 10, metric)
    assert exact.recall_at_k(found, truth, 10) >= 0.95
    first = sorted(rows, key=lambda r: r.qid)[0].neighbors
    assert [n.distance for n in first] == sorted(n.distance for n in first)
    assert first[0].distance == pytest.approx(truth_d[0, 0], abs=1e-3)


def test_one_partition_and_many(frames, clustered_data):
    base, queries = clustered_data
    truth, _ = exact.knn(base, queries, 10)
    for parts in (1, 40):
        model = ANNIndex(numPartitions=parts).fit(frames[0])
        assert model.summary()["numPartitions"] == parts
        found = neighbor_ids(model.transform(frames[1]).collect(), key="qid")
        assert exact.recall_at_k(found, truth, 10) >= 0.95, parts


def test_k_larger_than_any_partition(frames, clustered_data):
    base, queries = clustered_data
    model = ANNIndex(numPartitions=40, k=400, targetRecall=0).fit(frames[0])
    assert max(model.summary()["partitionSizes"]) < 400
    rows = model.setNumProbes(1).transform(frames[1].limit(20)).collect()
    for row in rows:
        ids = [n.id for n in row.neighbors]
        assert len(ids) == 400 and len(set(ids)) == 400


def test_k_larger_than_the_index_returns_every_vector(spark):
    base = datasets.clustered(30, 8, seed=1)
    model = ANNIndex(numPartitions=3, k=50, targetRecall=0).fit(vectors_frame(spark, base))
    rows = model.transform(vectors_frame(spark, base[:3])).collect()
    assert all(sorted(n.id for n in r.neighbors) == list(range(30)) for r in rows)


def test_neighbours_across_partition_borders(spark):
    # Two tight clusters; queries halfway between them have neighbours in both.
    rng = np.random.default_rng(0)
    left = rng.normal([-1.0, 0.0], 0.3, size=(2000, 2))
    right = rng.normal([1.0, 0.0], 0.3, size=(2000, 2))
    base = np.vstack([left, right]).astype(np.float32)
    queries = np.column_stack([np.zeros(50), np.linspace(-0.5, 0.5, 50)]).astype(np.float32)
    model = ANNIndex(numPartitions=2, numProbes=2, targetRecall=0).fit(
        vectors_frame(spark, base))
    query_frame = vectors_frame(spark, queries, id_name="qid")
    found = neighbor_ids(model.transform(query_frame).collect(), "qid")
    truth, _ = exact.knn(base, queries, 10)
    assert exact.recall_at_k(found, truth, 10) >= 0.99
    sides = np.unique(found < 2000)
    assert len(sides) == 2  # answers come from both partitions


def test_save_load_round_trip_gives_identical_answers(frames, tmp_path):
    model = ANNIndex(numPartitions=4, k=7, targetRecall=0).fit(frames[0]).setEfSearch(80)
    before = model.transform(frames[1]).orderBy("qid").collect()
    path = str(tmp_path / "index")
    model.save(path)
    loaded = ANNIndexModel.load(path)
    assert loaded.getK() == 7 and loaded.getEfSearch() == 80
    after = loaded.transform(frames[1]).orderBy("qid").collect()
    assert [r.neighbors for r in after] == [r.neighbors for r in before]
    assert loaded.summary()["numVectors"] == 6000


def test_overwrite_publishes_a_new_version_and_keeps_the_old(frames, tmp_path):
    path = str(tmp_path / "index")
    model = ANNIndex(numPartitions=2, targetRecall=0).fit(frames[0])
    model.save(path)
    with pytest.raises(FileExistsError, match="overwrite"):
        model.save(path)
    model.setK(3).write().overwrite().save(path)
    assert ANNIndexModel.load(path).getK() == 3
    assert ANNIndexModel.load(path, version=1).getK() == 10


def test_vector_udt_double_arrays_and_string_ids(spark, clustered_data):
    base, queries = clustered_data[0][:1500], clustered_data[1][:30]
    truth, _ = exact.knn(base, queries, 5)
    udt = spark.createDataFrame(
        [(f"item-{i}", Vectors.dense(v.tolist())) for i, v in enumerate(base)], ["key", "features"]
    )
    doubles = vectors_frame(spark, queries, id_name="qid", vector_type=pa.float64())
    model = ANNIndex(vectorCol="features", idCol="key", numPartitions=3, k=5).fit(udt)
    rows = model.setK(5).transform(doubles.withColumnRenamed("vector", "features")).collect()
    found = [[int(n.id.split("-")[1]) for n in r.neighbors]
             for r in sorted(rows, key=lambda r: r.qid)]
    assert exact.recall_at_k(np.array(found), truth, 5) >= 0.95


def test_query_columns_are_kept(frames):
    queries = frames[1].withColumn("label", F.concat(F.lit("q"), F.col("qid").cast("string")))
    model = ANNIndex(numPartitions=2, neighborsCol="nn", targetRecall=0).fit(frames[0])
    out = model.transform(queries)
    assert out.columns == ["qid", "vector", "label", "nn"]
    assert out.count() == 200
    schema = out.schema["nn"].dataType.elementType
    assert [f.name for f in schema.fields] == ["id", "distance"]


@pytest.mark.parametrize("strategy", ["local", "partition"])
def test_both_search_strategies_reach_the_same_recall(frames, clustered_data, strategy):
    base, queries = clustered_data
    model = ANNIndex(numPartitions=6, searchStrategy=strategy).fit(frames[0])
    found = neighbor_ids(model.transform(frames[1]).collect(), key="qid")
    truth, _ = exact.knn(base, queries, 10)
    assert exact.recall_at_k(found, truth, 10) >= 0.95


def test_payloads_read_in_tasks_or_through_a_join_give_the_same_answers(frames, spark):
    model = ANNIndex(numPartitions=6, searchStrategy="partition", targetRecall=0).fit(frames[0])
    answers = {}
    for mode in ("task", "join", "auto"):
        spark.conf.set("spark.sparkann.payloadReads", mode)
        try:
            out = model.transform(frames[1])
            plan = out._jdf.queryExecution().executedPlan().toString()
            answers[mode] = neighbor_ids(out.collect(), key="qid")
        finally:
            spark.conf.unset("spark.sparkann.payloadReads")
        # only the join path scans the index table's payloads with Spark
        assert ("payload" in plan) == (mode == "join"), mode
    np.testing.assert_array_equal(answers["task"], answers["join"])
    np.testing.assert_array_equal(answers["task"], answers["auto"])
    spark.conf.set("spark.sparkann.payloadReads", "sometimes")
    try:
        with pytest.raises(ValueError, match="spark.sparkann.payloadReads='sometimes'"):
            model.transform(frames[1])
    finally:
        spark.conf.unset("spark.sparkann.payloadReads")


def test_spark_exact_search_and_recall_helpers(frames, clustered_data):
    base, queries = clustered_data
    truth = exact_neighbors(frames[0], frames[1], k=10, block_rows=1000, query_block_rows=64)
    ids = neighbor_ids(truth.collect(), key="qid")
    np.testing.assert_array_equal(ids, exact.knn(base, queries, 10)[0])
    model = ANNIndex(numPartitions=8).fit(frames[0])
    assert recall_at_k(model.transform(frames[1]), truth, "qid", 10) >= 0.95


def test_search_tasks_hold_few_partitions_each():
    from sparkann.search.partition import search_tasks

    assert search_tasks(5, 10 << 20, 2 << 30, 2) == 5  # never more tasks than partitions
    assert search_tasks(1000, 10 << 20, 2 << 30, 2) == 8  # small index: four tasks per core
    assert search_tasks(1000, 100 << 30, 2 << 30, 2) == 100  # big one: a task's share fits


def test_probe_pruning_searches_fewer_partitions_at_the_same_recall(frames, clustered_data):
    base, queries = clustered_data
    model = ANNIndex(numPartitions=8, numProbes=4, targetRecall=0).fit(frames[0])
    truth, _ = exact.knn(base, queries, 10)
    full = neighbor_ids(model.transform(frames[1]).collect(), key="qid")
    pruned_model = model.copy({model.probeEpsilon: 0.3})
    pruned = neighbor_ids(pruned_model.transform(frames[1]).collect(), key="qid")
    assert exact.recall_at_k(pruned, truth, 10) >= exact.recall_at_k(full, truth, 10) - 0.01
    router = loaded_index(model).router
    vectors = queries.astype(np.float32)
    probed = len(router.route(vectors, 4, 10)[0])
    probed_pruned = len(router.route(vectors, 4, 10, 0.3)[0])
    assert probed_pruned < 0.75 * probed
    with pytest.raises(ValueError, match="probeEpsilon=-0.5 is out of range"):
        model.copy({model.probeEpsilon: -0.5})


def test_join_reads_keep_pq_re_ranking(frames, clustered_data, spark):
    base, queries = clustered_data
    model = ANNIndex(numPartitions=6, indexType="pq", pqSubvectors=8, rerankK=40,
                     targetRecall=0, numProbes=6, searchStrategy="partition").fit(frames[0])
    truth, _ = exact.knn(base, queries, 10)
    answers = {}
    for mode in ("task", "join"):
        spark.conf.set("spark.sparkann.payloadReads", mode)
        try:
            answers[mode] = neighbor_ids(model.transform(frames[1]).collect(), key="qid")
        finally:
            spark.conf.unset("spark.sparkann.payloadReads")
    without = neighbor_ids(model.copy().setRerankK(0).transform(frames[1]).collect(), key="qid")
    recalls = {mode: exact.recall_at_k(found, truth, 10) for mode, found in answers.items()}
    assert recalls["join"] == recalls["task"] > exact.recall_at_k(without, truth, 10) + 0.05
    np.testing.assert_array_equal(answers["task"], answers["join"])
