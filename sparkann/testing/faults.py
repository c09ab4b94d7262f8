"""Test-only faults and observations, switched on by Spark settings.

* ``spark.sparkann.test.failFirstAttempt=build,search`` makes the first attempt
  of every task of those stages raise.
* ``spark.sparkann.test.slowTaskSeconds=build=5,search@0=20`` stalls the first
  attempt of every build task (or of the task of Spark partition 0 of a
  search) for that long: a straggler, or a window in which to kill an executor.
* ``spark.sparkann.test.loadLog=<dir>`` makes every load of an index partition
  into a worker cache append a line to a file in ``<dir>`` (local paths only).
* ``spark.sparkann.test.commitFault=after,check`` (on the driver) makes publishing a
  version raise at those points: ``before`` creating the manifest, right ``after``
  creating it, and while ``check``-ing whether a commit that raised succeeded.

Settings are read inside the task (Spark passes session settings to tasks), so
nothing is threaded through the library's own settings objects.
"""

from __future__ import annotations

import json
import logging
import os
import time

from ..tasks import task_context, task_setting

FAIL_FIRST_ATTEMPT_CONF = "spark.sparkann.test.failFirstAttempt"
SLOW_TASK_CONF = "spark.sparkann.test.slowTaskSeconds"
LOAD_LOG_CONF = "spark.sparkann.test.loadLog"
COMMIT_FAULT_CONF = "spark.sparkann.test.commitFault"

log = logging.getLogger(__name__)
_stalled: set = set()  # (stage id, partition) whose task already slept in this worker


def inject(stage: str) -> None:
    """Inside a task: apply the faults the settings ask for to ``stage``."""
    context = task_context()
    if context is None or context.attemptNumber() != 0:
        return
    fail = task_setting(FAIL_FIRST_ATTEMPT_CONF) or ""
    slow = task_setting(SLOW_TASK_CONF) or ""
    for name, partition, seconds in (slow_spec(p) for p in slow.split(",") if p.strip()):
        if name == stage and partition in (None, context.partitionId()):
            _stall(stage, context, seconds)
    if stage in {part.strip() for part in fail.split(",")}:
        raise RuntimeError(f"sparkann: injected failure in the first attempt of {stage}")


def commit_fault(spark, point: str) -> None:
    """On the driver: raise at ``point`` of publishing if the session's settings ask."""
    wanted = spark.conf.get(COMMIT_FAULT_CONF, None) if spark is not None else None
    if wanted and point in {part.strip() for part in wanted.split(",")}:
        raise OSError(f"sparkann: injected failure {point} the manifest commit")


def slow_spec(text: str) -> tuple:
    """``stage[@partition]=seconds`` as (stage, partition or None, seconds)."""
    try:
        target, seconds = text.split("=")
        stage, _, partition = target.strip().partition("@")
        return stage, int(partition) if partition else None, float(seconds)
    except ValueError:
        raise ValueError(
            f"{SLOW_TASK_CONF}: expected 'stage[@partition]=seconds', got {text.strip()!r}"
        ) from None


def _stall(stage: str, context, seconds: float) -> None:
    """Sleep once per task, however often it calls the hook (or its stage reruns here)."""
    key = (context.stageId(), context.partitionId())
    if key not in _stalled:
        _stalled.add(key)
        log.warning("sparkann: test stall of %.1f s in %s task attempt %d",
                    seconds, stage, context.taskAttemptId())
        time.sleep(seconds)


def record_load(what: str, partition: int, nbytes: int) -> None:
    """Inside a task: note that a partition was loaded into this worker's cache."""
    directory = task_setting(LOAD_LOG_CONF)
    if not directory:
        return
    context = task_context()
    line = {"what": what, "partition": partition, "bytes": nbytes, "pid": os.getpid(),
            "executor": _executor_id(), "stage": context.stageId() if context else None}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"loads-{os.getpid()}.jsonl"), "a") as out:
        out.write(json.dumps(line) + "\n")


def read_load_log(directory: str) -> list[dict]:
    """Every load recorded under ``directory``."""
    lines: list[dict] = []
    if not os.path.isdir(directory):
        return lines
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as handle:
            lines += [json.loads(line) for line in handle if line.strip()]
    return lines


def _executor_id() -> str:
    return os.environ.get("SPARK_EXECUTOR_ID") or task_setting("spark.executor.id") or "driver"
