"""Per-partition overhead: the same rows fit in a few partitions and in thousands.

    python benchmarks/many_partitions.py [--rows 405000] [--dim 50] [--many 4500]
        [--few 20] [--repeats 1] [--out notebooks/benchmarks/many_partitions.json]

Seeded clustered data (``sparkann.datasets.clustered``, normalised, cosine) is written
to Parquet once; each fit reads it on ``local[2]`` with the library's defaults (the
held-out calibration included) and only ``numPartitions`` set. Prints each fit's wall
time and stages, and the ratio many/few (the target: at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import bench  # benchmarks/ (this script's folder): shared helpers
import numpy as np

from sparkann import ANNIndex, datasets, vectorio


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=405_000)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--many", type=int, default=4500, help="partitions of the many-partition fit")
    p.add_argument("--few", type=int, default=20, help="partitions of the few-partition fit")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def session(cores: int):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{cores}]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").config("spark.sql.shuffle.partitions", "8")
             .appName("sparkann-many-partitions").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def timed_fit(spark, items: str, partitions: int, index_path: str) -> dict:
    frame = spark.read.parquet(items)
    started = time.perf_counter()
    model = ANNIndex(metric="cosine", numPartitions=partitions, indexPath=index_path).fit(frame)
    seconds = time.perf_counter() - started
    summary = model.summary()
    return {"partitions": partitions, "seconds": round(seconds, 2),
            "stored_partitions": summary["numPartitions"],
            "stages": summary.get("buildSeconds", {})}


def main(argv=None) -> int:
    args = parse_args(argv)
    spark = session(args.cores)
    base = datasets.clustered(args.rows, args.dim, seed=11)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory(prefix="sparkann-many-") as work:
        items = os.path.join(work, "items.parquet")
        vectorio.write_vectors_parquet(base.astype(np.float32), items)
        warm = ANNIndex(numPartitions=4, targetRecall=0, indexPath=os.path.join(work, "warm"))
        warm.fit(spark.read.parquet(items).limit(5000))  # JVM and workers warm for both
        runs: dict[int, list[dict]] = {args.few: [], args.many: []}
        for repeat in range(args.repeats):
            for partitions in (args.few, args.many):
                path = os.path.join(work, f"index-{partitions}-{repeat}")
                run = timed_fit(spark, items, partitions, path)
                runs[partitions].append(run)
                print(json.dumps(run), flush=True)
    few = statistics.median(r["seconds"] for r in runs[args.few])
    many = statistics.median(r["seconds"] for r in runs[args.many])
    result = {"rows": args.rows, "dim": args.dim, "few": args.few, "many": args.many,
              "few_seconds": few, "many_seconds": many, "ratio": round(many / few, 2),
              "runs": runs}
    print(f"{args.rows:,} x {args.dim} rows: {args.few} partitions {few:.1f} s, "
          f"{args.many} partitions {many:.1f} s, ratio {many / few:.2f} (target <= 1.5)")
    if args.out:
        bench.write_json(args.out, result)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
