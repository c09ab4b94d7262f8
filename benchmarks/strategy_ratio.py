"""Query time of searchStrategy="partition" against "local" on the same index and queries.

    python benchmarks/strategy_ratio.py [--rows 100000] [--dim 48] [--queries 20000]
        [--partitions 16] [--probes 3] [--repeats 3] [--answers out.parquet]

Builds a seeded clustered index (``sparkann.datasets.clustered``), then times a batch
search of the same Parquet query set with each strategy, alternating, ``--repeats``
times (results written to Spark's ``noop`` sink). Prints each strategy's median seconds
and the ratio partition / local, and checks both strategies give the same neighbours.
``--answers`` keeps the partition strategy's answers, to compare two versions of the code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparkann import ANNIndex, datasets

STRATEGIES = ("local", "partition")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--probes", type=int, default=3)
    p.add_argument("--ef", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--answers", default=None, help="write the partition answers here")
    return p.parse_args(argv)


def session(cores: int):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("sparkann-strategy-ratio")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(2 * cores))
             .config("spark.driver.memory", "4g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def write_vectors(path: str, vectors: np.ndarray) -> None:
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    column = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))
    pq.write_table(pa.table({"id": np.arange(len(vectors)), "vector": column}), path)


def neighbours(table: pa.Table) -> list:
    rows = sorted(zip(table.column("id").to_pylist(), table.column("neighbors").to_pylist()))
    return [[n["id"] for n in found] for _, found in rows]


def fitted(spark, args, work: str):
    """The index of the work directory, built on first use."""
    from sparkann import ANNIndexModel

    base_path, index_path = os.path.join(work, "base.parquet"), os.path.join(work, "index")
    if os.path.exists(index_path):
        return ANNIndexModel.load(index_path)
    write_vectors(base_path, datasets.clustered(args.rows, args.dim, seed=3))
    write_vectors(os.path.join(work, "q.parquet"),
                  datasets.clustered(args.queries, args.dim, seed=3, sample_seed=11))
    return ANNIndex(k=args.k, numPartitions=args.partitions, targetRecall=0, seed=42,
                    indexPath=index_path).fit(spark.read.parquet(base_path))


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="sparkann-ratio-")
    os.makedirs(work, exist_ok=True)
    query_path = os.path.join(work, "q.parquet")
    spark = session(args.cores)
    model = fitted(spark, args, work)
    model.setNumProbes(args.probes).setEfSearch(args.ef)
    queries = spark.read.parquet(query_path)
    searches = {s: model.copy().setSearchStrategy(s) for s in STRATEGIES}
    answers = {s: searches[s].transform(queries).select("id", "neighbors").toArrow()
               for s in STRATEGIES}  # also warms each worker's cache
    times: dict = {s: [] for s in STRATEGIES}
    for _ in range(args.repeats):
        for s in STRATEGIES:
            started = time.perf_counter()
            searches[s].transform(queries).write.format("noop").mode("overwrite").save()
            times[s].append(time.perf_counter() - started)
    medians = {s: statistics.median(times[s]) for s in STRATEGIES}
    for s in STRATEGIES:
        print(f"{s:>9}: median {medians[s]:.2f} s of {[round(t, 2) for t in times[s]]}")
    print(f"rows={args.rows} dim={args.dim} queries={args.queries} "
          f"partitions={args.partitions} probes={args.probes} load={os.getloadavg()[0]:.1f}")
    print(f"ratio partition/local: {medians['partition'] / medians['local']:.2f}")
    same = neighbours(answers["local"]) == neighbours(answers["partition"])
    print(f"same neighbours in both strategies: {same}")
    if args.answers:
        pq.write_table(answers["partition"].sort_by("id"), args.answers)
    spark.stop()


if __name__ == "__main__":
    main()
