"""A living index with Spark: add rows, delete ids, compact, rebalance.

Every operation writes only what it changes -- new partition files for the
partitions an add reaches, small delete files for a delete, delta files of the
id-location table -- and publishes a new version whose manifest names the new
and the untouched files alike. It publishes only if the version it started
from is still the newest (:class:`~sparkann.storage.ConcurrentUpdateError`
otherwise); what a failed update wrote is removed, and earlier versions stay
loadable.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import build, testing
from .build import MetaHandle, check_rows, input_rows, partition_seed, per_partition
from .build import assign as assign_rows
from .index import index_type
from .loader import (
    IndexHandle,
    LoadedIndex,
    deleted_labels,
    fresh_partition,
    location_map,
    open_index,
    partition_ids,
    partition_items,
)
from .observe import StageTimer
from .storage import tables
from .storage.format import Manifest
from .storage.fs import join
from .storage.transaction import Transaction
from .stored import item_ddl, live_positions, per_stored_partition
from .tasks import resolve_threads, threads_per_task
from .vectors import to_matrix

log = logging.getLogger(__name__)
LOCATION_FILES_MAX = 8  # id-location files per bucket before compact() rewrites the table


def located_ids(ids: DataFrame, handle: IndexHandle, manifest: Manifest) -> DataFrame:
    """(partition_id, id) of every stored row whose id is in ``ids`` (one column),
    from the id-location table: only the buckets of the wanted ids are read."""
    id_sql = manifest.id_type
    wanted = ids.select(F.col(ids.columns[0]).cast(id_sql).alias("id")).where(
        F.col("id").isNotNull()).distinct()
    buckets = manifest.locations.buckets if manifest.locations else 1
    bucketed = wanted.select("id", F.lit(0).alias("partition_id")).mapInArrow(
        tables.bucket_fn(buckets), f"bucket int, id {id_sql}, partition_id int")
    return bucketed.repartitionById(buckets, "bucket").mapInArrow(
        _locate_fn(handle), f"partition_id int, id {id_sql}")


def _locate_fn(handle: IndexHandle):
    def locate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pandas as pd

        index = open_index(handle)
        for batch in batches:
            for bucket in np.unique(batch.column("bucket").to_numpy(zero_copy_only=False)):
                mine = batch.filter(pc.equal(batch.column("bucket"), int(bucket)))
                ids = mine.column("id").to_numpy(zero_copy_only=False)
                hits = pd.DataFrame({"id": ids}).merge(location_map(index, int(bucket)), on="id")
                yield pa.RecordBatch.from_arrays(
                    [pa.array(hits["partition_id"].to_numpy(), pa.int32()),
                     pa.array(hits["id"].to_numpy(), mine.column("id").type)],
                    ["partition_id", "id"])

    return locate


def live_labels(located: DataFrame, handle: IndexHandle, id_sql: str) -> DataFrame:
    """(partition_id, id, label) of the live rows holding the located ids."""
    return located.groupBy("partition_id").applyInArrow(
        _labels_fn(handle), f"partition_id int, id {id_sql}, label int")


def _labels_fn(handle: IndexHandle):
    def labels(key, table):
        import pandas as pd

        pid = key[0].as_py()
        index = open_index(handle)
        if not index.manifest.partitions.rows[pid]:  # compacted to nothing: no live rows
            return pa.table({"partition_id": pa.array([], pa.int32()),
                             "id": pa.array([], table.column("id").type),
                             "label": pa.array([], pa.int32())})
        ids = partition_ids(index, pid)
        positions, _ = pd.Index(ids.to_numpy(zero_copy_only=False)).get_indexer_non_unique(
            table.column("id").combine_chunks().to_numpy(zero_copy_only=False))
        found = np.unique(positions[positions >= 0])
        found = np.setdiff1d(found, deleted_labels(index, pid))
        return pa.table({"partition_id": pa.array(np.full(len(found), pid), pa.int32()),
                         "id": ids.take(pa.array(found)),
                         "label": pa.array(found, pa.int32())})

    return labels


# ------------------------------------------------------------------ delete


def delete_ids(spark, manifest: Manifest, handle: IndexHandle,
               ids: DataFrame) -> tuple[Manifest, str] | None:
    """A new version hiding ``ids``; None when none of them is in the index."""
    stage = StageTimer(spark)
    with stage("find deleted ids"):
        labels = live_labels(located_ids(ids, handle, manifest), handle, manifest.id_type)
        per_partition = labels.groupBy("partition_id").agg(
            F.sort_array(F.collect_list("label")).alias("labels"))
    with Transaction(spark, manifest.root, manifest) as txn:
        with stage("write delete files"):
            if not txn.write_deletes(per_partition):
                return None  # nothing to hide: what was written goes
        return txn.commit("delete")


# --------------------------------------------------------------------- add


def add_rows(spark, manifest: Manifest, handle: IndexHandle, df: DataFrame,
             params: dict) -> tuple[Manifest, str]:
    """A new version that also holds ``df``'s rows, routed to the existing centroids;
    only the partitions they reach are rewritten."""
    stage = StageTimer(spark)
    rows, id_sql = input_rows(df, params["vectorCol"], params["idCol"],
                              [name for name, _ in manifest.item_types])
    check_item_types(rows, manifest)
    if id_sql != manifest.id_type:
        raise TypeError(f"idCol={params['idCol']!r} holds {id_sql} ids; the index holds "
                        f"{manifest.id_type} ids")
    with stage("validate input"):
        _, dim = check_rows(rows, {**manifest.params, **params})
        if dim != manifest.dim:
            raise ValueError(f"column {params['vectorCol']!r} has dimension {dim}; the index "
                             f"has dimension {manifest.dim}")
        clash = live_labels(located_ids(rows.select("id"), handle, manifest), handle,
                            id_sql).first()
        if clash is not None:
            raise ValueError(f"column {params['idCol']!r} holds ids already in the index, for "
                             f"example {params['idCol']}={clash['id']!r}; delete them first "
                             "to replace them")
    index = open_index(handle)
    meta = MetaHandle(join(manifest.root, manifest.meta_file), manifest.meta_sha256,
                      manifest.dim)
    assigned = assign_rows(rows, meta, index.metric, manifest.dim, id_sql)
    threads = threads_per_task(spark, int(params.get("numThreads", 0)),
                               manifest.num_partitions)
    with Transaction(spark, manifest.root, manifest) as txn:
        with stage("update partitions"):
            table = per_partition(assigned, manifest.num_partitions,
                                  _insert_fn(handle, threads),
                                  tables.index_schema(id_sql, manifest.item_types))
            txn.write_partitions(table)
            txn.write_locations("append")
        return txn.commit("add")


def _insert_fn(handle: IndexHandle, threads: int):
    def insert(pid: int, table: pa.Table) -> pa.Table:
        testing.inject("update")
        index = open_index(handle)
        item_types = index.manifest.item_types
        added = table.select([name for name, _ in item_types]) if item_types else None
        part = _existing(index, pid)
        vectors = to_matrix(table.column("vector"), index.manifest.dim, f"partition {pid}")
        if part is None:  # a partition without rows so far
            built = index.cls.build(vectors, index.context(pid),
                                    partition_seed(int(index.manifest.params["seed"]), pid),
                                    resolve_threads(threads))
            return tables.partition_row(pid, table.column("id"), built.store(),
                                        item_values=added, item_types=item_types)
        part.index.add(vectors, resolve_threads(threads))
        ids = pa.concat_arrays([part.ids, table.column("id").combine_chunks().cast(part.ids.type)])
        values = None
        if added is not None:
            old = partition_items(index, pid)[1]
            values = pa.concat_tables([old, added.cast(old.schema)])
        return tables.partition_row(pid, ids, part.index.store(), item_values=values,
                                    item_types=item_types)

    return insert


def check_item_types(rows: DataFrame, manifest: Manifest) -> None:
    """The added rows' item columns must have the stored types."""
    for (name, kind), (_, given) in zip(manifest.item_types, build.item_types_of(rows)):
        if kind != given:
            raise ValueError(f"itemCols: column {name!r} has type {given}; the index stores it "
                             f"as {kind} (cast it)")


def _existing(index: LoadedIndex, pid: int):
    if not index.manifest.partitions.files[pid]:
        return None
    return fresh_partition(index, pid, _keeps_vectors(index))


def _keeps_vectors(index: LoadedIndex) -> bool:
    """Whether partitions store exact vectors that an update must carry along."""
    spec = index.manifest.spec
    return index.cls.keeps_vectors(spec.params)


# ----------------------------------------------------------------- compact


def compact(spark, manifest: Manifest, handle: IndexHandle, min_deleted_share: float,
            params: dict) -> tuple[Manifest, str] | None:
    """Rebuild the partitions whose deleted share is at least ``min_deleted_share``
    without their deleted rows; None when there are none."""
    partitions = manifest.partitions
    touched = [pid for pid, (rows, gone) in enumerate(zip(partitions.rows, partitions.deleted))
               if gone and gone >= min_deleted_share * rows]
    if not touched:
        return None
    threads = threads_per_task(spark, int(params.get("numThreads", 0)), len(touched))
    work = spark.createDataFrame([(pid,) for pid in touched], "partition_id int")
    with Transaction(spark, manifest.root, manifest) as txn:
        txn.write_partitions(work.repartition(len(touched), "partition_id").mapInArrow(
            _compact_fn(handle, threads), tables.index_schema(manifest.id_type,
                                                              manifest.item_types)),
            clear_deletes=True)
        locations = manifest.locations
        if locations is None or max(len(f) for f in locations.files) > LOCATION_FILES_MAX:
            txn.write_locations("replace")  # many adds left many small files: rewrite once
        return txn.commit("compact")


def _compact_fn(handle: IndexHandle, threads: int):
    def rebuild(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(handle)
        for batch in batches:
            for pid in batch.column("partition_id").to_pylist():
                part = fresh_partition(index, pid, _keeps_vectors(index))
                keep = live_positions(index, pid, part.index.count)
                seed = partition_seed(int(index.manifest.params["seed"]), pid)
                fresh = part.index.compact(keep.to_numpy(), seed, resolve_threads(threads))
                item_types = index.manifest.item_types
                values = partition_items(index, pid)[1].take(keep) if item_types else None
                yield from tables.partition_row(pid, part.ids.take(keep),
                                                fresh.store(), item_values=values,
                                                item_types=item_types).to_batches()

    return rebuild


# ------------------------------------------------------------------ helpers


def live_rows(spark, manifest: Manifest, handle: IndexHandle) -> DataFrame:
    """Every live (id, vector, item columns...) of a version, recovered from its
    partitions."""
    return per_stored_partition(spark, manifest, handle, _live_rows,
                                f"id {manifest.id_type}, vector array<float>"
                                + item_ddl(manifest))


def _live_rows(index: LoadedIndex, pid: int) -> pa.RecordBatch:
    from .vectors import list_array

    part = fresh_partition(index, pid, _keeps_vectors(index))
    keep = live_positions(index, pid, part.index.count)
    values = (partition_items(index, pid)[1].take(keep) if index.manifest.item_types
              else pa.table({}))
    return pa.RecordBatch.from_arrays(
        [part.ids.take(keep), list_array(part.index.live_vectors(keep.to_numpy())),
         *[values.column(n).combine_chunks() for n in values.column_names]],
        ["id", "vector", *values.column_names])


# --------------------------------------------------------------- rebalance


def rebalance(spark, manifest: Manifest, handle: IndexHandle, params: dict, txn: Transaction,
              stage: StageTimer) -> tuple[build.Built, Manifest, DataFrame]:
    """Rebuild every live row of ``manifest`` around newly trained centroids, through
    ``txn`` (started from ``manifest``); returns what was built, the new version's
    header and the rows. Index types that store no exact vectors are rebuilt
    without calibration."""
    params = {**params, "numPartitions": int(manifest.params["numPartitions"])}
    if not index_type(manifest.index_type).exact_vectors:
        log.warning("sparkann: indexType=%r stores no exact vectors; the rebalanced version is "
                    "not calibrated and uses the fixed search defaults", manifest.index_type)
        params["targetRecall"] = 0.0
    rows = live_rows(spark, manifest, handle)
    built, _, dim = build.build_index(rows, manifest.id_type, params, txn, stage)
    header = build.new_manifest(manifest.root, built, params, manifest.user_set, dim,
                                manifest.id_type, stage.seconds)
    return built, header, rows
