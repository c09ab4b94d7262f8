"""benchmarks/benchmark.py: its report rebuilt from stored results (default tier), and a
smoke run on tiny sizes in a separate process and JVM (heavy tier)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.heavy
def test_quick_benchmark_writes_results(tmp_path):
    pytest.importorskip("psutil")
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    command = [
        sys.executable, os.path.join(REPO, "benchmarks", "benchmark.py"), "--quick",
        "--sizes", "2000,4000", "--queries", "300", "--recall-queries", "300",
        "--datasets", "none", "--skip", "pq", "--out", str(out),
    ]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)  # a loaded machine is slow, not broken
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {"machine", "cases", "headline_case", "targets", "scaling"} <= set(results)
    assert results["headline_case"] == "clustered-4000"
    for key in ("throughput_vs_hnswlib", "partition_throughput_vs_hnswlib",
                "build_time_vs_hnswlib", "throughput_vs_mllib_lsh", "throughput_vs_exact_spark",
                "throughput_vs_spark_knn_join"):
        ratio = results["targets"][key]["ratio"]
        assert ratio is not None and math.isfinite(ratio) and ratio > 0, key
    case = results["cases"]["clustered-4000"]
    assert {"hnswlib", "sparkann", "spark_knn_join", "mllib_lsh", "exact_spark", "streaming",
            "spread", "headline"} <= set(case)
    assert set(case["sparkann"]["strategies"]) == {"local", "partition"}
    assert case["sparkann"]["chosen"]["recall"] > 0.5
    assert case["spark_knn_join"]["recall"] == 1.0  # the exact anchor
    runs = case["streaming"]["runs"]
    assert {(r["strategy"], r["rows_per_file"]) for r in runs} == {
        (s, n) for s in ("local", "partition") for n in (1, 100)}
    assert all(0 < r["p50_trigger_ms"] <= r["p95_trigger_ms"] for r in runs)
    assert set(results["scaling"]["exponents"]) >= {
        "hnswlib_build", "hnswlib_search", "sparkann_local_search", "sparkann_partition_search"}
    assert (out / "RESULTS.md").read_text().startswith("# sparkann benchmarks")
    assert (out / "recall_vs_qps.png").stat().st_size > 0


STORED = os.path.join(REPO, "notebooks", "benchmarks", "results.json")
DERIVED = ("headline_case", "targets", "equal_recall", "scaling")


def test_the_report_is_rebuilt_from_stored_results(tmp_path):
    """benchmark.py --report-only on the published results.json, stripped of what it
    derives (headline, target ratios, equal-recall table, scaling): the same derived
    parts come back, with RESULTS.md and the plot. The run itself is the heavy tier's."""
    pytest.importorskip("matplotlib")
    import benchmark

    stored = json.loads(open(STORED, encoding="utf-8").read())
    measured = {k: v for k, v in stored.items() if k not in DERIVED}
    measured["cases"] = {name: {k: v for k, v in case.items() if k != "headline"}
                         for name, case in stored["cases"].items()}
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(measured))
    assert benchmark.main(["--report-only", "--out", str(out)]) == 0
    rebuilt = json.loads((out / "results.json").read_text())
    for key in DERIVED:
        assert rebuilt[key] == stored[key], key
    for name, case in stored["cases"].items():
        assert rebuilt["cases"][name]["headline"] == case["headline"], name
    for key in ("throughput_vs_hnswlib", "partition_throughput_vs_hnswlib",
                "build_time_vs_hnswlib", "throughput_vs_mllib_lsh",
                "throughput_vs_spark_knn_join"):  # exact on Spark was not run at 1M rows
        ratio = rebuilt["targets"][key]["ratio"]
        assert ratio is not None and math.isfinite(ratio) and ratio > 0, key
    report = (out / "RESULTS.md").read_text()
    assert report.startswith("# sparkann benchmarks")
    assert rebuilt["headline_case"] in report
    assert (out / "recall_vs_qps.png").stat().st_size > 0
