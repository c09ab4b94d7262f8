"""Helpers for the fault-test drivers; each driver runs in its own process.

A driver prints one ``RESULT {json}`` line that tests/test_faults.py parses.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import numpy as np
import pyarrow as pa

from sparkann import datasets, exact

RESULT = "RESULT "
K = 10
SLOW_CONF = "spark.sparkann.test.slowTaskSeconds"
FAIL_CONF = "spark.sparkann.test.failFirstAttempt"


def session(master: str | None, **conf):
    """A SparkSession for one driver (``master`` None: spark-submit chose it)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("sparkann-faults")
    if master:
        builder = builder.master(master)
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.shuffle.partitions": "4",
        **conf,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def data(rows: int = 6000, dim: int = 32, queries: int = 200):
    base = datasets.clustered(rows, dim, seed=7)
    return base, datasets.clustered(queries, dim, seed=7, sample_seed=99)


def vectors_frame(spark, vectors: np.ndarray, id_name: str = "id"):
    """(id, vector array<float>) through Arrow, in ``spark.default.parallelism`` slices."""
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    column = pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1), pa.float32()))
    table = pa.table({id_name: pa.array(np.arange(len(vectors))), "vector": column})
    return spark.createDataFrame(table)


def answers(model, queries_df) -> list[list[int]]:
    """Neighbour ids of each query, ordered by query id."""
    rows = model.transform(queries_df).select("qid", "neighbors.id").collect()
    return [list(r.id) for r in sorted(rows, key=lambda r: r.qid)]


def recall(found: list[list[int]], base: np.ndarray, queries: np.ndarray) -> float:
    truth, _ = exact.knn(base, queries, K)
    return float(exact.recall_at_k(np.array(found), truth, K))


def exactly_k_distinct(found: list[list[int]]) -> bool:
    return all(len(ids) == K and len(set(ids)) == K for ids in found)


def job_stats(spark, group: str, settle_seconds: float = 60) -> dict:
    """Failed and killed task attempts (all stage attempts) in the jobs of a job group.

    A job ends with its stages, while attempts that lost to a speculative copy
    are still being killed: wait until none of the group's attempts is active.
    """
    store = spark.sparkContext._jsc.sc().statusStore()
    convert = spark.sparkContext._jvm.scala.jdk.javaapi.CollectionConverters
    jobs = spark.sparkContext.statusTracker().getJobIdsForGroup(group)
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and any(store.job(j).numActiveTasks() for j in jobs):
        time.sleep(0.2)
    stats = {"failed_tasks": 0, "killed_tasks": 0, "kill_reasons": {}}
    for job in jobs:
        data = store.job(job)
        stats["failed_tasks"] += data.numFailedTasks()
        stats["killed_tasks"] += data.numKilledTasks()
        reasons = convert.asJava(data.killedTasksSummary())  # a Scala Map
        for reason, count in dict(reasons).items():
            stats["kill_reasons"][reason] = stats["kill_reasons"].get(reason, 0) + count
    return stats


def failed_tasks(spark, group: str) -> int:
    return job_stats(spark, group)["failed_tasks"]


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, round(time.perf_counter() - start, 2)


def emit(**result) -> None:
    print(RESULT + json.dumps(result), flush=True)


# --- processes --------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def executor_pids(driver_jvm: int) -> dict[str, int]:
    """Executor id -> pid of the executor JVMs the driver JVM launched (local-cluster)."""
    found = {}
    for pid in children(driver_jvm):
        args = cmdline(pid)
        if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in args:
            found[args[args.index("--executor-id") + 1]] = pid
    return found


def driver_jvm_pid(spark) -> int:
    return spark.sparkContext._gateway.proc.pid


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
