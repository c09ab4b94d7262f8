"""Test support shipped with sparkann: fault injection and load logs read from
Spark settings inside tasks. Production code only calls :func:`inject` and
:func:`record_load`, which do nothing unless a ``spark.sparkann.test.*``
setting asks for it."""

from .faults import (
    FAIL_FIRST_ATTEMPT_CONF,
    LOAD_LOG_CONF,
    SLOW_TASK_CONF,
    inject,
    read_load_log,
    record_load,
)

__all__ = ["FAIL_FIRST_ATTEMPT_CONF", "LOAD_LOG_CONF", "SLOW_TASK_CONF", "inject",
           "read_load_log", "record_load"]
