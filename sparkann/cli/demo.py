"""``sparkann demo``: index seeded synthetic vectors, search them, report recall and speed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from ..vectorio import vectors_table
from .session import spark_session

log = logging.getLogger(__name__)

DEMO_MIN_RECALL = 0.9
DEMO_PARTITIONS = 8


def run_demo(args: argparse.Namespace) -> int:
    """``sparkann demo``: index synthetic vectors and report recall and speed.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``demo`` arguments.

    Returns
    -------
    int
        0 if recall@k reaches 0.9, else 1.
    """
    from .. import datasets, exact

    base = datasets.clustered(args.rows, args.dim, seed=args.seed)
    queries = datasets.clustered(args.queries, args.dim, seed=args.seed,
                                 sample_seed=args.seed + 1)
    with _output_dir(args.output) as out, spark_session(args) as spark:
        found, report = _demo_search(spark, base, queries, args.k, os.path.join(out, "index"))
    truth, _ = exact.knn(base, queries, args.k)
    report["recall"] = exact.recall_at_k(found, truth, args.k)
    print(_demo_table(report, args))
    if report["recall"] < DEMO_MIN_RECALL:
        print(f"recall {report['recall']:.3f} is below {DEMO_MIN_RECALL}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _output_dir(path: str | None):
    """``path`` (created if needed), or a temporary directory removed afterwards."""
    if path:
        os.makedirs(path, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sparkann-demo-") as tmp:
        yield tmp


def _demo_search(spark, base, queries, k: int, index_path: str):
    """Build and search the demo index: (neighbour ids (nq, k), report dict)."""
    from pyspark.sql import functions as F

    from ..estimator import ANNIndex

    items = spark.createDataFrame(vectors_table(base))
    query_frame = spark.createDataFrame(vectors_table(queries))
    partitions = max(1, min(DEMO_PARTITIONS, len(base) // 100))
    started = time.perf_counter()
    model = ANNIndex(numPartitions=partitions, k=k, indexPath=index_path).fit(items)
    build_seconds = time.perf_counter() - started
    log.info("built the demo index in %.1f s at %s", build_seconds, index_path)
    started = time.perf_counter()
    result = model.transform(query_frame).select("id", F.col("neighbors.id").alias("ids"))
    found = neighbor_matrix(result.toArrow(), k)
    search_seconds = time.perf_counter() - started
    return found, {"build_seconds": build_seconds, "search_seconds": search_seconds,
                   "summary": model.summary()}


def neighbor_matrix(table, k: int) -> np.ndarray:
    """Neighbour ids as an (nq, k) matrix ordered by query id, -1 where missing.

    Parameters
    ----------
    table : pyarrow.Table
        Columns ``id`` (query id) and ``ids`` (list of neighbour ids).
    k : int
        Columns of the result.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(len(table), k)``.
    """
    table = table.sort_by("id")
    found = np.full((table.num_rows, k), -1, np.int64)
    for row, ids in enumerate(table.column("ids").to_pylist()):
        found[row, : len(ids)] = ids[:k]
    return found


def _demo_table(report: dict, args: argparse.Namespace) -> str:
    """The demo result as a short two-column table."""
    summary = report["summary"]
    nq = args.queries
    rows = [
        (f"recall@{args.k}", f"{report['recall']:.4f}"),
        ("build seconds", f"{report['build_seconds']:.1f}"),
        ("search seconds", f"{report['search_seconds']:.1f}"),
        ("queries/s", f"{nq / max(report['search_seconds'], 1e-9):.0f}"),
        ("vectors", f"{summary['numVectors']} x {summary['dim']} ({summary['metric']})"),
        ("partitions", (f"{summary['numPartitions']} clusters, {summary['numShards']} shards, "
                        f"balance {summary['balance']:.2f}")),
        ("partition sizes", _short_list(summary["partitionSizes"])),
        ("index size", f"{summary['indexBytes'] / 2**20:.1f} MiB"),
    ]
    rows += [(f"  {stage} s", f"{seconds:.1f}") for stage, seconds in
             summary["buildSeconds"].items()]
    width = max(len(name) for name, _ in rows)
    title = f"sparkann demo: {args.rows} vectors, dim {args.dim}, {nq} queries, k={args.k}"
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def _short_list(values, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
