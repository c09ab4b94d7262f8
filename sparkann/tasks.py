"""Facts about the Spark task a Python function runs in: CPUs, settings, threads."""

from __future__ import annotations


def task_context():
    from pyspark import TaskContext

    return TaskContext.get()


def task_cpus() -> int:
    """CPUs Spark gave the current task (1 outside a task)."""
    context = task_context()
    if context is None:
        return 1
    try:
        return max(1, int(context.cpus()))
    except Exception:  # older runtimes without cpus()
        return 1


def task_setting(key: str, default: str | None = None) -> str | None:
    """A Spark setting of the session, read inside a task.

    Spark passes a session's ``spark.*`` settings to every task of a query as
    local properties; outside a task the default is returned.
    """
    context = task_context()
    if context is None:
        return default
    value = context.getLocalProperty(key)
    return default if value is None else value


def cluster_cores(spark) -> int:
    """Cores the session can run tasks on (from settings; 2 when Spark does not say)."""
    for key in ("spark.default.parallelism", "spark.sparkann.cores"):
        configured = spark.conf.get(key, None)
        if configured:
            return max(1, int(configured))
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # Spark Connect has no SparkContext
        return 2


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
