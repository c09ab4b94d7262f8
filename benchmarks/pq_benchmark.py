"""Product quantization on Fashion-MNIST: per-partition codebooks vs one global PQ.

    python benchmarks/pq_benchmark.py [--data ../shared/data] [--out notebooks/benchmarks]

For pqSubvectors in {8, 16, 28, 56, 112} x pqBits in {4, 8}: reconstruction RMSE
and training time of (a) sparkann's per-partition residual codebooks, trained in
parallel inside the build tasks, and (b) one PQ trained in a single process on
all vectors; recall@10 with and without re-ranking; bytes per vector on disk.
Writes pq_results.json and PQ_RESULTS.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as papq
from pyspark.sql import SparkSession

from sparkann import ANNIndex, exact, pq

# shared_data sits next to this script and is not installed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shared_data  # noqa: E402

CONFIGS = [(m, bits) for m in (8, 16, 28, 56, 112) for bits in (4, 8)]


def frame(spark, vectors, id_name):
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    column = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))
    return spark.createDataFrame(pa.table({id_name: np.arange(len(vectors)), "vector": column}))


def disk_bytes(path: str) -> tuple[int, int]:
    """(all bytes, bytes of the codebook and exact-vector columns) of an index table."""
    files = glob.glob(os.path.join(path, "data", "*", "partition_id=*", "*.parquet"))
    total = sum(os.path.getsize(f) for f in files)
    apart = 0
    for f in files:
        meta = papq.ParquetFile(f).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        for name in ("codebook", "vectors"):
            col = names.index(name)
            apart += sum(meta.row_group(g).column(col).total_compressed_size
                         for g in range(meta.num_row_groups))
    return total, apart


def recall(model, queries_df, truth) -> float:
    rows = sorted(model.transform(queries_df).collect(), key=lambda r: r.qid)
    found = np.array([[n.id for n in r.neighbors] for r in rows])
    return exact.recall_at_k(found, truth, 10)


def run_config(spark, base_df, queries_df, base, truth, m, bits, args, workdir):
    path = os.path.join(workdir, f"pq-{m}-{bits}")
    start = time.perf_counter()
    model = ANNIndex(indexType="pq", numPartitions=args.partitions, pqSubvectors=m, pqBits=bits,
                     rerankK=args.rerank, indexPath=path).fit(base_df)
    build = time.perf_counter() - start
    summary = model.summary()
    total, apart = disk_bytes(path)
    start = time.perf_counter()
    single = pq.train_codebook(base, m, bits, seed=0)
    single_seconds = time.perf_counter() - start
    return {
        "pqSubvectors": m,
        "pqBits": bits,
        "partitionRMSE": summary["pqReconstructionRMSE"],
        "singleProcessRMSE": pq.reconstruction_rmse(single, base),
        "partitionTrainBuildSeconds": round(build, 1),
        "partitionCodebookStageSeconds": summary["buildSeconds"]["build partition indexes"],
        "singleProcessTrainSeconds": round(single_seconds, 1),
        "recallNoRerank": recall(model.copy().setRerankK(0), queries_df, truth),
        "recallRerank": recall(model, queries_df, truth),
        "codesOnlyBytesPerVector": (total - apart) / len(base),
    }


def markdown(rows, args) -> str:
    head = ("| m | bits | RMSE per-partition | RMSE single-process | build s (parallel) "
            "| train s (single) | recall@10 | recall@10 re-rank | bytes/vector |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            f"| {r['pqSubvectors']} | {r['pqBits']} | {r['partitionRMSE']:.1f} | "
            f"{r['singleProcessRMSE']:.1f} | {r['partitionTrainBuildSeconds']} | "
            f"{r['singleProcessTrainSeconds']} | {r['recallNoRerank']:.3f} | "
            f"{r['recallRerank']:.3f} | {r['codesOnlyBytesPerVector']:.1f} |"
        )
    note = (f"\nFashion-MNIST, 60,000 x 784 indexed, 10,000 queries, l2; numPartitions="
            f"{args.partitions}, default numProbes, rerankK={args.rerank}; local[2] on "
            f"{os.cpu_count()} cores. bytes/vector: codes + ids + file overhead on disk, "
            "codebooks and exact vectors excluded.\n")
    return "\n".join(lines) + "\n" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=shared_data.default_data_root())
    parser.add_argument("--out", default="notebooks/benchmarks")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--rerank", type=int, default=200)
    parser.add_argument("--configs", default="", help="e.g. 16x8,8x4 (default: all)")
    args = parser.parse_args()
    configs = CONFIGS if not args.configs else [
        tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")
    ]
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").config("spark.sql.shuffle.partitions", "8")
             .getOrCreate())
    data = shared_data.load_dataset("fashion-mnist", args.data)
    base, queries = data["base"], data["queries"]
    truth = exact.knn(base, queries, 10)[0]
    base_df = frame(spark, base, "id").cache()
    queries_df = frame(spark, queries, "qid").cache()
    workdir = tempfile.mkdtemp(prefix="sparkann-pq-bench-")
    rows = []
    for m, bits in configs:
        rows.append(run_config(spark, base_df, queries_df, base, truth, m, bits, args, workdir))
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "pq_results.json"), "w") as out:
        json.dump(rows, out, indent=1)
    with open(os.path.join(args.out, "PQ_RESULTS.md"), "w") as out:
        out.write(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
