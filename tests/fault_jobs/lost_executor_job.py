"""Lost executors under local-cluster[2,1,1024]: one executor JVM is SIGKILLed while
the per-partition build runs, another while a query-local search runs, and another
while the search stage of a partition-side search runs.

Usage: SPARK_HOME=<a Spark home whose work/ directory may be written> python lost_executor_job.py

The first attempt of the chosen tasks stalls (``spark.sparkann.test.slowTaskSeconds``,
read inside the task), and logs that it does to its executor's stderr; a thread
watching those logs kills the executor that is running such a task, so the kill
always hits a busy one. Spark's task records then show the attempts that the
executor's loss failed.
"""

from __future__ import annotations

import glob
import os
import threading
import time

from common import (
    SLOW_CONF,
    STRATEGIES,
    alive,
    answers,
    checksums,
    data,
    driver_jvm_pid,
    emit,
    exactly_k_distinct,
    executor_pids,
    kill,
    recall,
    session,
    task_attempts,
    timed,
    vectors_frame,
)

from sparkann import ANNIndex

STALL_SECONDS = 6
PARAMS = {"numPartitions": 6, "deterministic": True, "targetRecall": 0, "seed": 11}


class ExecutorKiller(threading.Thread):
    """Kills the first executor whose log shows a stalled task of ``stage``."""

    def __init__(self, spark, stage: str, timeout: float = 300):
        super().__init__(daemon=True)
        self.stage, self.deadline = stage, time.monotonic() + timeout
        self.logs = os.path.join(os.environ["SPARK_HOME"], "work",
                                 spark.sparkContext.applicationId, "*", "stderr")
        self.jvm = driver_jvm_pid(spark)
        self.seen = {path: os.path.getsize(path) for path in glob.glob(self.logs)}
        self.killed = None

    def run(self) -> None:
        marker = f"in {self.stage} task attempt"
        while self.killed is None and time.monotonic() < self.deadline:
            for path in glob.glob(self.logs):
                with open(path, errors="replace") as log:
                    log.seek(self.seen.get(path, 0))
                    line = next((t for t in log.read().splitlines() if marker in t), None)
                if line is not None:
                    self.kill_executor(path.split(os.sep)[-2], line.strip())
                    return
            time.sleep(0.1)

    def kill_executor(self, executor_id: str, line: str) -> None:
        pid = executor_pids(self.jvm)[executor_id]
        kill(pid)
        self.killed = {"executor": executor_id, "pid": pid, "at": time.monotonic(),
                       "log_line": line}


def wait_for_executors(spark, count: int, timeout: float = 180) -> int:
    """Wait until ``count`` executors are registered (the driver is not one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = len(spark.sparkContext.statusTracker().getExecutorInfos()) - 1
        if live >= count:
            return live
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {count} executors registered after {timeout} s")


def with_kill(spark, name: str, stage: str, slow: str, action):
    """Run ``action`` with the first attempts ``slow`` names stalled, and the executor
    of the first stalled ``stage`` task killed; returns its value and what happened."""
    wait_for_executors(spark, 2)
    group = f"kill-{name}"
    spark.conf.set(SLOW_CONF, slow)
    spark.sparkContext.setJobGroup(group, f"an executor is lost during the {name}")
    killer = ExecutorKiller(spark, stage)
    killer.start()
    started = time.monotonic()
    try:
        value, seconds = timed(action)
    finally:
        spark.conf.unset(SLOW_CONF)
        spark.sparkContext.setJobGroup("after", "no faults")
    killer.join(timeout=1)
    if killer.killed is None:
        raise RuntimeError(f"no executor was killed during the {name}")
    executor = killer.killed["executor"]
    attempts = task_attempts(spark, group)
    lost = [a for a in attempts if a["status"] == "FAILED" and a["executor"] == executor
            and "ExecutorLostFailure" in a["error"]]
    killed = dict(killer.killed, at=round(killer.killed["at"] - started, 2), seconds=seconds,
                  slow=slow, still_running=alive(killer.killed["pid"]),
                  failed_tasks=sum(a["status"] == "FAILED" for a in attempts),
                  lost_tasks=len(lost), lost_errors=sorted({a["error"][:160] for a in lost}),
                  stage_attempts=sorted({(a["stage"], a["stage_attempt"]) for a in attempts}))
    return value, killed


def main() -> None:
    spark = session("local-cluster[2,1,1024]")
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    route_tasks = queries.rdd.getNumPartitions()
    wait_for_executors(spark, 2)
    clean, clean_build = timed(ANNIndex(**PARAMS).fit, items)
    clean_found = {s: timed(answers, clean, queries, s) for s in STRATEGIES}
    rebuilt, build_kill = with_kill(spark, "build", "build", f"build={STALL_SECONDS}",
                                    lambda: ANNIndex(**PARAMS).fit(items))
    # Query-local search: one stage, every task stalls.
    local, local_kill = with_kill(spark, "search-local", "search", f"search={STALL_SECONDS}",
                                  lambda: answers(rebuilt, queries, "local"))
    # Partition-side search: only tasks of the search stage stall (its Spark partitions
    # past the route stage's), so the kill also loses the route stage's shuffle output.
    searched = ",".join(f"search@{p}={STALL_SECONDS}" for p in range(route_tasks, 6))
    partition, partition_kill = with_kill(spark, "search-partition", "search", searched,
                                          lambda: answers(rebuilt, queries, "partition"))
    found = {"local": local, "partition": partition}
    num_vectors = rebuilt.manifest.num_vectors
    emit(
        master=spark.sparkContext.master,
        route_tasks=route_tasks,
        killed={"build": build_kill, "search-local": local_kill,
                "search-partition": partition_kill},
        same_checksums=checksums(clean) == checksums(rebuilt),
        num_vectors=num_vectors,
        strategies={s: {
            "same_answers": found[s] == clean_found[s][0],
            "exactly_k": exactly_k_distinct(found[s], num_vectors),
            "num_queries": len(found[s]),
            "recall": recall(found[s], base, query_vectors),
            "clean_recall": recall(clean_found[s][0], base, query_vectors),
            "clean_seconds": clean_found[s][1],
        } for s in STRATEGIES},
        seconds={"clean build": clean_build},
        executors_now=sorted(executor_pids(driver_jvm_pid(spark))),
    )
    spark.stop()


if __name__ == "__main__":
    main()
