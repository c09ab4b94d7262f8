"""The nearest-neighbour join: sparkann's ``nearestJoin`` against Spark's own
``DataFrame.nearestByJoin`` (exact), both returning the items' columns.

    python benchmarks/join_benchmark.py [--items 20000] [--dim 64] [--queries 2000]
        [--spark-queries 200] [--repeats 3] [--out notebooks/benchmarks/join.json]

Seeded clustered data (``sparkann.datasets.clustered``) with two item columns (a
category and a price); queries from another draw of the mixture. Both joins run on
``local[2]`` and are collected with ``toArrow``; sparkann's index is fitted with its
defaults (calibrated to recall 0.95) and ``itemCols``. ``nearestByJoin`` runs on
``--spark-queries`` queries (it compares each query with every item), and its time per
query is compared with sparkann's. Prints recall@k against exact search for both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import bench  # benchmarks/ (this script's folder): shared helpers
import numpy as np
import pyarrow as pa

from sparkann import ANNIndex, datasets, exact

K = 10


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--spark-queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def session():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "4g").config("spark.sql.shuffle.partitions", "4")
             .appName("sparkann-join-benchmark").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def vectors_table(vectors: np.ndarray, id_name: str, with_items: bool) -> pa.Table:
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim), pa.int32())
    columns = {id_name: pa.array(np.arange(n)),
               "vector": pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))}
    if with_items:
        columns["category"] = pa.array([f"c{i % 50}" for i in range(n)])
        columns["price"] = pa.array(np.arange(n) % 1000 / 10.0)
    return pa.table(columns)


def found_ids(table: pa.Table, n: int, qid: str, nid: str) -> np.ndarray:
    found = np.full((n, K), -1, np.int64)
    ranks = {}
    for q, i, d in zip(table.column(qid).to_pylist(), table.column(nid).to_pylist(),
                       table.column("distance").to_pylist()):
        ranks.setdefault(q, []).append((d, i))
    for q, pairs in ranks.items():
        ids = [i for _, i in sorted(pairs)][:K]
        found[q, :len(ids)] = ids
    return found


def main(argv=None) -> int:
    from pyspark.sql import functions as F

    args = parse_args(argv)
    spark = session()
    base = datasets.clustered(args.items, args.dim, seed=3)
    queries = datasets.clustered(args.queries, args.dim, seed=3, sample_seed=4)
    truth, _ = exact.knn(base, queries, K)
    items = spark.createDataFrame(vectors_table(base, "id", True)).cache()
    query_frame = spark.createDataFrame(vectors_table(queries, "qid", False)).withColumnRenamed(
        "vector", "qvec").cache()
    items.count(), query_frame.count()
    with tempfile.TemporaryDirectory(prefix="sparkann-join-") as work:
        started = time.perf_counter()
        model = ANNIndex(k=K, itemCols=["category", "price"],
                         indexPath=os.path.join(work, "index")).fit(items)
        fit_seconds = time.perf_counter() - started
        model.setVectorCol("qvec")
        times, table = bench.timed_repeats(lambda: model.nearestJoin(query_frame).toArrow(),
                                           args.repeats)
        ours = bench.median(times)
        ours_recall = exact.recall_at_k(found_ids(table, args.queries, "qid", "id"), truth, K)
    sample = query_frame.where(F.col("qid") < args.spark_queries)
    times, spark_table = bench.timed_repeats(lambda: sample.nearestByJoin(
        items, F.vector_l2_distance(F.col("qvec"), F.col("vector")), K, "exact",
        "distance").select("qid", "id", "category", "price",
                           F.vector_l2_distance(F.col("qvec"), F.col("vector")).alias(
                               "distance")).toArrow(), args.repeats - 1)
    theirs = bench.median(times)
    spark_recall = exact.recall_at_k(found_ids(spark_table, args.spark_queries, "qid", "id"),
                                     truth[:args.spark_queries], K)
    per_query = {"sparkann": ours / args.queries, "nearestByJoin": theirs / args.spark_queries}
    result = {"items": args.items, "dim": args.dim, "k": K, "queries": args.queries,
              "spark_queries": args.spark_queries, "fit_seconds": round(fit_seconds, 2),
              "sparkann_seconds": round(ours, 3), "nearestByJoin_seconds": round(theirs, 3),
              "sparkann_recall": round(ours_recall, 4), "nearestByJoin_recall":
                  round(spark_recall, 4),
              "speedup_per_query": round(per_query["nearestByJoin"] / per_query["sparkann"], 1)}
    print(json.dumps(result))
    print(f"{args.items:,} items x {args.dim}: nearestJoin {args.queries:,} queries in "
          f"{ours:.2f} s (recall@{K} {ours_recall:.3f}); nearestByJoin {args.spark_queries} "
          f"queries in {theirs:.2f} s (recall {spark_recall:.3f}); per query sparkann is "
          f"{result['speedup_per_query']}x faster")
    if args.out:
        bench.write_json(args.out, result)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
