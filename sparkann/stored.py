"""Rows of every stored partition of a version, computed in tasks (a few partitions
per task) from the partition files, verified against the manifest."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from .loader import IndexHandle, LoadedIndex, deleted_labels, open_index
from .storage.format import Manifest


def per_stored_partition(spark, manifest: Manifest, handle: IndexHandle, rows_of,
                         schema: str, max_tasks: int = 200) -> DataFrame:
    """``rows_of(index, pid)`` (a record batch of ``schema``) of every stored partition,
    in at most ``max_tasks`` tasks of a few partitions each."""
    pids = [(pid,) for pid, f in enumerate(manifest.partitions.files) if f]
    work = spark.createDataFrame(pids, "partition_id int")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(handle)
        for batch in batches:
            for pid in batch.column("partition_id").to_pylist():
                yield rows_of(index, pid)

    return work.repartition(max(1, min(len(pids), max_tasks)), "partition_id").mapInArrow(
        run, schema)


def live_positions(index: LoadedIndex, pid: int, count: int) -> pa.Array:
    """The labels of a partition's rows that are not deleted."""
    return pa.array(np.setdiff1d(np.arange(count), deleted_labels(index, pid)))


def item_ddl(manifest: Manifest) -> str:
    """The stored item columns as the tail of a Spark DDL schema (", `name` type...")."""
    return "".join(f", `{name}` {kind}" for name, kind in manifest.item_types)
