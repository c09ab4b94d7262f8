"""Spark tasks of a build: small partitions share a task, a large one has its own.

A partition is the unit of an index (one file, one seed); a task is the unit of
Spark's scheduling, with a fixed cost of its own. Many small partitions in as many
tasks spend most of a build on that cost, so the driver packs them into tasks
by their estimated rows before the shuffle (first-fit decreasing). The packing is
a pure function of the estimates: a recomputed or retried stage packs alike, and
each partition is still built on its own, with its own seed, inside its task.
"""

from __future__ import annotations

import math

import numpy as np

TASKS_PER_CORE = 2  # enough tasks that an uneven estimate still keeps every core busy


def task_capacity(sizes, cores: int, max_rows: int) -> int:
    """Rows a task is packed up to: an even share of ``TASKS_PER_CORE`` tasks per core,
    never more than ``max_rows`` (the largest partition a task holds anyway)."""
    total = float(np.sum(np.asarray(sizes, dtype=np.float64)))
    share = math.ceil(total / max(TASKS_PER_CORE * cores, 1))
    return max(1, min(int(max_rows), share))


def pack(sizes, capacity: float) -> np.ndarray:
    """The task number of each partition: first-fit decreasing on ``sizes`` (estimated
    rows) into tasks of at most ``capacity`` rows; a partition of ``capacity`` rows or
    more has a task of its own. Ties go by partition id, so equal inputs pack alike;
    tasks are numbered in order of first use."""
    sizes = np.asarray(sizes, dtype=np.float64)
    order = np.lexsort((np.arange(len(sizes)), -sizes))
    task_of = np.empty(len(sizes), dtype=np.int32)
    room: list[float] = []  # free rows of each open task
    for pid in order:
        size = float(sizes[pid])
        task = next((t for t, free in enumerate(room) if size <= free), None) \
            if size < capacity else None
        if task is None:
            task = len(room)
            room.append(max(float(capacity) - size, 0.0) if size < capacity else 0.0)
        else:
            room[task] -= size
        task_of[pid] = task
    return task_of
