"""Speculation on a standalone cluster (submitted with spark-submit): build and
search fault-free, then again with one deliberately slow task per stage.

Usage: spark-submit --master spark://... --conf spark.speculation=true ... speculation_job.py DIR

Spark never runs a speculative copy on the host of the original attempt, so
the cluster needs workers on two addresses (127.0.0.1 and 127.0.0.2).
"""

from __future__ import annotations

import glob
import os
import sys
from collections import Counter

import pyarrow.parquet as pq
from common import (
    SLOW_CONF,
    answers,
    data,
    emit,
    exactly_k_distinct,
    job_stats,
    recall,
    session,
    timed,
    vectors_frame,
)
from pyspark.sql import functions as F

from sparkann import ANNIndex

STALL_SECONDS = 40
SHUFFLE_PARTITIONS = 4


def table_layout(model) -> dict:
    """Rows and files per partition_id of an index table, read without Spark."""
    manifest, rows, files, temporary = model.manifest, Counter(), Counter(), []
    for path in sorted({os.path.join(manifest.root, d) for d in manifest.partition_dirs}):
        table = pq.read_table(path, columns=["partition_id"])
        rows.update(str(p) for p in table.column("partition_id").to_pylist())
        files.update(f.split(os.sep)[-2] for f in glob.glob(f"{path}/partition_id=*/*.parquet"))
        temporary += glob.glob(f"{path}/_temporary*")
    return {"rows": dict(rows), "files": dict(files), "temporary": temporary}


def build_and_search(spark, items, queries, root: str, group: str):
    spark.sparkContext.setJobGroup(group, group)
    params = {"numPartitions": 6, "deterministic": True, "indexPath": root}
    model, build = timed(ANNIndex(**params).fit, items)
    found, search = timed(answers, model, queries)
    return model, found, {"build": build, "search": search, **job_stats(spark, group)}


def main() -> None:
    root = sys.argv[1]
    spark = session(None, **{"spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
                             "spark.sql.adaptive.coalescePartitions.enabled": "false"})
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    clean, clean_found, clean_stats = build_and_search(
        spark, items, queries, f"{root}/clean", "clean")
    # The build task holding index partition 0, and search task 0, are stragglers.
    slow = spark.range(1).select(F.expr(f"pmod(hash(0), {SHUFFLE_PARTITIONS})")).first()[0]
    spark.conf.set(SLOW_CONF, f"build@{slow}={STALL_SECONDS},search@0={STALL_SECONDS}")
    model, found, stats = build_and_search(spark, items, queries, f"{root}/speculative",
                                           "speculative")
    emit(
        executors=sorted({e.host for e in spark.sparkContext.statusTracker().getExecutorInfos()}),
        stall_seconds=STALL_SECONDS,
        clean=clean_stats,
        speculative=stats,
        same_checksums=clean.manifest.checksums == model.manifest.checksums,
        same_answers=clean_found == found,
        exactly_k=exactly_k_distinct(found),
        recall=recall(found, base, query_vectors),
        clean_recall=recall(clean_found, base, query_vectors),
        layout=table_layout(model),
        num_partitions=len(model.manifest.checksums),
    )
    spark.stop()


if __name__ == "__main__":
    main()
