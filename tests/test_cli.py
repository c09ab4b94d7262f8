"""Tests for the ``sparkann`` command line and the spark-submit jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TEST_CONF, describe, last_json, run_job, run_process

from sparkann import ANNIndexModel, cli, datasets, exact, vectorio
from sparkann.cli import commands
from sparkann.cli.session import read_conf_file, session_settings
from sparkann.readers import write_fvecs, write_ivecs

REPO = Path(__file__).resolve().parent.parent
def run_cli(capsys, *argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------
# convert (no Spark)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("writer, fmt", [(write_fvecs, "fvecs"), (write_ivecs, "ivecs")])
def test_convert_writes_id_and_float_vector_columns(tmp_path, capsys, writer, fmt):
    vectors = np.random.default_rng(0).integers(-50, 50, size=(257, 12))
    source, target = tmp_path / f"base.{fmt}", tmp_path / "base.parquet"
    writer(source, vectors)

    code, out, _ = run_cli(capsys, "convert", "--input", str(source), "--output", str(target))

    assert code == 0
    assert json.loads(out) == {"output": str(target), "rows": 257, "dim": 12}
    table = pq.read_table(target)
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(257))
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist()), vectors)


def test_convert_splits_large_inputs_into_row_groups(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(vectorio, "ROW_GROUP_BYTES", 10 * 4 * 8)  # 10 rows of dim 8
    vectors = datasets.clustered(95, 8, seed=1)
    write_fvecs(tmp_path / "x.fvecs", vectors)

    code, _, _ = run_cli(capsys, "convert", "--input", str(tmp_path / "x.fvecs"),
                         "--output", str(tmp_path / "x.parquet"), "--format", "fvecs")

    assert code == 0
    parquet = pq.ParquetFile(tmp_path / "x.parquet")
    assert parquet.metadata.num_row_groups == 10
    table = parquet.read()
    np.testing.assert_array_equal(table.column("id").to_numpy(), np.arange(95))
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist(), np.float32),
                                  vectors)


def test_convert_refuses_to_replace_output_without_overwrite(tmp_path, capsys):
    write_fvecs(tmp_path / "x.fvecs", np.ones((3, 4)))
    target = tmp_path / "x.parquet"
    target.write_bytes(b"keep me")
    args = ["convert", "--input", str(tmp_path / "x.fvecs"), "--output", str(target)]

    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and "already exists" in err and "--overwrite" in err
    assert target.read_bytes() == b"keep me"

    code, _, _ = run_cli(capsys, *args, "--overwrite")
    assert code == 0
    assert pq.read_table(target).num_rows == 3


@pytest.mark.parametrize(
    "name, expected",
    [("missing.fvecs", "No such file"), ("vectors.txt", "cannot infer the vector format")],
)
def test_convert_reports_bad_input_files(tmp_path, capsys, name, expected):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("1 2 3\n")
    code, out, err = run_cli(capsys, "convert", "--input", str(tmp_path / name),
                             "--output", str(tmp_path / "out.parquet"))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1  # one line, no traceback


# --------------------------------------------------------------------------
# argument errors and settings (no Spark)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "required: COMMAND"),
        (["index"], "invalid choice: 'index'"),
        (["build", "--input", "x.parquet"], "required: --output"),
        (["build", "--input", "x", "--output", "y", "--metric", "manhattan"], "--metric"),
        (["build", "--input", "x", "--output", "y", "--num-partitions", "-1"], "must be >= 0"),
        (["search", "--index", "i", "--queries", "q", "--output", "o", "--k", "0"],
         "--k: must be >= 1"),
        (["search", "--index", "i", "--queries", "q", "--output", "o", "--k", "ten"],
         "expected an integer"),
        (["search", "--index", "i", "--queries", "q", "--output", "o", "--mode", "append"],
         "--mode"),
        (["demo", "--rows", "0"], "--rows: must be >= 1"),
        (["convert", "--input", "a.fvecs", "--output", "b", "--format", "csv"], "--format"),
        (["build", "--input", "x", "--output", "y", "--log-level", "loud"], "--log-level"),
    ],
)
def test_argument_errors_exit_2_with_one_line_message(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and expected in err
    assert err.count("\n") == 1


def test_invalid_index_settings_fail_before_spark_starts(capsys):
    code, _, err = run_cli(capsys, "build", "--input", "x", "--output", "y", "--hnsw-m", "5000")
    assert code == 2
    assert err.startswith("error: hnswM=5000 is out of range") and "2048" in err
    assert err.count("\n") == 1


def test_missing_conf_file_is_a_user_error(tmp_path, capsys):
    missing = tmp_path / "nope.conf"
    code, _, err = run_cli(capsys, "build", "--input", "x", "--output", "y",
                           "--conf", str(missing))
    assert code == 2
    assert err.startswith("error: ") and str(missing) in err


def test_help_exits_0(capsys):
    code, out, _ = run_cli(capsys, "search", "--help")
    assert code == 0
    assert "--num-probes" in out


def test_read_conf_file_accepts_spark_defaults_syntax(tmp_path):
    conf = tmp_path / "job.conf"
    conf.write_text("# comment\n\nspark.a  1\nspark.b=two words \n  spark.c = x=y\n! note\n")
    assert read_conf_file(str(conf)) == {"spark.a": "1", "spark.b": "two words",
                                             "spark.c": "x=y"}


def test_read_conf_file_rejects_a_key_without_value(tmp_path, capsys):
    conf = tmp_path / "bad.conf"
    conf.write_text("spark.a 1\nspark.lonely\n")
    with pytest.raises(ValueError, match=r"bad.conf:2: expected"):
        read_conf_file(str(conf))


@pytest.mark.parametrize("name", ["spark-defaults.conf", "build.conf", "search.conf"])
def test_example_conf_files_parse(name):
    settings = read_conf_file(str(REPO / "conf" / name))
    assert settings and all(key.startswith("spark.") for key in settings)


@pytest.fixture
def clean_spark_env(monkeypatch, tmp_path):
    for name in ("MASTER", "PYSPARK_GATEWAY_PORT", "PYSPARK_SUBMIT_ARGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # no spark-defaults.conf there
    return monkeypatch


def _settings(*argv):
    return session_settings(cli.build_parser().parse_args(["demo", *argv]))


def test_session_defaults_to_local_master_and_quiet_console(clean_spark_env, tmp_path):
    settings = _settings()
    assert settings["spark.master"] == "local[*]"
    assert settings["spark.ui.showConsoleProgress"] == "false"
    assert settings["spark.app.name"] == "sparkann-demo"


def test_session_master_from_option_conf_file_or_spark_submit(clean_spark_env, tmp_path):
    assert _settings("--master", "local[3]")["spark.master"] == "local[3]"
    (tmp_path / "a.conf").write_text("spark.master spark://h:7077\nspark.x 1\n")
    (tmp_path / "b.conf").write_text("spark.x 2\n")
    settings = _settings("--conf", str(tmp_path / "a.conf"), "--conf", str(tmp_path / "b.conf"))
    assert settings["spark.master"] == "spark://h:7077"
    assert settings["spark.x"] == "2"
    clean_spark_env.setenv("PYSPARK_GATEWAY_PORT", "12345")  # as under spark-submit
    under_spark_submit = _settings()
    assert "spark.master" not in under_spark_submit
    assert "spark.app.name" not in under_spark_submit


# --------------------------------------------------------------------------
# options passed to the library only when given (no Spark)
# --------------------------------------------------------------------------


SEARCH_REQUIRED = ["search", "--index", "i", "--queries", "q", "--output", "o"]
BUILD_REQUIRED = ["build", "--input", "x", "--output", "y"]
ALL_BUILD_OPTIONS = [
    "--vector-col", "emb", "--id-col", "key", "--metric", "cosine", "--index-type", "pq",
    "--num-partitions", "4", "--hnsw-m", "8", "--ef-construction", "50",
    "--pq-subvectors", "4", "--pq-bits", "4", "--pq-codebook", "global", "--rerank-k", "20",
    "--sample-size", "500", "--max-partition-rows", "1000", "--seed", "7",
    "--num-threads", "1", "--deterministic", "--allow-duplicate-ids", "--target-recall", "0.9",
]
ALL_BUILD_PARAMS = {
    "vectorCol": "emb", "idCol": "key", "metric": "cosine", "indexType": "pq",
    "numPartitions": 4, "hnswM": 8, "efConstruction": 50, "pqSubvectors": 4, "pqBits": 4,
    "pqCodebook": "global", "rerankK": 20, "sampleSize": 500, "maxPartitionRows": 1000,
    "seed": 7, "numThreads": 1, "deterministic": True, "allowDuplicateIds": True,
    "targetRecall": 0.9,
}


def given(*argv):
    return commands.given_params(cli.build_parser().parse_args(list(argv)))


def test_search_options_default_to_the_index_settings():
    assert given(*SEARCH_REQUIRED) == {}
    assert given(*SEARCH_REQUIRED, "--k", "5", "--neighbors-col", "nn") == {
        "k": 5, "neighborsCol": "nn"}
    assert given(*SEARCH_REQUIRED, "--num-probes", "0", "--probe-epsilon", "0.5",
                 "--ef-search", "64", "--vector-col", "q") == {
        "numProbes": 0, "probeEpsilon": 0.5, "efSearch": 64, "vectorCol": "q"}


class RecordingModel:
    """Stands in for ANNIndexModel: records setter calls and validation."""

    def __init__(self):
        self.calls = []

    def setK(self, value):
        self.calls.append(("setK", value))

    def setNeighborsCol(self, value):
        self.calls.append(("setNeighborsCol", value))

    def getParam(self, name):
        return name

    def set(self, param, value):
        self.calls.append(("set", param, value))

    def validate(self):
        self.calls.append(("validate",))


def test_apply_search_options_sets_only_the_given_options():
    model = RecordingModel()
    commands.apply_search_options(model, given(*SEARCH_REQUIRED))
    assert model.calls == [("validate",)]
    model = RecordingModel()
    commands.apply_search_options(model, given(*SEARCH_REQUIRED, "--k", "3", "--vector-col",
                                               "q"))
    assert model.calls == [("setK", 3), ("set", "vectorCol", "q"), ("validate",)]


def test_build_passes_only_the_given_options_by_param_name():
    assert given(*BUILD_REQUIRED) == {}
    assert given(*BUILD_REQUIRED, *ALL_BUILD_OPTIONS) == ALL_BUILD_PARAMS
    assert given(*BUILD_REQUIRED, "--hnsw-m", "32", "--deterministic") == {
        "hnswM": 32, "deterministic": True}


def test_build_options_name_ann_index_params():
    from sparkann import ANNIndex

    index = ANNIndex()
    # targetRecall is passed through as given, for a library that has it
    assert {name for name in ALL_BUILD_PARAMS if not index.hasParam(name)} <= {"targetRecall"}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--index-type", "ivf"], "indexType"),
        (["--pq-bits", "5"], "--pq-bits"),
        (["--pq-codebook", "local"], "--pq-codebook"),
        (["--rerank-k", "-1"], "--rerank-k: must be >= 0"),
        (["--target-recall", "x"], "--target-recall"),
        (["--num-threads", "x"], "expected an integer"),
    ],
)
def test_bad_build_options_exit_2(capsys, argv, expected):
    code, out, err = run_cli(capsys, *BUILD_REQUIRED, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and expected in err


class FakeModel:
    def __init__(self, path):
        self.path = path

    def vacuum(self, **options):
        FakeModel.calls.append((self.path, options))
        return {"removedVersions": [1, 2], "removedBytes": np.int64(123)}


@pytest.mark.parametrize("argv, options", [
    ([], {}), (["--retain-versions", "3"], {"retainVersions": 3}),
    (["--retention-hours", "0.5"], {"retentionHours": 0.5})])
def test_vacuum_calls_the_model_and_prints_its_report(monkeypatch, capsys, argv, options):
    from contextlib import nullcontext

    from sparkann import ANNIndexModel

    FakeModel.calls = []
    monkeypatch.setattr(commands, "spark_session", lambda args: nullcontext())
    monkeypatch.setattr(ANNIndexModel, "load", staticmethod(FakeModel))
    code, out, _ = run_cli(capsys, "vacuum", "--index", "/idx", *argv)
    assert code == 0
    assert FakeModel.calls == [("/idx", options)]
    assert json.loads(out) == {"removedVersions": [1, 2], "removedBytes": 123}


def test_vacuum_rejects_a_negative_retain_versions(capsys):
    code, _, err = run_cli(capsys, "vacuum", "--index", "i", "--retain-versions", "-1")
    assert code == 2 and "--retain-versions: must be >= 0" in err


def test_console_script_and_module_entry_points():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="sparkann")
    assert script.value == "sparkann.cli:main" and script.load() is cli.main
    done = run_process([sys.executable, "-m", "sparkann.cli", "--version"], REPO)
    assert done.returncode == 0 and done.stdout.startswith("sparkann "), describe(done)


# --------------------------------------------------------------------------
# search and build in-process (the test session's Spark)
# --------------------------------------------------------------------------


def test_search_keeps_the_index_k_and_neighbors_col(spark, tmp_path, capsys):
    from sparkann import ANNIndex

    base = datasets.clustered(600, 8, seed=5)
    vectorio.write_vectors_parquet(base, str(tmp_path / "items.parquet"))
    vectorio.write_vectors_parquet(base[:20], str(tmp_path / "queries.parquet"))
    index = str(tmp_path / "index")
    ANNIndex(numPartitions=2, k=4, neighborsCol="nn", indexPath=index, targetRecall=0).fit(
        spark.read.parquet(str(tmp_path / "items.parquet")))
    output = str(tmp_path / "out.parquet")

    code, out, err = run_cli(capsys, "search", "--index", index, "--queries",
                             str(tmp_path / "queries.parquet"), "--output", output)

    assert code == 0, err
    assert json.loads(out)["k"] == 4
    lists = pq.read_table(output).column("nn").to_pylist()
    assert len(lists) == 20 and all(len(neighbors) == 4 for neighbors in lists)


def test_build_options_reach_the_stored_index(spark, tmp_path, capsys):
    from sparkann import ANNIndex, ANNIndexModel

    vectorio.write_vectors_parquet(datasets.clustered(800, 8, seed=6),
                                   str(tmp_path / "items.parquet"))
    index = str(tmp_path / "index")
    code, out, err = run_cli(capsys, "build", "--input", str(tmp_path / "items.parquet"),
                             "--output", index, "--index-type", "pq", "--pq-subvectors", "4",
                             "--pq-bits", "8", "--num-partitions", "2", "--seed", "3",
                             "--rerank-k", "10", "--deterministic", "--log-level", "WARNING")
    assert code == 0, err
    model = ANNIndexModel.load(index)
    stored = {name: model.getOrDefault(name) for name in
              ("indexType", "pqSubvectors", "pqBits", "numPartitions", "seed", "rerankK",
               "deterministic", "hnswM")}
    assert stored == {"indexType": "pq", "pqSubvectors": 4, "pqBits": 8, "numPartitions": 2,
                      "seed": 3, "rerankK": 10, "deterministic": True,
                      "hnswM": ANNIndex().getOrDefault("hnswM")}  # not given: the default


# --------------------------------------------------------------------------
# the spark-submit jobs, run in this process as spark-submit runs them (one runs
# through spark-submit itself in test_persistence.py); the demo
# --------------------------------------------------------------------------


def test_build_and_search_jobs(spark, tmp_path, capsys, monkeypatch):
    rows = 6_000  # (test_persistence.py fits past the automatic numPartitions' threshold)
    base = datasets.clustered(rows, 8, seed=3)
    queries = datasets.clustered(100, 8, seed=3, sample_seed=4)
    vectorio.write_vectors_parquet(base, str(tmp_path / "items.parquet"))
    vectorio.write_vectors_parquet(queries, str(tmp_path / "queries.parquet"))
    (tmp_path / "job.conf").write_text(TEST_CONF)
    index, output = str(tmp_path / "index"), str(tmp_path / "neighbors.parquet")

    code, out, err = run_job(capsys, monkeypatch, "build_index.py",
                             "--input", str(tmp_path / "items.parquet"), "--output", index,
                             "--num-partitions", "3", "--target-recall", "0",
                             "--conf", str(tmp_path / "job.conf"), "--log-level", "ERROR")
    assert code == 0, err[-3000:]
    summary = last_json(out)
    assert summary["numVectors"] == rows and summary["numPartitions"] == 3

    search_args = ["--index", index, "--queries", str(tmp_path / "queries.parquet"),
                   "--output", output, "--conf", str(tmp_path / "job.conf"),
                   "--log-level", "ERROR"]
    code, out, err = run_job(capsys, monkeypatch, "search.py", *search_args)
    assert code == 0, err[-3000:]
    # the job searched with the settings the build stored, as a new load reads them
    loaded = ANNIndexModel.load(index)
    reported = last_json(out)
    assert reported["settings"] == loaded.searchSettings()
    assert reported["settings"]["numProbes"] == summary["searchDefaults"]["numProbes"] >= 1
    assert reported["queryDrift"] is None  # built without calibration: nothing to compare
    here = loaded.transform(spark.read.parquet(str(tmp_path / "queries.parquet")))
    assert {r.id: [n.id for n in r.neighbors] for r in here.collect()} == {
        r["id"]: [n["id"] for n in r["neighbors"]] for r in pq.read_table(output).to_pylist()}

    result = pq.read_table(output).sort_by("id")
    assert result.column("id").to_pylist() == list(range(100))
    lists = result.column("neighbors").to_pylist()
    assert all(len(neighbors) == 10 for neighbors in lists)
    found = np.array([[n["id"] for n in neighbors] for neighbors in lists])
    truth, _ = exact.knn(base, queries, 10)
    assert exact.recall_at_k(found, truth, 10) >= 0.95

    code, out, err = run_job(capsys, monkeypatch, "search.py", *search_args)
    assert code == 2, out + err
    assert f"error: {output} already exists; pass --mode overwrite" in err
    assert "Traceback" not in out + err

    code, out, err = run_job(capsys, monkeypatch, "search.py", *search_args, "--mode",
                             "overwrite", "--calibrate-on-queries", "0.9")
    assert code == 0, err[-3000:]
    retuned = ANNIndexModel.load(index)
    assert retuned.manifest.version == loaded.manifest.version + 1
    assert retuned.summary()["calibration"]["sampleSource"] == "queries"
    assert last_json(out)["settings"] == retuned.searchSettings()
    drift = last_json(out)["queryDrift"]
    assert drift["queries"] == 100 and drift["calibrationSource"] == "queries"


def test_demo_reports_recall(spark, tmp_path, capsys):
    (tmp_path / "demo.conf").write_text(TEST_CONF)
    code, out, err = run_cli(capsys, "demo", "--rows", "3000", "--dim", "16", "--queries", "50",
                             "--conf", str(tmp_path / "demo.conf"), "--log-level", "ERROR")
    assert code == 0, err[-3000:]
    assert "recall@10" in out
    assert "queries/s" in out
