"""Facts about the Spark task a Python function runs in."""

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
