"""Tests for the ``sparkann`` command line and the spark-submit jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest

from sparkann import cli, datasets, exact
from sparkann.readers import write_fvecs, write_ivecs

REPO = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
SUBPROCESS_TIMEOUT = 900
TEST_CONF = "spark.ui.enabled=false\nspark.sql.shuffle.partitions 4\n"


def run_cli(capsys, *argv):
    """``main(argv)`` in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


def run_process(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)


def spark_submit(job: str, *args, cwd) -> subprocess.CompletedProcess:
    return run_process([SPARK_SUBMIT, "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                        str(REPO / "jobs" / job), *args], cwd)


def last_json(text: str):
    """The last JSON document that starts a line of ``text`` (logs may precede it).

    spark-submit merges the Python driver's stderr into its stdout, so the
    printed result follows log lines there.
    """
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            return decoder.raw_decode(text, start)[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON document in output:\n{text[-3000:]}")


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}"
            f"\nstderr:\n{result.stderr[-5000:]}")


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
    monkeypatch.setattr(cli, "CONVERT_CHUNK_BYTES", 10 * 4 * 8)  # 10 rows of dim 8
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
    assert err == "error: hnswM=5000 is out of range: must be <= 2048\n"


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
    assert cli.read_conf_file(str(conf)) == {"spark.a": "1", "spark.b": "two words",
                                             "spark.c": "x=y"}


def test_read_conf_file_rejects_a_key_without_value(tmp_path, capsys):
    conf = tmp_path / "bad.conf"
    conf.write_text("spark.a 1\nspark.lonely\n")
    with pytest.raises(ValueError, match=r"bad.conf:2: expected"):
        cli.read_conf_file(str(conf))


@pytest.mark.parametrize("name", ["spark-defaults.conf", "build.conf", "search.conf"])
def test_example_conf_files_parse(name):
    settings = cli.read_conf_file(str(REPO / "conf" / name))
    assert settings and all(key.startswith("spark.") for key in settings)


@pytest.fixture
def clean_spark_env(monkeypatch, tmp_path):
    for name in ("MASTER", "PYSPARK_GATEWAY_PORT", "PYSPARK_SUBMIT_ARGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # no spark-defaults.conf there
    return monkeypatch


def _settings(*argv):
    return cli.session_settings(cli.build_parser().parse_args(["demo", *argv]))


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
# spark-submit jobs and the demo (start their own JVMs)
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_spark_submit_build_and_search_jobs(tmp_path):
    base = datasets.clustered(3000, 16, seed=3)
    queries = datasets.clustered(100, 16, seed=3, sample_seed=4)
    cli.write_vectors_parquet(base, str(tmp_path / "items.parquet"))
    cli.write_vectors_parquet(queries, str(tmp_path / "queries.parquet"))
    (tmp_path / "job.conf").write_text(TEST_CONF)
    index, output = str(tmp_path / "index"), str(tmp_path / "neighbors.parquet")

    built = spark_submit("build_index.py", "--input", str(tmp_path / "items.parquet"),
                         "--output", index, "--num-partitions", "4",
                         "--conf", str(tmp_path / "job.conf"), cwd=tmp_path)
    assert built.returncode == 0, describe(built)
    summary = last_json(built.stdout)
    assert summary["numVectors"] == 3000 and summary["numPartitions"] == 4

    search_args = ["--index", index, "--queries", str(tmp_path / "queries.parquet"),
                   "--output", output, "--k", "10", "--conf", str(tmp_path / "job.conf")]
    searched = spark_submit("search.py", *search_args, cwd=tmp_path)
    assert searched.returncode == 0, describe(searched)

    result = pq.read_table(output).sort_by("id")
    assert result.column("id").to_pylist() == list(range(100))
    lists = result.column("neighbors").to_pylist()
    assert all(len(neighbors) == 10 for neighbors in lists)
    found = np.array([[n["id"] for n in neighbors] for neighbors in lists])
    truth, _ = exact.knn(base, queries, 10)
    assert exact.recall_at_k(found, truth, 10) >= 0.95

    again = spark_submit("search.py", *search_args, cwd=tmp_path)
    assert again.returncode == 2, describe(again)
    output_text = again.stdout + again.stderr  # spark-submit sends Python's stderr to stdout
    assert f"error: {output} already exists; pass --mode overwrite" in output_text
    assert "Traceback" not in output_text


@pytest.mark.slow
def test_demo_reports_recall(tmp_path):
    (tmp_path / "demo.conf").write_text(TEST_CONF)
    demo = run_process([sys.executable, "-m", "sparkann.cli", "demo", "--rows", "3000",
                        "--dim", "16", "--queries", "50", "--master", "local[2]",
                        "--conf", str(tmp_path / "demo.conf")], tmp_path)
    assert demo.returncode == 0, describe(demo)
    assert "recall@10" in demo.stdout
    assert "queries/s" in demo.stdout
