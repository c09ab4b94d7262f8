"""Lost executors under local-cluster[2,1,1024]: one executor JVM is SIGKILLed
while the per-partition build runs, and another while a search runs.

Usage: SPARK_HOME=<a Spark home whose work/ directory may be written> python lost_executor_job.py

The first attempt of each build / search task stalls (a test-only conf), and
logs that it does to its executor's stderr; a thread watching those logs kills
the executor that is running such a task, so the kill always hits a busy one.
"""

from __future__ import annotations

import glob
import os
import threading
import time

from common import (
    SLOW_CONF,
    answers,
    data,
    driver_jvm_pid,
    emit,
    exactly_k_distinct,
    executor_pids,
    failed_tasks,
    kill,
    recall,
    session,
    timed,
    vectors_frame,
)

from sparkann import ANNIndex

STALL_SECONDS = 6
PARAMS = {"numPartitions": 6, "deterministic": True}


class ExecutorKiller(threading.Thread):
    """Kills the first executor whose log shows a stalled task of ``stage``."""

    def __init__(self, spark, stage: str, timeout: float = 180):
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
                    if marker in log.read():
                        self.kill_executor(path.split(os.sep)[-2])
                        return
            time.sleep(0.1)

    def kill_executor(self, executor_id: str) -> None:
        pid = executor_pids(self.jvm)[executor_id]
        kill(pid)
        self.killed = {"executor": executor_id, "pid": pid, "at": time.monotonic()}


def wait_for_executors(spark, count: int, timeout: float = 120) -> int:
    """Wait until ``count`` executors are registered (the driver is not one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = len(spark.sparkContext.statusTracker().getExecutorInfos()) - 1
        if live >= count:
            return live
        time.sleep(0.5)
    raise RuntimeError(f"fewer than {count} executors registered after {timeout} s")


def with_kill(spark, stage: str, action):
    """Run ``action`` with stalled first attempts in ``stage`` and one executor killed."""
    wait_for_executors(spark, 2)
    spark.conf.set(SLOW_CONF, f"{stage}={STALL_SECONDS}")
    spark.sparkContext.setJobGroup(f"kill-{stage}", f"an executor is lost during the {stage}")
    killer = ExecutorKiller(spark, stage)
    killer.start()
    started = time.monotonic()
    value, seconds = timed(action)
    killer.join(timeout=1)
    spark.conf.unset(SLOW_CONF)
    if killer.killed is None:
        raise RuntimeError(f"no executor was killed during the {stage}")
    killed = dict(killer.killed, at=round(killer.killed["at"] - started, 2),
                  failed_tasks=failed_tasks(spark, f"kill-{stage}"), seconds=seconds)
    return value, killed


def main() -> None:
    spark = session("local-cluster[2,1,1024]")
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    wait_for_executors(spark, 2)
    clean, clean_build = timed(ANNIndex(**PARAMS).fit, items)
    clean_answers, clean_search = timed(answers, clean, queries)
    rebuilt, build_kill = with_kill(spark, "build", lambda: ANNIndex(**PARAMS).fit(items))
    found, search_kill = with_kill(spark, "search", lambda: answers(rebuilt, queries))
    emit(
        master=spark.sparkContext.master,
        killed={"build": build_kill, "search": search_kill},
        same_checksums=clean.manifest.checksums == rebuilt.manifest.checksums,
        same_answers=found == clean_answers,
        exactly_k=exactly_k_distinct(found),
        num_queries=len(found),
        recall=recall(found, base, query_vectors),
        clean_recall=recall(clean_answers, base, query_vectors),
        seconds={"clean build": clean_build, "clean search": clean_search},
        executors_now=sorted(executor_pids(driver_jvm_pid(spark))),
    )
    spark.stop()


if __name__ == "__main__":
    main()
