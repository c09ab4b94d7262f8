"""The public API through a Spark Connect session, as a standalone driver.

pyspark switches a whole Python process to Spark Connect once a remote session
exists (``SPARK_CONNECT_MODE_ENABLED``), so these checks run in their own
process, started by ``test_connect.py`` against the server of the
``connect_server`` fixture::

    python tests/connect_checks.py sc://127.0.0.1:PORT results.json [CHECK ...]

Every check runs (a failure does not stop the others); ``results.json`` is
rewritten after each one with ``{name: {"ok": bool, "seconds": s, "error": text}}``.
Exit code 0 if all passed, 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from conftest import neighbor_ids, vectors_frame  # noqa: E402

from sparkann import ANNIndex, ANNIndexModel, datasets, exact  # noqa: E402

CHECKS: list = []


def check(fn):
    CHECKS.append(fn)
    return fn


class Context:
    """Data and a fitted model shared by the checks (built once, lazily)."""

    def __init__(self, spark, workdir: str):
        self.spark, self.workdir = spark, workdir
        self.base = datasets.clustered(4000, 16, seed=7)
        self.queries = datasets.clustered(150, 16, seed=7, sample_seed=99)
        self.items = vectors_frame(spark, self.base)
        self.query_frame = vectors_frame(spark, self.queries, id_name="qid")
        self.truth = exact.knn(self.base, self.queries, 10)
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = ANNIndex(numPartitions=4, seed=3).fit(self.items)
        return self._model

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)


class LogLines(logging.Handler):
    """Collects sparkann log messages."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextmanager
def sparkann_logs(spark, progress_seconds: str):
    """Collect sparkann's log lines with progress reports every ``progress_seconds``."""
    lines = LogLines()
    logging.getLogger("sparkann").addHandler(lines)
    spark.conf.set("spark.sparkann.progressSeconds", progress_seconds)
    try:
        yield lines
    finally:
        logging.getLogger("sparkann").removeHandler(lines)
        spark.conf.unset("spark.sparkann.progressSeconds")


def _raises(error, fn, match: str = ""):
    try:
        fn()
    except error as err:
        assert match in str(err), f"{type(err).__name__}: {err!r} does not mention {match!r}"
        return
    raise AssertionError(f"expected {error.__name__}")


@check
def fit_logs_stages_and_leaves_no_tags(ctx: Context):
    with sparkann_logs(ctx.spark, "0.5") as lines:
        model = ctx.model
    summary = model.summary()
    assert summary["numVectors"] == 4000 and summary["numPartitions"] == 4, summary
    assert "build partition indexes" in summary["buildSeconds"], summary["buildSeconds"]
    assert any(line.startswith("sparkann: build partition indexes: ") for line in lines.lines)
    assert any("indexing 4000 vectors of dimension 16" in line for line in lines.lines)
    assert not [t for t in ctx.spark.getTags() if t.startswith("sparkann")], ctx.spark.getTags()


@check
def job_labels_are_tags_under_connect(ctx: Context):
    from sparkann.observe import job_label

    with job_label(ctx.spark, "sparkann: outer"):
        with job_label(ctx.spark, "sparkann: inner"):
            assert {"sparkann: outer", "sparkann: inner"} <= ctx.spark.getTags()
            ctx.spark.range(10).count()
        assert ctx.spark.getTags() == {"sparkann: outer"}, ctx.spark.getTags()
    assert not ctx.spark.getTags()


@check
def long_stages_log_progress(ctx: Context):
    from conftest import ProgressSeen, held_until

    from sparkann.observe import StageTimer

    marker = ctx.path("progress-seen")  # the tasks run until a progress line is logged
    seen = ProgressSeen(marker)
    with sparkann_logs(ctx.spark, "0.2") as lines:
        logging.getLogger("sparkann").addHandler(seen)
        try:
            with StageTimer(ctx.spark)("slow stage"):
                ctx.spark.range(0, 8, 1, 4).mapInArrow(held_until(marker), "id long").collect()
        finally:
            logging.getLogger("sparkann").removeHandler(seen)
    progress = [line for line in lines.lines if "tasks done" in line]
    assert progress and progress[0].startswith("sparkann: slow stage: "), lines.lines


@check
def transform_finds_true_neighbours_and_keeps_columns(ctx: Context):
    from pyspark.sql import functions as F

    queries = ctx.query_frame.withColumn("label", F.concat(F.lit("q"), F.col("qid").cast("string")))
    out = ctx.model.transform(queries)
    assert out.columns == ["qid", "vector", "label", "neighbors"], out.columns
    rows = out.collect()
    found = neighbor_ids(rows, key="qid")
    assert exact.recall_at_k(found, ctx.truth[0], 10) >= 0.95
    first = sorted(rows, key=lambda r: r.qid)[0].neighbors
    assert [n.distance for n in first] == sorted(n.distance for n in first)
    assert abs(first[0].distance - ctx.truth[1][0, 0]) < 1e-3


@check
def cosine_ml_vectors_and_string_ids(ctx: Context):
    from pyspark.ml.linalg import Vectors

    base, queries = ctx.base[:1200], ctx.queries[:20]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    truth, _ = exact.knn(unit(base), unit(queries), 5, "cosine")
    items = ctx.spark.createDataFrame(
        [(f"item-{i}", Vectors.dense(v.tolist())) for i, v in enumerate(base)], ["key", "features"]
    )
    query_frame = ctx.spark.createDataFrame(
        [(i, Vectors.dense(v.tolist())) for i, v in enumerate(queries)], ["qid", "features"]
    )
    model = ANNIndex(vectorCol="features", idCol="key", metric="cosine", numPartitions=2,
                     k=5, targetRecall=0).fit(items)  # both partitions probed: exact
    rows = sorted(model.transform(query_frame).collect(), key=lambda r: r.qid)
    found = np.array([[int(n.id.split("-")[1]) for n in r.neighbors] for r in rows])
    assert exact.recall_at_k(found, truth, 5) >= 0.95


@check
def save_load_round_trip_and_versions(ctx: Context):
    path = ctx.path("index")
    model = ctx.model.copy().setK(7).setEfSearch(80)
    before = model.transform(ctx.query_frame).orderBy("qid").collect()
    model.save(path)
    _raises(FileExistsError, lambda: model.save(path), "overwrite")
    model.copy().setK(3).write().overwrite().save(path)
    latest, first = ANNIndexModel.load(path), ANNIndexModel.load(path, version=1)
    assert latest.getK() == 3 and latest.summary()["version"] == 2
    assert first.getK() == 7 and first.getEfSearch() == 80
    after = first.transform(ctx.query_frame).orderBy("qid").collect()
    assert [r.neighbors for r in after] == [r.neighbors for r in before]
    assert first.summary()["numVectors"] == 4000


@check
def errors_for_bad_params_and_input(ctx: Context):
    from pyspark.sql import functions as F

    from sparkann.storage import IndexFormatError

    _raises(ValueError, lambda: ANNIndex(metric="hamming"), "metric")
    narrow = ctx.model.copy().setK(10).setEfSearch(5)
    _raises(ValueError, lambda: narrow.transform(ctx.query_frame), "efSearch")
    assert ctx.model.copy().setNumProbes(99).searchSettings()["numProbes"] == 4  # clamped
    short = ctx.query_frame.withColumn("vector", F.slice("vector", 1, 3))
    _raises(Exception, lambda: ctx.model.transform(short).collect(), "dimension")
    _raises(IndexFormatError, lambda: ANNIndexModel.load(ctx.path("no-such-index")),
            "does not exist")
    empty = ctx.items.limit(0)
    _raises(ValueError, lambda: ANNIndex(numPartitions=2).fit(empty), "empty")
    nulls = ctx.items.withColumn("vector",
                                 F.when(F.col("id") == 5, None).otherwise(F.col("vector")))
    _raises(ValueError, lambda: ANNIndex(numPartitions=2).fit(nulls), "null")


@check
def shuffled_query_frames_in_both_strategies(ctx: Context):
    from pyspark.sql import functions as F

    items = ctx.items
    shapes = {
        "repartition": items.repartition(5),
        "groupby": items.groupBy("id").agg(F.first("vector").alias("vector")),
        "join": items.join(ctx.spark.range(4000).repartition(3), "id"),
        "union": items.where("id % 2 = 0").unionByName(items.where("id % 2 = 1").repartition(2)),
    }
    for strategy in ("local", "partition"):
        model = ctx.model.copy().setSearchStrategy(strategy).setK(3)
        for shape, frame in shapes.items():
            rows = model.transform(frame).collect()
            assert len(rows) == 4000, (strategy, shape)
            wrong = sum(1 for r in rows if r.neighbors[0].id != r.id)
            assert wrong <= 20, (strategy, shape, wrong)


@check
def calibrated_settings_survive_save_and_load(ctx: Context):
    model = ctx.model
    calibration = model.summary()["calibration"]
    assert calibration["reached"] and calibration["recall"] >= 0.95, calibration
    path = ctx.path("calibrated")
    model.save(path)
    loaded = ANNIndexModel.load(path)
    assert loaded.searchSettings() == model.searchSettings()
    assert not loaded.isSet(loaded.numProbes)  # a default the index chose
    searched = loaded.transform(ctx.query_frame)
    assert loaded.searchReport() is None  # no action has run this search yet
    found = neighbor_ids(searched.collect(), key="qid")
    assert exact.recall_at_k(found, ctx.truth[0], 10) >= 0.95
    drift = loaded.searchReport()  # the drift counts, observed through Connect
    assert drift["queries"] == len(found) and not drift["harder"], drift
    retuned = loaded.calibrate(0.99, queries=ctx.query_frame)
    assert retuned.summary()["calibration"]["sampleSource"] == "queries"
    assert retuned.summary()["version"] == loaded.summary()["version"] + 1


@check
def pipeline_model_round_trip(ctx: Context):
    from pyspark.ml import Pipeline, PipelineModel

    fitted = Pipeline(stages=[ANNIndex(k=3, numPartitions=2, seed=1, targetRecall=0)]).fit(
        ctx.items)
    before = fitted.transform(ctx.items.limit(20)).orderBy("id").collect()
    path = ctx.path("pipeline")
    fitted.save(path)
    after = PipelineModel.load(path).transform(ctx.items.limit(20)).orderBy("id").collect()
    assert [r.neighbors for r in after] == [r.neighbors for r in before]


@check
def living_index_through_connect(ctx: Context):
    from sparkann.storage import ConcurrentUpdateError

    model = ANNIndex(numPartitions=2, targetRecall=0, indexPath=ctx.path("living")).fit(
        vectors_frame(ctx.spark, ctx.base[:1000]))
    deleted = model.delete([1, 2, 3])
    added = deleted.add(vectors_frame(ctx.spark, ctx.base[[1, 2]], ids=np.array([1, 2])))
    assert added.summary()["numVectors"] == 999
    rows = added.setK(1).transform(vectors_frame(ctx.spark, ctx.base[:4])).collect()
    assert sorted(r.neighbors[0].id for r in rows if r.id != 3) == [0, 1, 2]
    _raises(ConcurrentUpdateError, lambda: model.delete([5]), "another writer")
    assert added.compact(0.0).vacuum(1, 0)["keptVersions"] == [4]


@check
def nearest_join_with_item_columns(ctx: Context):
    from pyspark.sql import functions as F

    items = ctx.items.limit(1000).withColumn("category", F.concat(F.lit("c"), F.col("id") % 5))
    model = ANNIndex(numPartitions=2, targetRecall=0, k=3, itemCols=["category"],
                     indexPath=ctx.path("items")).fit(items)
    rows = model.nearestJoin(ctx.query_frame.limit(20), how="left").collect()
    assert len(rows) == 60 and {r.rank for r in rows} == {1, 2, 3}
    assert all(r.category == f"c{r.id % 5}" for r in rows)


@check
def filters_match_cols_and_the_sql_function(ctx: Context):
    from pyspark.sql import functions as F

    import sparkann.sql

    items = ctx.items.limit(1000).withColumn("category", (F.col("id") % 5).cast("int"))
    path = ctx.path("filtered")
    model = ANNIndex(numPartitions=2, targetRecall=0, k=3, itemCols=["category"],
                     indexPath=path).fit(items)
    queries = ctx.query_frame.limit(20).withColumn("want", (F.col("qid") % 5).cast("int"))
    found = model.setFilter("category IN (1, 2)").transform(queries).collect()
    assert all(n.id % 5 in (1, 2) for r in found for n in r.neighbors)
    matched = model.setFilter(None).setMatchCols({"category": "want"}).transform(
        queries).collect()
    assert all(n.id % 5 == r.qid % 5 for r in matched for n in r.neighbors)
    sparkann.sql.register(ctx.spark)
    queries.createOrReplaceTempView("connect_queries")
    rows = ctx.spark.sql(f"""SELECT qid, id, category, rank FROM sparkann_search(
        TABLE(connect_queries), '{path}', 3, 'category = 4')""").collect()
    assert len(rows) == 60 and all(r.category == 4 and r.id % 5 == 4 for r in rows)


@check
def evaluate_helpers(ctx: Context):
    from sparkann.evaluate import exact_neighbors, model_recall, recall_at_k, tune

    truth = exact_neighbors(ctx.items, ctx.query_frame, k=10, block_rows=1000,
                            query_block_rows=64)
    ids = neighbor_ids(truth.collect(), key="qid")
    np.testing.assert_array_equal(ids, ctx.truth[0])
    assert recall_at_k(ctx.model.transform(ctx.query_frame), truth, "qid", 10) >= 0.95
    assert model_recall(ctx.model, ctx.items, ctx.query_frame, "qid", k=5) >= 0.95
    tuned = tune(ctx.model, ctx.items, ctx.query_frame, 0.9, probes=[1, 2, 4], ef=[10, 40],
                 sample=100)
    assert tuned.recall >= 0.9 and tuned.num_probes in (1, 2, 4), tuned
    assert all(t.cost >= tuned.cost for t in tuned.trials if t.recall >= 0.9)


@check
def cli_search_and_evaluate_with_remote(ctx: Context):
    from sparkann import cli, vectorio

    index, queries = ctx.path("cli-index"), ctx.path("queries.parquet")
    ctx.model.write().overwrite().save(index)
    pq.write_table(vectorio.vectors_table(ctx.queries), queries)
    remote = ["--remote", ctx.url, "--log-level", "WARNING"]
    out = ctx.path("neighbours.parquet")
    code = cli.main(["search", *remote, "--index", index, "--queries", queries, "--output", out,
                     "--k", "5"])
    assert code == 0 and ctx.spark.read.parquet(out).count() == 150
    assert cli.main(["search", *remote, "--index", index, "--queries", queries,
                     "--output", out]) == 2  # exists
    base = ctx.path("base.parquet")
    pq.write_table(vectorio.vectors_table(ctx.base), base)
    report_dir = ctx.path("report")
    code = cli.main(["evaluate", *remote, "--index", index, "--base", base, "--queries", queries,
                     "--out", report_dir, "--probes", "1,2", "--ef", "16,32", "--sample", "60"])
    assert code == 0
    with open(os.path.join(report_dir, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert len(report["trials"]) == 4 and report["sampleQueries"] == 60
    assert os.path.getsize(os.path.join(report_dir, "recall_vs_qps.png")) > 1000


NAMES = [fn.__name__ for fn in CHECKS]


def main(argv: list[str]) -> int:
    url, out_path, *wanted = argv
    from pyspark.sql import SparkSession

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("sparkann").setLevel(logging.INFO)
    started = time.perf_counter()
    spark = SparkSession.builder.remote(url).getOrCreate()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="sparkann-connect-") as workdir:
        ctx = Context(spark, workdir)
        ctx.url = url
        for fn in CHECKS:
            if wanted and fn.__name__ not in wanted:
                continue
            begin = time.perf_counter()
            try:
                fn(ctx)
                results[fn.__name__] = {"ok": True, "error": ""}
            except BaseException:  # noqa: BLE001 - report every failure, keep going
                results[fn.__name__] = {"ok": False, "error": traceback.format_exc()}
            results[fn.__name__]["seconds"] = round(time.perf_counter() - begin, 1)
            print(f"{fn.__name__}: {'ok' if results[fn.__name__]['ok'] else 'FAILED'} "
                  f"({results[fn.__name__]['seconds']} s)", file=sys.stderr, flush=True)
            with open(out_path, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=2)
    spark.stop()
    print(f"all checks: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
