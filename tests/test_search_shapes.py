"""Every row gets its own answer, whatever Spark does to the query DataFrame.

Query DataFrames come out of shuffles (repartition, groupBy, joins, unions),
random filters and streams; each strategy must answer each row from that
row's own vector. The queries are indexed vectors, so exact search knows each
row's answer.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from conftest import job_group, vectors_frame
from pyspark.sql import functions as F

from sparkann import ANNIndex, datasets, exact
from sparkann.metrics import get_metric
from sparkann.testing import LOAD_LOG_CONF, read_load_log

ROWS, DIM = 4000, 16
SHAPES = ("repartition", "groupby", "join", "union", "random")


@pytest.fixture(scope="module")
def vectors():
    return datasets.clustered(ROWS, DIM, num_clusters=24, seed=11)


@pytest.fixture(scope="module")
def items(spark, vectors):
    return vectors_frame(spark, vectors)


@pytest.fixture(scope="module")
def models(items):
    return {metric: ANNIndex(metric=metric, numPartitions=8, seed=3, targetRecall=0,
                             numProbes=3).fit(items)
            for metric in ("l2", "ip", "cosine")}


def shaped(items, spark, shape):
    """The same rows as ``items``, out of a shuffle, a union, a random filter..."""
    if shape == "repartition":
        return items.repartition(7)
    if shape == "groupby":
        return items.groupBy("id").agg(F.first("vector").alias("vector"))
    if shape == "join":
        labels = spark.range(ROWS).select(F.col("id"), (F.col("id") % 5).alias("label"))
        return items.join(labels.repartition(3), "id")
    if shape == "union":
        return items.where("id % 2 = 0").unionByName(items.where("id % 2 = 1").repartition(3))
    if shape == "random":
        return items.repartition(5).where(F.rand(7) < 0.6)
    raise AssertionError(shape)


def exact_ids(vectors, metric, rows, k):
    prepared = get_metric(metric).prepare(vectors)
    return exact.knn(prepared, prepared[rows], k, metric)[0]


def check_answers(collected, vectors, metric, k=10):
    """Every row's answer is its own: recall against exact search, own id first."""
    rows = sorted(collected, key=lambda r: r.id)
    ids = np.array([r.id for r in rows])
    found = np.array([[n.id for n in r.neighbors] for r in rows])
    truth = exact_ids(vectors, metric, ids, k)
    assert exact.recall_at_k(found, truth, k) >= 0.95
    # a row given another row's answer shares nothing with its own exact answer
    own = np.array([len(np.intersect1d(f, t)) for f, t in zip(found, truth)])
    assert (own > 0).mean() >= 0.995, f"{(own == 0).sum()} rows got another row's answer"
    if metric != "ip":  # an indexed vector is its own nearest neighbour (not so for ip)
        assert (found[:, 0] == ids).mean() >= 0.99
    return dict(zip(ids.tolist(), found.tolist()))


@pytest.mark.parametrize("strategy", ["local", "partition"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_shuffled_query_frames_get_their_own_answers(spark, items, vectors, models, metric,
                                                     strategy):
    """Every shape with l2; the other metrics differ only in how vectors are prepared
    and compared, so two shapes (a shuffle join and a random filter) cover them."""
    model = models[metric].copy().setSearchStrategy(strategy)
    for shape in SHAPES if metric == "l2" else ("join", "random"):
        queries = shaped(items, spark, shape)
        collected = model.transform(queries).collect()
        if shape != "random":
            assert len(collected) == ROWS, shape
        check_answers(collected, vectors, metric)


def test_duplicate_query_rows_each_get_the_answer(spark, items, vectors, models):
    doubled = items.limit(200).unionByName(items.limit(200)).repartition(4)
    for strategy in ("local", "partition"):
        rows = models["l2"].copy().setSearchStrategy(strategy).transform(doubled).collect()
        assert len(rows) == 400
        answers = {}
        for row in rows:
            answer = [n.id for n in row.neighbors]
            assert len(answer) == 10 and len(set(answer)) == 10
            assert answers.setdefault(row.id, answer) == answer


def test_transform_runs_no_spark_job(spark, items, models):
    with job_group(spark, "sparkann-lazy") as jobs:
        for strategy in ("local", "partition"):
            models["l2"].copy().setSearchStrategy(strategy).transform(items.repartition(3))
        assert jobs() == []


def test_strategy_follows_the_param_then_the_spark_setting(spark, items, models):
    def plan(model):
        return model.transform(items)._jdf.queryExecution().executedPlan().toString()

    model = models["l2"].copy()
    assert "direct_shuffle_partition_id" not in plan(model)  # a small index: query-local
    spark.conf.set("spark.sparkann.searchStrategy", "partition")
    try:
        assert "direct_shuffle_partition_id" in plan(model)
        assert "direct_shuffle_partition_id" not in plan(model.copy().setSearchStrategy("local"))
    finally:
        spark.conf.unset("spark.sparkann.searchStrategy")
    spark.conf.set("spark.sparkann.searchCacheBytes", "1000")  # the index does not fit
    try:
        assert "direct_shuffle_partition_id" in plan(model)
    finally:
        spark.conf.unset("spark.sparkann.searchCacheBytes")


def test_partition_side_loads_each_partition_once_per_search(spark, items, tmp_path):
    model = ANNIndex(numPartitions=40, seed=2, targetRecall=0, numProbes=3).fit(items)
    log_dir = str(tmp_path / "loads")
    spark.conf.set(LOAD_LOG_CONF, log_dir)
    spark.conf.set("spark.sparkann.searchCacheBytes", str(64 << 10))  # about two partitions
    try:
        searched = model.copy().setSearchStrategy("partition").transform(items.repartition(6))
        assert searched.count() == ROWS
    finally:
        spark.conf.unset(LOAD_LOG_CONF)
        spark.conf.unset("spark.sparkann.searchCacheBytes")
    loads = read_load_log(log_dir)
    per_partition = {}
    for line in loads:
        key = (line["executor"], line["partition"])
        per_partition[key] = per_partition.get(key, 0) + 1
    assert len({p for _, p in per_partition}) >= 30  # the fault would show: most were searched
    assert max(per_partition.values()) == 1, per_partition


def batch_and_streamed(spark, model, source, schema, tmp_path) -> tuple[dict, dict]:
    """The model's answers (id -> neighbour ids) to the Parquet files in ``source``, read
    as a batch and as a stream of one file per trigger."""
    batch = {r.id: [n.id for n in r.neighbors]
             for r in model.transform(spark.read.parquet(source)).collect()}
    stream = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(source)
    out, checkpoint = str(tmp_path / "out"), str(tmp_path / "checkpoint")
    query = (model.transform(stream).writeStream.format("parquet")
             .option("checkpointLocation", checkpoint).trigger(availableNow=True).start(out))
    query.awaitTermination(600)
    assert query.exception() is None
    streamed = {r.id: [n.id for n in r.neighbors] for r in spark.read.parquet(out).collect()}
    return batch, streamed


@pytest.mark.parametrize("strategy", ["local", "partition"])
def test_streaming_queries_get_the_batch_answers(spark, items, vectors, models, tmp_path,
                                                 strategy):
    source = str(tmp_path / "queries")
    for part in range(3):  # three files arrive in the source folder
        items.where(F.col("id") % 3 == part).limit(300).write.mode("append").parquet(source)
    model = models["cosine"].copy().setSearchStrategy(strategy)
    batch, streamed = batch_and_streamed(spark, model, source, items.schema, tmp_path)
    assert streamed == batch and len(streamed) == 900


@pytest.mark.parametrize("strategy", ["local", "partition"])
def test_streaming_queries_with_allowed_ids(spark, items, models, tmp_path, strategy):
    """allowedIdsCol on a stream: a row with a subset is answered from it alone, a row
    without one from the whole index, and every row as in a batch search."""
    source = str(tmp_path / "queries")
    queries = items.where("id < 120").withColumn("allowed", F.when(
        F.col("id") % 2 == 0, F.array(F.col("id"), F.col("id") + 1000, F.col("id") + 2000)))
    for part in range(2):  # two files arrive in the source folder
        queries.where(F.col("id") % 4 < 2 * part + 2).where(
            F.col("id") % 4 >= 2 * part).write.mode("append").parquet(source)
    model = models["l2"].copy().setAllowedIdsCol("allowed").setSearchStrategy(strategy)
    batch, streamed = batch_and_streamed(spark, model, source, queries.schema, tmp_path)
    assert streamed == batch and len(streamed) == 120
    for i, found in streamed.items():
        if i % 2 == 0:
            assert sorted(found) == [i, i + 1000, i + 2000], (i, found)
        else:
            assert len(found) == 10 and len(set(found)) == 10, (i, found)
    plain = [i for i in streamed if i % 2]
    assert np.mean([streamed[i][0] == i for i in plain]) >= 0.95  # its own nearest


def test_streaming_with_a_processing_time_trigger(spark, items, models, tmp_path):
    source = str(tmp_path / "queries")
    items.limit(100).write.parquet(source)
    out, checkpoint = str(tmp_path / "out"), str(tmp_path / "checkpoint")
    stream = spark.readStream.schema(items.schema).parquet(source)
    query = (models["l2"].transform(stream).writeStream.format("parquet")
             .option("checkpointLocation", checkpoint).trigger(processingTime="1 second")
             .start(out))
    try:
        query.processAllAvailable()
        items.where("id >= 100").limit(50).write.mode("append").parquet(source)  # arrives later
        deadline = time.monotonic() + 300
        while (time.monotonic() < deadline and  # until a trigger has found the new file
               sum(p["numInputRows"] for p in query.recentProgress) < 150):
            time.sleep(0.05)
        query.processAllAvailable()
    finally:
        query.stop()
    rows = spark.read.parquet(out).collect()
    assert len(rows) == 150
    assert all(r.neighbors[0].id == r.id for r in rows)


def test_bad_query_in_a_stream_fails_the_query_with_the_column_named(spark, models, tmp_path):
    source = str(tmp_path / "queries")
    spark.createDataFrame([(1, [1.0] * DIM), (2, [float("nan")] * DIM)],
                          "id long, vector array<float>").write.parquet(source)
    stream = spark.readStream.schema("id long, vector array<float>").parquet(source)
    query = (models["l2"].transform(stream).writeStream.format("parquet")
             .option("checkpointLocation", str(tmp_path / "ck")).trigger(availableNow=True)
             .start(str(tmp_path / "out")))
    with pytest.raises(Exception, match=r"query column 'vector' holds a non-finite value"):
        query.awaitTermination(600)


def test_exact_neighbours_and_the_self_join_answer_shuffled_rows(spark, items, vectors, models):
    from sparkann.evaluate import exact_neighbors
    from sparkann.selfjoin import knn_graph

    for shape in ("repartition", "groupby", "join", "union"):
        queries = shaped(items, spark, shape).where("id < 600")
        rows = exact_neighbors(items, queries, k=10, block_rows=3000).collect()
        ids = np.array([r.id for r in rows])
        found = np.array([[n.id for n in r.neighbors] for r in rows])
        assert len(ids) == 600
        np.testing.assert_array_equal(found, exact_ids(vectors, "l2", ids, 10))
    # rows whose very content changes between evaluations (a random sample of a shuffle)
    # get a clear error from the exact search, never another row's answer
    jitter = F.udf(lambda v: [x + random.random() for x in v], "array<float>")
    changing = items.limit(300).withColumn("vector", jitter.asNondeterministic()("vector"))
    with pytest.raises(Exception, match="query DataFrame changed while Spark recomputed it"):
        exact_neighbors(items, changing, k=10, block_rows=3000).collect()
    edges = knn_graph(models["l2"].copy().setK(5), items.repartition(6)).toPandas()
    assert len(edges) == ROWS * 5 and (edges.id != edges.neighbor_id).all()
    truth = exact_ids(vectors, "l2", np.arange(ROWS), 6)[:, 1:]
    found = edges.sort_values(["id", "rank"]).neighbor_id.to_numpy().reshape(ROWS, 5)
    assert exact.recall_at_k(found, truth, 5) >= 0.95
