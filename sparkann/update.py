"""A living index with Spark: add rows, delete ids, compact, rebalance, vacuum.

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
from dataclasses import replace
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import testing
from .build import (
    MetaHandle,
    bucket_fn,
    check_rows,
    input_rows,
    located_files,
    partition_seed,
    per_partition,
    removed_on_failure,
    write_location_run,
    write_locations,
)
from .build import assign as assign_rows
from .loader import (
    IndexHandle,
    LoadedIndex,
    deleted_labels,
    fresh_partition,
    location_map,
    open_index,
    partition_ids,
)
from .observe import StageTimer
from .storage import tables
from .storage.format import DeleteFile, Locations, Manifest
from .storage.fs import join
from .storage.versions import new_run, publish
from .tasks import resolve_threads, threads_per_task
from .vectors import to_matrix

log = logging.getLogger(__name__)
LOCATION_FILES_MAX = 8  # id-location files per bucket before compact() rewrites the table


def located_ids(ids: DataFrame, handle: IndexHandle, manifest: Manifest) -> DataFrame:
    """(partition_id, id) of every stored row whose id is in ``ids`` (one column),
    from the id-location table: only the buckets of the wanted ids are read."""
    kind = manifest.id_type
    wanted = ids.select(F.col(ids.columns[0]).cast(kind).alias("id")).where(
        F.col("id").isNotNull()).distinct()
    buckets = manifest.locations.buckets if manifest.locations else 1
    bucketed = wanted.select("id", F.lit(0).alias("partition_id")).mapInArrow(
        bucket_fn(buckets), f"bucket int, id {kind}, partition_id int")
    return bucketed.repartitionById(buckets, "bucket").mapInArrow(
        _locate_fn(handle), f"partition_id int, id {kind}")


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


def live_labels(located: DataFrame, handle: IndexHandle, kind: str) -> DataFrame:
    """(partition_id, id, label) of the live rows holding the located ids."""
    return located.groupBy("partition_id").applyInArrow(
        _labels_fn(handle), f"partition_id int, id {kind}, label int")


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
    run = new_run("deletes")
    with stage("write delete files"), removed_on_failure(spark, manifest.root, [run]):
        rows = per_partition.mapInArrow(
            delete_rows_fn, "partition_id int, pid int, labels array<int>, count long, "
            "checksum string")
        tables.write_table(rows, join(manifest.root, run), "partition_id")
        written = tables.written(spark, manifest.root, run, ["partition_id", "count", "checksum"])
    if not written:
        store_delete(spark, manifest.root, run)
        return None
    partitions = manifest.partitions
    for row, file in written:
        pid = row["partition_id"]
        added = DeleteFile(file, int(row["count"]), row["checksum"])
        partitions = partitions.with_partition(pid, deletes=partitions.deletes[pid] + [added])
    return _publish(spark, manifest, replace(manifest, partitions=partitions), [run])


def delete_rows_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(partition_id, labels) rows as delete-file rows: counted and checksummed."""
    for batch in batches:
        labels = batch.column("labels")
        counts, sums = [], []
        for row in range(batch.num_rows):
            values = labels[row].values.to_numpy(zero_copy_only=False)
            counts.append(len(values))
            sums.append(tables.labels_checksum(values))
        yield pa.RecordBatch.from_arrays(
            [batch.column("partition_id"), batch.column("partition_id"), labels,
             pa.array(counts, pa.int64()), pa.array(sums, pa.string())],
            ["partition_id", "pid", "labels", "count", "checksum"])


def store_delete(spark, root: str, run: str) -> None:
    from .storage.fs import store_for

    store_for(spark, root).delete(join(root, run))


# --------------------------------------------------------------------- add


def add_rows(spark, manifest: Manifest, handle: IndexHandle, df: DataFrame,
             params: dict) -> tuple[Manifest, str]:
    """A new version that also holds ``df``'s rows, routed to the existing centroids;
    only the partitions they reach are rewritten."""
    stage = StageTimer(spark)
    rows, kind = input_rows(df, params["vectorCol"], params["idCol"])
    if kind != manifest.id_type:
        raise TypeError(f"idCol={params['idCol']!r} holds {kind} ids; the index holds "
                        f"{manifest.id_type} ids")
    with stage("validate input"):
        _, dim = check_rows(rows, {**manifest.params, **params})
        if dim != manifest.dim:
            raise ValueError(f"column {params['vectorCol']!r} has dimension {dim}; the index "
                             f"has dimension {manifest.dim}")
        clash = live_labels(located_ids(rows.select("id"), handle, manifest), handle,
                            kind).first()
        if clash is not None:
            raise ValueError(f"column {params['idCol']!r} holds ids already in the index, for "
                             f"example {params['idCol']}={clash['id']!r}; delete them first "
                             "to replace them")
    index = open_index(handle)
    meta = MetaHandle(join(manifest.root, manifest.meta_file), manifest.meta_sha256,
                      manifest.dim)
    assigned = assign_rows(rows, meta, index.metric, manifest.dim, kind)
    threads = threads_per_task(spark, int(params.get("numThreads", 0)),
                               manifest.num_partitions)
    run, locations_run = new_run("data"), new_run("locations")
    with stage("update partitions"), removed_on_failure(spark, manifest.root,
                                                         [run, locations_run]):
        table = per_partition(assigned, manifest.num_partitions, _insert_fn(handle, threads),
                              tables.index_schema(kind))
        tables.write_table(table, join(manifest.root, run), "partition_id")
        written = tables.written(spark, manifest.root, run, tables.INDEX_FACTS)
        buckets = manifest.locations.buckets if manifest.locations else 1
        first_new = {row["partition_id"]: manifest.partitions.rows[row["partition_id"]]
                     for row, _ in written}
        new_locations = write_location_run(spark, manifest.root, locations_run,
                                           [file for _, file in written], kind, buckets,
                                           first_new)
    partitions = manifest.partitions
    for row, file in written:
        partitions = partitions.with_partition(
            row["partition_id"], files=file, rows=int(row["num_rows"]),
            payload_bytes=int(row["payload_bytes"]), checksums=row["checksum"],
            sq_errors=float(row["sq_error"] or 0.0))
    locations = _with_location_files(spark, manifest.root, manifest.locations, new_locations,
                                     buckets)
    updated = replace(manifest, partitions=partitions, locations=locations)
    return _publish(spark, manifest, updated, [run, locations_run])


def _insert_fn(handle: IndexHandle, threads: int):
    def insert(pid: int, table: pa.Table) -> pa.Table:
        testing.inject("update")
        index = open_index(handle)
        part = _existing(index, pid)
        vectors = to_matrix(table.column("vector"), index.manifest.dim, f"partition {pid}")
        if part is None:  # a partition without rows so far
            built = index.cls.build(vectors, index.context(pid),
                                    partition_seed(int(index.manifest.params["seed"]), pid),
                                    resolve_threads(threads))
            return tables.partition_row(pid, table.column("id"), built.store())
        part.index.add(vectors, resolve_threads(threads))
        ids = pa.concat_arrays([part.ids, table.column("id").combine_chunks().cast(part.ids.type)])
        return tables.partition_row(pid, ids, part.index.store())

    return insert


def _existing(index: LoadedIndex, pid: int):
    if not index.manifest.partitions.files[pid]:
        return None
    return fresh_partition(index, pid, _keeps_vectors(index))


def _keeps_vectors(index: LoadedIndex) -> bool:
    """Whether partitions store exact vectors that an update must carry along."""
    spec = index.manifest.spec
    return index.cls.keeps_vectors(spec.params)


def _with_location_files(spark, root: str, locations: Locations | None, written: list,
                         buckets: int) -> Locations:
    files = [list(f) for f in locations.files] if locations else [[] for _ in range(buckets)]
    for row, file in written:
        if file not in files[row["bucket"]]:
            files[row["bucket"]].append(file)
    return located_files(spark, root, buckets, files, locations)


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
    run = new_run("data")
    with removed_on_failure(spark, manifest.root, [run]):
        table = work.repartition(len(touched), "partition_id").mapInArrow(
            _compact_fn(handle, threads), tables.index_schema(manifest.id_type))
        tables.write_table(table, join(manifest.root, run), "partition_id")
        written = tables.written(spark, manifest.root, run, tables.INDEX_FACTS)
    for row, file in written:
        partitions = partitions.with_partition(
            row["partition_id"], files=file, rows=int(row["num_rows"]),
            payload_bytes=int(row["payload_bytes"]), checksums=row["checksum"],
            sq_errors=float(row["sq_error"] or 0.0), deletes=[])
    locations, runs = manifest.locations, [run]
    if locations is None or max(len(f) for f in locations.files) > LOCATION_FILES_MAX:
        # many adds left many small id-location files: rewrite the table once
        locations, written_run = write_locations(spark, manifest.root, partitions,
                                                 sum(partitions.rows), manifest.id_type)
        runs.append(written_run)
    compacted = replace(manifest, partitions=partitions, locations=locations)
    return _publish(spark, manifest, compacted, runs)


def _compact_fn(handle: IndexHandle, threads: int):
    def rebuild(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(handle)
        for batch in batches:
            for pid in batch.column("partition_id").to_pylist():
                part = fresh_partition(index, pid, _keeps_vectors(index))
                keep = np.setdiff1d(np.arange(part.index.count), deleted_labels(index, pid))
                seed = partition_seed(int(index.manifest.params["seed"]), pid)
                fresh = part.index.compact(keep, seed, resolve_threads(threads))
                yield from tables.partition_row(pid, part.ids.take(pa.array(keep)),
                                                fresh.store()).to_batches()

    return rebuild


# ------------------------------------------------------------------ helpers


def live_rows(spark, manifest: Manifest, handle: IndexHandle) -> DataFrame:
    """Every live (id, vector) of a version, recovered from its partitions."""
    pids = [(pid,) for pid, f in enumerate(manifest.partitions.files) if f]
    work = spark.createDataFrame(pids, "partition_id int")
    return work.repartition(max(1, min(len(pids), 200)), "partition_id").mapInArrow(
        _live_fn(handle), f"id {manifest.id_type}, vector array<float>")


def _live_fn(handle: IndexHandle):
    from .vectors import list_array

    def recover(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(handle)
        for batch in batches:
            for pid in batch.column("partition_id").to_pylist():
                part = fresh_partition(index, pid, _keeps_vectors(index))
                keep = np.setdiff1d(np.arange(part.index.count), deleted_labels(index, pid))
                vectors = part.index.live_vectors(keep)
                yield pa.RecordBatch.from_arrays(
                    [part.ids.take(pa.array(keep)), list_array(vectors)], ["id", "vector"])

    return recover


def _publish(spark, base: Manifest, updated: Manifest,
             written: list[str]) -> tuple[Manifest, str]:
    """Publish ``updated`` on top of ``base``; remove what was written if that fails."""
    with removed_on_failure(spark, base.root, written):
        return publish(spark, updated, base.version)
