"""Speculation on a standalone cluster (submitted with spark-submit): build and search
(both strategies) fault-free, then again with one deliberately slow task per stage.

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
    STRATEGIES,
    answers,
    checksums,
    data,
    emit,
    exactly_k_distinct,
    job_stats,
    recall,
    session,
    task_attempts,
    timed,
    vectors_frame,
)

from sparkann import ANNIndex

STALL_SECONDS = 40
SHUFFLE_PARTITIONS = 4


def table_layout(model) -> dict:
    """Rows and files per partition id in the data runs a version names (every file
    there, read without Spark), and any committer leftovers in its run directories."""
    manifest = model.manifest
    rows, files, temporary = Counter(), Counter(), []
    data = {os.path.join(manifest.root, *f.split("/")[:2]) for f in manifest.partitions.files
            if f}
    runs = set(data)
    if manifest.locations is not None:
        runs |= {os.path.join(manifest.root, *f.split("/")[:2])
                 for fs in manifest.locations.files for f in fs}
    for run in sorted(runs):
        temporary += glob.glob(f"{run}/_temporary*") + glob.glob(f"{run}/**/.spark-staging*",
                                                                  recursive=True)
    for run in sorted(data):
        for file in glob.glob(f"{run}/**/*.parquet", recursive=True):
            pids = pq.read_table(file, columns=["pid"], partitioning=None).column("pid")
            rows.update(str(p) for p in pids.to_pylist())
            files.update(str(p) for p in set(pids.to_pylist()))
    return {"rows": dict(rows), "files": dict(files), "temporary": temporary,
            "data_runs": len(data)}


def speculated(spark, group: str) -> dict:
    """What Spark reports of a group once its attempts settled: killed attempts and
    why, and the speculative attempts that succeeded."""
    stats = job_stats(spark, group)
    attempts = task_attempts(spark, group, settle_seconds=0)
    stats["speculative_successes"] = sum(a["speculative"] and a["status"] == "SUCCESS"
                                         for a in attempts)
    # Spark partitions whose first, non-speculative attempt was killed (the stalled ones)
    stats["killed_originals"] = sorted({a["partition"] for a in attempts
                                        if a["status"] == "KILLED" and a["attempt"] == 0
                                        and not a["speculative"]})
    return stats


def build_and_search(spark, items, queries, root: str, name: str, slow: dict):
    """One build and a search per strategy, each in its own job group; ``slow`` holds
    the stall setting of each phase (None: no stall)."""
    params = {"numPartitions": 6, "deterministic": True, "targetRecall": 0, "seed": 11,
              "indexPath": root}
    stats = {}

    def phase(group, action):
        spark.sparkContext.setJobGroup(f"{name}-{group}", f"{name}: {group}")
        if slow.get(group):
            spark.conf.set(SLOW_CONF, slow[group])
        try:
            value, seconds = timed(action)
        finally:
            spark.conf.unset(SLOW_CONF)
        stats[group] = {"seconds": seconds, **speculated(spark, f"{name}-{group}")}
        return value

    model = phase("build", lambda: ANNIndex(**params).fit(items))
    found = {s: phase(f"search-{s}", lambda s=s: answers(model, queries, s))
             for s in STRATEGIES}
    return model, found, stats


def main() -> None:
    root = sys.argv[1]
    spark = session(None, **{"spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
                             "spark.sql.adaptive.coalescePartitions.enabled": "false"})
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    clean, clean_found, clean_stats = build_and_search(
        spark, items, queries, f"{root}/clean", "clean", {})
    # Build tasks are one per index partition (Spark partition N builds partition N):
    # the one of partition 0 straggles, and so does task 0 of every search stage.
    stall = f"search@0={STALL_SECONDS}"
    model, found, stats = build_and_search(
        spark, items, queries, f"{root}/speculative", "speculative",
        {"build": f"build@0={STALL_SECONDS}", "search-local": stall,
         "search-partition": stall})
    num_vectors = model.manifest.num_vectors
    emit(
        executors=sorted({e.host for e in spark.sparkContext.statusTracker().getExecutorInfos()}),
        stall_seconds=STALL_SECONDS,
        clean=clean_stats,
        speculative=stats,
        same_checksums=checksums(clean) == checksums(model),
        num_vectors=num_vectors,
        strategies={s: {
            "same_answers": clean_found[s] == found[s],
            "exactly_k": exactly_k_distinct(found[s], num_vectors),
            "recall": recall(found[s], base, query_vectors),
            "clean_recall": recall(clean_found[s], base, query_vectors),
        } for s in STRATEGIES},
        layout=table_layout(model),
        num_partitions=model.manifest.num_partitions,
    )
    spark.stop()


if __name__ == "__main__":
    main()
