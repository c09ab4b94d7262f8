"""Test support shipped with sparkann: fault injection and load logs read from
Spark settings inside tasks. Production code only calls :func:`inject` and
:func:`record_load`, which do nothing unless a ``spark.sparkann.test.*``
setting asks for it."""

from .faults import (
    COMMIT_FAULT_CONF,
    FAIL_FIRST_ATTEMPT_CONF,
    LOAD_LOG_CONF,
    SLOW_TASK_CONF,
    commit_fault,
    inject,
    read_load_log,
    record_load,
)

__all__ = ["COMMIT_FAULT_CONF", "FAIL_FIRST_ATTEMPT_CONF", "LOAD_LOG_CONF", "SLOW_TASK_CONF",
           "commit_fault", "inject", "read_load_log", "record_load"]
