"""Facts about the Spark task a Python function runs in, and thread counts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


def task_cpus() -> int:
    """CPUs Spark gave the current task (1 outside a task)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return 1
    try:
        return max(1, int(context.cpus()))
    except Exception:  # older runtimes without cpus()
        return 1


def cluster_cores(spark) -> int:
    """Cores the session can run tasks on (1 when Spark does not say)."""
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    try:
        return int(spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect has no SparkContext
        return 1


def threads_per_task(spark, requested: int, num_tasks: int) -> int:
    """``requested`` threads, or (0) enough that ``num_tasks`` tasks fill the cores.

    The result is a floor: tasks use at least their own CPUs (see
    :func:`resolve_threads`).
    """
    if requested:
        return requested
    return max(1, cluster_cores(spark) // max(num_tasks, 1))


def resolve_threads(hint: int) -> int:
    """Inside a task: the driver's hint, never fewer than the task's CPUs."""
    return max(hint, task_cpus())


# Test-only fault injection, read once on the driver when a job is planned.
# Stages whose first task attempt raises, e.g. "build,search".
FAIL_FIRST_ATTEMPT_CONF = "spark.sparkann.test.failFirstAttempt"
# Stages whose first task attempt stalls, e.g. "build=5" (every task) or
# "search@0=20" (only the task of Spark partition 0): a straggler or a window
# in which a test kills an executor.
SLOW_TASK_CONF = "spark.sparkann.test.slowTaskSeconds"


@dataclass(frozen=True)
class FaultPlan:
    """Test-only faults for the first attempt of chosen tasks (see the confs above)."""

    fail: frozenset = frozenset()
    slow: tuple = ()  # (stage, Spark partition or None for all, seconds)

    def __bool__(self) -> bool:
        return bool(self.fail or self.slow)


def injected_failures(spark) -> FaultPlan:
    """The faults the session's test-only confs ask for (read on the driver)."""
    fail = spark.conf.get(FAIL_FIRST_ATTEMPT_CONF, None) or ""
    slow = spark.conf.get(SLOW_TASK_CONF, None) or ""
    return FaultPlan(
        fail=frozenset(part.strip() for part in fail.split(",") if part.strip()),
        slow=tuple(_slow_spec(part) for part in slow.split(",") if part.strip()),
    )


def _slow_spec(text: str) -> tuple:
    """``stage[@partition]=seconds`` as (stage, partition or None, seconds)."""
    try:
        target, seconds = text.split("=")
        stage, _, partition = target.strip().partition("@")
        return stage, int(partition) if partition else None, float(seconds)
    except ValueError:
        raise ValueError(
            f"{SLOW_TASK_CONF}: expected 'stage[@partition]=seconds', got {text.strip()!r}"
        ) from None


_stalled: set = set()  # (stage id, partition) whose task already slept in this worker


def fail_first_attempt(stage: str, plan) -> None:
    """Inside a task: apply ``plan`` (a :class:`FaultPlan`, or a set of stage
    names that fail) to ``stage`` on the first attempt of the task."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if not plan or context is None or context.attemptNumber() != 0:
        return
    if not isinstance(plan, FaultPlan):
        plan = FaultPlan(fail=frozenset(plan))
    for name, partition, seconds in plan.slow:
        if name == stage and partition in (None, context.partitionId()):
            _stall(stage, context, seconds)
    if stage in plan.fail:
        raise RuntimeError(f"sparkann: injected failure in the first attempt of {stage}")


def _stall(stage: str, context, seconds: float) -> None:
    """Sleep once per task, however often it calls the hook (or its stage reruns here)."""
    key = (context.stageId(), context.partitionId())
    if key not in _stalled:
        _stalled.add(key)
        log.warning("sparkann: test stall of %.1f s in %s task attempt %d",
                    seconds, stage, context.taskAttemptId())
        time.sleep(seconds)
