"""Facts about the Spark task a Python function runs in, and thread counts."""

from __future__ import annotations


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


# Test-only: stages whose first task attempt raises, e.g. "build,search".
FAIL_FIRST_ATTEMPT_CONF = "spark.sparkann.test.failFirstAttempt"


def injected_failures(spark) -> frozenset[str]:
    """Stages named in :data:`FAIL_FIRST_ATTEMPT_CONF` (read on the driver)."""
    value = spark.conf.get(FAIL_FIRST_ATTEMPT_CONF, None) or ""
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def fail_first_attempt(stage: str, stages: frozenset[str]) -> None:
    """Inside a task: raise on the first attempt of ``stage`` if it is listed."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if stage in stages and context is not None and context.attemptNumber() == 0:
        raise RuntimeError(f"sparkann: injected failure in the first attempt of {stage}")
