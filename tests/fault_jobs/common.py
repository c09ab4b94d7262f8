"""Helpers for the fault-test drivers; each driver runs in its own process.

A driver prints one ``RESULT {json}`` line that tests/test_faults.py parses.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa

from sparkann import datasets, exact
from sparkann.testing import FAIL_FIRST_ATTEMPT_CONF, SLOW_TASK_CONF

RESULT = "RESULT "
K = 10
SLOW_CONF = SLOW_TASK_CONF
FAIL_CONF = FAIL_FIRST_ATTEMPT_CONF
STRATEGIES = ("local", "partition")
# Where fit() writes indexes without indexPath (the test passes its tmp_path): never
# the driver's working directory, which is this source folder.
WORK_DIR_ENV = "SPARKANN_FAULT_WORK_DIR"


def session(master: str | None, **conf):
    """A SparkSession for one driver (``master`` None: spark-submit chose it)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("sparkann-faults")
    if master:
        builder = builder.master(master)
    work_dir = os.environ.get(WORK_DIR_ENV) or tempfile.mkdtemp(prefix="sparkann-faults-")
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.sql.shuffle.partitions": "4",
        "spark.sql.warehouse.dir": os.path.join(work_dir, "warehouse"),
        "spark.sparkann.workDir": os.path.join(work_dir, "indexes"),
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


def checksums(model) -> list[str]:
    """The per-partition checksums a version's manifest records (payload, ids, vectors)."""
    return list(model.manifest.partitions.checksums)


def answers(model, queries_df, strategy: str | None = None) -> list[list[int]]:
    """Neighbour ids of each query, ordered by query id (with ``strategy``, if given)."""
    if strategy is not None:
        model = model.copy().setSearchStrategy(strategy)
    rows = model.transform(queries_df).select("qid", "neighbors.id").collect()
    return [list(r.id) for r in sorted(rows, key=lambda r: r.qid)]


def recall(found: list[list[int]], base: np.ndarray, queries: np.ndarray) -> float:
    truth, _ = exact.knn(base, queries, K)
    return float(exact.recall_at_k(np.array(found), truth, K))


def exactly_k_distinct(found: list[list[int]], num_vectors: int) -> bool:
    """Every query has exactly min(k, number of indexed vectors) distinct neighbours."""
    want = min(K, num_vectors)
    return all(len(ids) == want and len(set(ids)) == want for ids in found)


def _settle(spark, jobs, settle_seconds: float) -> None:
    """A job ends with its stages, while attempts that lost to a speculative copy are
    still being killed: wait until none of the jobs' attempts is active."""
    store = spark.sparkContext._jsc.sc().statusStore()
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and any(store.job(j).numActiveTasks() for j in jobs):
        time.sleep(0.2)


def job_stats(spark, group: str, settle_seconds: float = 60) -> dict:
    """Failed and killed task attempts (all stage attempts) in the jobs of a job group,
    as Spark's status store reports them once no attempt is active any more."""
    store = spark.sparkContext._jsc.sc().statusStore()
    convert = spark.sparkContext._jvm.scala.jdk.javaapi.CollectionConverters
    jobs = list(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
    _settle(spark, jobs, settle_seconds)
    stats = {"jobs": len(jobs), "failed_tasks": 0, "killed_tasks": 0, "kill_reasons": {}}
    for job in jobs:
        data = store.job(job)
        stats["failed_tasks"] += data.numFailedTasks()
        stats["killed_tasks"] += data.numKilledTasks()
        reasons = convert.asJava(data.killedTasksSummary())  # a Scala Map
        for reason, count in dict(reasons).items():
            stats["kill_reasons"][reason] = stats["kill_reasons"].get(reason, 0) + count
    return stats


def task_attempts(spark, group: str, settle_seconds: float = 60) -> list[dict]:
    """Every task attempt of every stage attempt of a job group's jobs: stage, stage
    attempt, its number of tasks, partition, attempt, status, executor, whether it was
    speculative and its error message (failed and killed attempts)."""
    sc = spark.sparkContext
    store = sc._jsc.sc().statusStore()
    convert = sc._jvm.scala.jdk.javaapi.CollectionConverters
    jobs = list(sc.statusTracker().getJobIdsForGroup(group))
    _settle(spark, jobs, settle_seconds)
    stage_ids = sorted({int(s) for j in jobs for s in convert.asJava(store.job(j).stageIds())})
    statuses = getattr(store, "stageData$default$3")()
    quantiles = getattr(store, "stageData$default$5")()
    found = []
    for stage in stage_ids:
        for attempt in convert.asJava(store.stageData(stage, False, statuses, False, quantiles)):
            for task in convert.asJava(store.taskList(stage, attempt.attemptId(), 1 << 20)):
                error = task.errorMessage()
                found.append({
                    "stage": stage, "stage_attempt": int(attempt.attemptId()),
                    "stage_tasks": int(attempt.numTasks()),
                    "partition": int(task.partitionId()), "attempt": int(task.attempt()),
                    "status": str(task.status()), "executor": str(task.executorId()),
                    "speculative": bool(task.speculative()),
                    "error": str(error.get()) if error.isDefined() else "",
                })
    return found


def injected(attempts: list[dict], stage: str) -> dict:
    """Per Spark stage (id as text): how many of its tasks there are and how many
    attempts failed with the injected first-attempt failure of sparkann ``stage``."""
    marker = f"injected failure in the first attempt of {stage}"
    per_stage: dict = {}
    for task in attempts:
        if task["status"] == "FAILED" and marker in task["error"]:
            entry = per_stage.setdefault(str(task["stage"]), {
                "tasks": task["stage_tasks"], "failed": 0, "partitions": set(),
                "retried_ok": set()})
            entry["failed"] += 1
            entry["partitions"].add(task["partition"])
    for task in attempts:  # each failed partition later succeeded in the same stage
        entry = per_stage.get(str(task["stage"]))
        if entry and task["status"] == "SUCCESS" and task["attempt"] > 0:
            entry["retried_ok"].add(task["partition"])
    return {stage_id: {"tasks": e["tasks"], "failed": e["failed"],
                       "partitions": len(e["partitions"]),
                       "all_retried_ok": e["partitions"] <= e["retried_ok"]}
            for stage_id, e in per_stage.items()}


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


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, killed but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
