"""A smoke run of benchmarks/benchmark.py on tiny sizes (a separate process and JVM)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
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
                          timeout=300)
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
