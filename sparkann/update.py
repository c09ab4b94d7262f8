"""Living indexes with Spark: add rows, delete ids, compact, rebalance.

Every operation writes only the partitions it touches into a new data
directory and publishes a new version whose manifest points at the new and
the untouched partitions alike; earlier versions stay loadable.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import pq, storage
from .build import (
    BuildSettings,
    StageTimer,
    _assign_fn,
    _table_schema,
    check_rows,
    partition_row,
    partition_seed,
    with_partition_ids,
)
from .partitions import HNSWPartition, PQPartition
from .router import ShardPlan
from .search import _plan
from .vectors import id_type, normalize_rows, to_matrix, vector_column

log = logging.getLogger(__name__)


def add_rows(manifest: storage.Manifest, df: DataFrame,
             settings: BuildSettings) -> storage.Manifest:
    """Route ``df``'s rows to the existing centroids and insert them into their partitions."""
    spark = df.sparkSession
    stage = StageTimer(spark)
    kind = id_type(df, settings.id_col)
    if kind != manifest.id_type:
        raise TypeError(f"idCol={settings.id_col!r} holds {kind} ids; "
                        f"the index holds {manifest.id_type} ids")
    rows = df.select(
        F.col(settings.id_col).cast(kind).alias("id"),
        vector_column(df, settings.vector_col).alias("vector"),
    )
    with stage("validate input"):
        _, dim = check_rows(rows, settings)
        if dim != manifest.dim:
            raise ValueError(f"column {settings.vector_col!r} has dimension {dim}; "
                             f"the index has {manifest.dim}")
        _refuse_existing_ids(rows, manifest, settings)
    plan = _plan(manifest)
    routed = with_partition_ids(_assign_to_filled(rows, manifest, plan, kind), plan)
    touched = [r.partition_id for r in routed.select("partition_id").distinct().collect()]
    old = storage.read_table(spark, manifest).where(F.col("partition_id").isin(touched))
    updated = routed.groupBy("partition_id").cogroup(old.groupBy("partition_id")).applyInArrow(
        _insert_fn(manifest, settings), _table_schema(kind)
    )
    with stage("rebuild touched partitions"):
        return _publish_update(spark, manifest, updated, touched)


def delete_ids(manifest: storage.Manifest, ids: DataFrame) -> storage.Manifest:
    """Hide ``ids`` from every answer; payloads are copied as they are."""
    spark = ids.sparkSession
    located = storage.read_table(spark, manifest, ["partition_id", "ids"]).select(
        "partition_id", F.posexplode("ids").alias("label", "id")
    )
    wanted = ids.select(F.col(ids.columns[0]).cast(manifest.id_type).alias("id")).distinct()
    hits = located.join(wanted, "id")
    labels = hits.groupBy("partition_id").agg(F.collect_list("label").alias("new_deleted"))
    touched = [r.partition_id for r in labels.select("partition_id").collect()]
    if not touched:
        return manifest
    old = storage.read_table(spark, manifest).where(F.col("partition_id").isin(touched))
    schema = _table_schema(manifest.id_type)
    updated = old.join(labels, "partition_id").mapInArrow(_mark_deleted_fn(), schema)
    return _publish_update(spark, manifest, updated, touched)


def compact(manifest: storage.Manifest, min_deleted_share: float,
            settings: BuildSettings) -> storage.Manifest:
    """Rebuild the partitions whose deleted share is at least ``min_deleted_share``."""
    touched = [
        pid
        for pid, (rows, gone) in enumerate(zip(manifest.partition_rows, manifest.deleted_counts))
        if gone and gone / rows >= min_deleted_share
    ]
    if not touched:
        return manifest
    spark = storage.active_session()
    old = storage.read_table(spark, manifest).where(F.col("partition_id").isin(touched))
    updated = old.mapInArrow(_compact_fn(manifest, settings), _table_schema(manifest.id_type))
    return _publish_update(spark, manifest, updated, touched)


def live_rows(manifest: storage.Manifest, spark) -> DataFrame:
    """Every live (id, vector) of the index, recovered from its partitions."""
    table = storage.read_table(spark, manifest)
    return table.mapInArrow(_live_fn(manifest), f"id {manifest.id_type}, vector array<float>")


def _refuse_existing_ids(rows: DataFrame, manifest, settings) -> None:
    existing = storage.read_table(rows.sparkSession, manifest, ["ids"]).select(
        F.explode("ids").alias("id"))
    clash = rows.select("id").join(existing, "id").first()
    if clash is not None:
        raise ValueError(
            f"column {settings.id_col!r} holds ids already in the index, for example "
            f"{settings.id_col}={clash['id']!r}; delete them first to replace them"
        )


def _assign_to_filled(rows: DataFrame, manifest, plan: ShardPlan, kind: str) -> DataFrame:
    """Nearest centroid among the clusters that have partitions."""
    filled = np.nonzero(plan.counts > 0)[0]
    assigned = rows.mapInArrow(
        _assign_fn(manifest.centroids[filled], manifest.metric, manifest.dim),
        f"id {kind}, vector array<float>, cluster int",
    )
    lookup = F.array(*map(F.lit, filled.tolist()))
    return assigned.withColumn("cluster", F.element_at(lookup, F.col("cluster") + 1))


def _publish_update(spark, manifest, updated: DataFrame, touched: list[int]) -> storage.Manifest:
    data_dir = storage.new_data_dir()
    with storage.removed_on_failure(spark, manifest.root, data_dir):
        storage.write_table(updated, storage.join(manifest.root, data_dir))
    written = storage.table_stats(spark, storage.join(manifest.root, data_dir))
    stats = {s.partition_id: s for s in written}
    if sorted(stats) != sorted(touched):
        raise RuntimeError(
            f"the update wrote partitions {sorted(stats)}, expected {sorted(touched)}")
    dirs, rows, sums, vsums, gone, nbytes, errors = (list(x) for x in (
        manifest.partition_dirs, manifest.partition_rows, manifest.checksums,
        manifest.vector_checksums, manifest.deleted_counts, manifest.partition_bytes,
        manifest.partition_errors))
    for pid, s in stats.items():
        dirs[pid], rows[pid], sums[pid] = data_dir, s.num_rows, s.checksum
        vsums[pid], gone[pid] = s.vectors_checksum or "", s.num_deleted
        nbytes[pid], errors[pid] = s.nbytes, s.sq_error
    live = np.asarray(rows) - np.asarray(gone)
    cluster_sizes = np.bincount(_plan(manifest).cluster_of, weights=live,
                                minlength=len(manifest.centroids))
    new_manifest = replace(
        manifest, partition_dirs=dirs, partition_rows=rows, checksums=sums, vector_checksums=vsums,
        deleted_counts=gone, num_vectors=int(live.sum()),
        cluster_sizes=[int(x) for x in cluster_sizes], partition_bytes=nbytes,
        partition_errors=errors,
    )
    return storage.publish(spark, new_manifest)


def _load(manifest, row: dict, vectors=None):
    """A partition object from an index-table row (checksums were checked at write)."""
    part: HNSWPartition | PQPartition
    if manifest.params.get("indexType", "hnsw") == "hnsw":
        part = HNSWPartition.load(row["payload"])
    else:
        shared = manifest.codebook or row["codebook"]
        cluster = int(_plan(manifest).cluster_of[row["partition_id"]])
        stored = None
        if row.get("vectors") is not None:
            stored = np.frombuffer(row["vectors"], np.float32).reshape(-1, manifest.dim)
        pq_part = PQPartition.load(row["payload"], pq.codebook_from_bytes(shared),
                                   manifest.centroids[cluster], stored)
        pq_part.squared_error = row.get("sq_error") or 0.0
        part = pq_part
    part.delete(row.get("deleted") or [])
    return part


def _emit(manifest, pid, ids, part, codebook, deleted) -> pa.Table:
    vectors = getattr(part, "vectors", None)
    table = partition_row(pid, ids, part.payload(), codebook,
                          None if vectors is None else np.ascontiguousarray(vectors).tobytes(),
                          getattr(part, "squared_error", 0.0))
    checksum = storage.partition_checksum(part.payload(), codebook, deleted)
    table = table.set_column(table.schema.get_field_index("deleted"), "deleted",
                             pa.array([sorted(int(x) for x in deleted)], pa.list_(pa.int32())))
    return table.set_column(table.schema.get_field_index("checksum"), "checksum",
                            pa.array([checksum]))


def _insert_fn(manifest, settings: BuildSettings):
    def insert(key, new, old):
        pid = key[0].as_py()
        row = old.to_pylist()[0]
        vectors = to_matrix(new.column("vector"), manifest.dim, f"partition {pid}")
        if manifest.metric == "cosine":
            vectors = normalize_rows(vectors)
        part = _load(manifest, row)
        part.add(vectors)
        ids = pa.concat_arrays([old.column("ids").combine_chunks()[0].values,
                                new.column("id").combine_chunks()])
        return _emit(manifest, pid, ids, part, row["codebook"] or b"", row["deleted"] or [])

    return insert


def _mark_deleted_fn():
    def mark(batches):
        for batch in batches:
            for row in batch.to_pylist():
                deleted = sorted(set(row["deleted"] or []) | set(row["new_deleted"]))
                row["deleted"] = deleted
                row["checksum"] = storage.partition_checksum(row["payload"],
                                                             row["codebook"] or b"", deleted)
                del row["new_deleted"]
                yield pa.RecordBatch.from_pylist([row], schema=_arrow_schema(batch))

    return mark


def _arrow_schema(batch: pa.RecordBatch) -> pa.Schema:
    return pa.schema([f for f in batch.schema if f.name != "new_deleted"])


def _compact_fn(manifest, settings: BuildSettings):
    def rebuild(batches):
        for batch in batches:
            for row in batch.to_pylist():
                pid = row["partition_id"]
                part = _load(manifest, row)
                labels, vectors = part.live_vectors()
                ids = pa.array(row["ids"]).take(pa.array(labels))
                if isinstance(part, HNSWPartition):
                    fresh = HNSWPartition.build(vectors, manifest.metric, settings.hnsw_m,
                                                settings.ef_construction,
                                                partition_seed(settings.seed, pid), 1)
                else:
                    part.codes, part.vectors, part.alive = part.codes[labels], vectors, None
                    part.count = len(labels)
                    fresh = part
                yield pa.RecordBatch.from_pylist(
                    _emit(manifest, pid, ids, fresh, row["codebook"] or b"", []).to_pylist(),
                    schema=batch.schema,
                )

    return rebuild


def _live_fn(manifest):
    def recover(batches):
        for batch in batches:
            for row in batch.to_pylist():
                labels, vectors = _load(manifest, row).live_vectors()
                ids = pa.array(row["ids"]).take(pa.array(labels))
                offsets = pa.array(np.arange(0, vectors.size + 1, manifest.dim), pa.int32())
                values = pa.ListArray.from_arrays(offsets,
                                                  pa.array(vectors.reshape(-1), pa.float32()))
                yield pa.RecordBatch.from_arrays([ids, values], ["id", "vector"])

    return recover
