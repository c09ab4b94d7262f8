"""Build an index with Spark: sample, train centroids, assign, shard, build, store.

Spark code here only moves data; the algorithms are in :mod:`partitioner`,
:mod:`router` and :mod:`hnsw`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import partitioner, pq, storage
from .observe import StageTimer
from .partitions import HNSWPartition, PQPartition, PQSettings, pad, padded_dim
from .partitions import train_codebook as train_pq_codebook
from .router import ShardPlan, nearest_centroids
from .tasks import FaultPlan, fail_first_attempt, resolve_threads, threads_per_task
from .vectors import id_type, normalize_rows, to_matrix, vector_column

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    vector_col: str
    id_col: str
    metric: str
    num_clusters: int | None
    hnsw_m: int
    ef_construction: int
    sample_size: int | None
    max_partition_rows: int | None
    seed: int
    num_threads: int
    deterministic: bool = False
    fail_first_attempt: FaultPlan | frozenset = frozenset()
    index_type: str = "hnsw"
    allow_duplicate_ids: bool = False
    pq: PQSettings = PQSettings()


def build_index(df: DataFrame, settings: BuildSettings, root: str,
                params: dict) -> storage.Manifest:
    """Build the index of ``df`` under ``root`` and publish it; returns its manifest."""
    spark = df.sparkSession
    stage = StageTimer(spark)
    kind = id_type(df, settings.id_col)
    rows = df.select(
        F.col(settings.id_col).cast("long" if kind == "long" else "string").alias("id"),
        vector_column(df, settings.vector_col).alias("vector"),
    )
    with stage("validate input"):
        num_vectors, dim = check_rows(rows, settings)
    log.info("sparkann: indexing %d vectors of dimension %d", num_vectors, dim)
    if settings.index_type == "pq" and settings.pq.subvectors > dim:
        raise ValueError(
            f"pqSubvectors={settings.pq.subvectors} is larger than the dimension {dim}")
    num_clusters = settings.num_clusters or partitioner.default_num_clusters(num_vectors)
    if num_clusters > num_vectors:
        raise ValueError(
            f"numPartitions={num_clusters} is larger than the number of rows ({num_vectors})"
        )
    with stage("train centroids"):
        sample = sample_vectors(rows, settings, num_clusters, num_vectors, dim)
        centroids = partitioner.train_centroids(sample, num_clusters, settings.seed)
    metric = settings.metric
    assigned = rows.mapInArrow(
        _assign_fn(centroids, metric, dim), "id " + kind + ", vector array<float>, cluster int"
    )
    with stage("count clusters"):
        sizes = (cluster_sizes(assigned, num_clusters) if num_clusters > 1
                 else np.array([num_vectors]))
    max_rows = settings.max_partition_rows or partitioner.default_max_partition_rows(
        dim, settings.hnsw_m
    )
    plan = ShardPlan.from_cluster_sizes(sizes, max_rows)
    log.info("sparkann: %d clusters in %d partitions (largest %d rows)", num_clusters,
             plan.num_partitions, int(sizes.max()))
    codebook = b""
    if settings.index_type == "pq" and settings.pq.codebook == "global":
        with stage("train global codebook"):
            codebook = global_codebook(sample, centroids, settings)
    data_dir = storage.new_data_dir()
    threads = threads_per_task(spark, settings.num_threads, plan.num_partitions)
    with stage("build partition indexes"), storage.removed_on_failure(spark, root, data_dir):
        table = with_partition_ids(assigned, plan).groupBy("partition_id").applyInArrow(
            _build_fn(settings, kind, threads, centroids[plan.cluster_of], codebook),
            _table_schema(kind),
        )
        storage.write_table(table, storage.join(root, data_dir))
    with stage("check partitions"):
        stats = storage.table_stats(spark, storage.join(root, data_dir))
    _check_stats(stats, plan)
    manifest = storage.Manifest(
        root=root,
        partition_dirs=[data_dir] * plan.num_partitions,
        params={**params, "numPartitions": num_clusters, "maxPartitionRows": max_rows,
                "balanceAtBuild": balance([s.num_rows for s in stats])},
        dim=dim,
        num_vectors=num_vectors,
        id_type=kind,
        centroids=centroids,
        cluster_sizes=[int(s) for s in sizes],
        shard_counts=[int(c) for c in plan.counts],
        partition_rows=[s.num_rows for s in stats],
        checksums=[s.checksum for s in stats],
        vector_checksums=[s.vectors_checksum or "" for s in stats],
        deleted_counts=[0] * len(stats),
        partition_errors=[float(s.sq_error) for s in stats],
        partition_bytes=[int(s.nbytes) for s in stats],
        codebook=codebook,
        build_seconds=stage.seconds,
    )
    with stage("publish"):
        return storage.publish(spark, manifest)


def balance(sizes) -> float:
    """Largest partition over the mean partition: 1.0 is perfect balance."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(sizes.max() / max(sizes.mean(), 1e-9))


def check_rows(rows: DataFrame, settings: BuildSettings) -> tuple[int, int]:
    """One pass of checks before any expensive work; returns (count, dim)."""
    vec = F.col("vector")
    bad_value = F.exists(vec, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    zero = F.forall(vec, lambda x: x == 0) if settings.metric == "cosine" else F.lit(False)
    distinct = F.lit(None) if settings.allow_duplicate_ids else F.count_distinct("id")
    stats = rows.agg(
        F.sum(zero.cast("long")).alias("zero_vectors"),
        F.min(F.when(zero, F.col("id"))).alias("zero_id"),
        distinct.alias("distinct_ids"),
        F.count(F.lit(1)).alias("n"),
        F.min(F.size(vec)).alias("min_dim"),
        F.max(F.size(vec)).alias("max_dim"),
        F.sum(vec.isNull().cast("long")).alias("null_vectors"),
        F.sum(F.col("id").isNull().cast("long")).alias("null_ids"),
        F.min(F.when(bad_value, F.col("id"))).alias("bad_id"),
        F.sum(bad_value.cast("long")).alias("bad_values"),
    ).collect()[0]
    col, idc = settings.vector_col, settings.id_col
    if stats.n == 0:
        raise ValueError("the input DataFrame is empty; there is nothing to index")
    if stats.null_vectors:
        raise ValueError(f"column {col!r} holds {stats.null_vectors} null vector(s)")
    if stats.null_ids:
        raise ValueError(f"column {idc!r} holds {stats.null_ids} null id(s)")
    if stats.bad_values:
        raise ValueError(
            f"column {col!r} holds NaN or infinite values in {stats.bad_values} row(s), "
            f"for example {idc}={stats.bad_id!r}"
        )
    if stats.min_dim != stats.max_dim:
        raise ValueError(
            f"column {col!r} holds vectors of differing lengths "
            f"({stats.min_dim} to {stats.max_dim})"
        )
    if stats.min_dim == 0:
        raise ValueError(f"column {col!r} holds empty vectors")
    if stats.zero_vectors:
        raise ValueError(
            f"column {col!r} holds {stats.zero_vectors} all-zero vector(s), which have no "
            f"direction for the cosine metric, for example {idc}={stats.zero_id!r}"
        )
    if stats.distinct_ids is not None and stats.distinct_ids != stats.n:
        raise ValueError(
            f"column {idc!r} holds {stats.n - stats.distinct_ids} duplicate id(s), for example "
            f"{idc}={duplicate_example(rows)!r}; drop them (df.dropDuplicates([{idc!r}])) or "
            "set allowDuplicateIds=True to index every row"
        )
    return int(stats.n), int(stats.min_dim)


def duplicate_example(rows: DataFrame):
    row = rows.groupBy("id").count().where(F.col("count") > 1).first()
    return None if row is None else row["id"]


def sample_vectors(rows, settings, num_clusters, num_vectors, dim) -> np.ndarray:
    """A seeded random sample of vectors, collected to the driver as Arrow."""
    size = settings.sample_size or partitioner.default_sample_size(num_clusters)
    fraction = min(1.0, 1.2 * size / num_vectors)
    picked = rows.select("vector")
    if fraction < 1.0:
        picked = picked.sample(fraction=fraction, seed=settings.seed)
    table = picked.limit(size).toArrow()
    sample = to_matrix(table.column("vector"), dim)
    return normalize_rows(sample) if settings.metric == "cosine" else sample


def cluster_sizes(assigned: DataFrame, num_clusters: int) -> np.ndarray:
    sizes = np.zeros(num_clusters, dtype=np.int64)
    for row in assigned.groupBy("cluster").count().collect():
        sizes[row["cluster"]] = row["count"]
    return sizes


def with_partition_ids(assigned: DataFrame, plan: ShardPlan) -> DataFrame:
    """Partition id = first shard of the row's cluster + hash(id) mod its shard count."""
    offsets = F.array(*map(F.lit, plan.offsets.tolist()))
    counts = F.array(*map(F.lit, plan.counts.tolist()))
    cluster = F.col("cluster") + 1
    shard = F.pmod(F.xxhash64("id"), F.element_at(counts, cluster))
    return assigned.withColumn("partition_id", (F.element_at(offsets, cluster) + shard).cast("int"))


def _table_schema(kind: str) -> str:
    return (
        f"partition_id int, num_rows long, ids array<{kind}>, payload binary, "
        "codebook binary, deleted array<int>, checksum string, vectors binary, "
        "vectors_checksum string, "
        "sq_error double"
    )


def global_codebook(sample: np.ndarray, centroids: np.ndarray, settings: BuildSettings) -> bytes:
    """One PQ codebook for all partitions, trained on the sample's residuals."""
    nearest = nearest_centroids(sample, centroids, settings.metric, 1)[:, 0]
    width = padded_dim(sample.shape[1], settings.pq.subvectors)
    residuals = pad(sample - centroids[nearest], width)
    return pq.codebook_to_bytes(train_pq_codebook(residuals, settings.pq, settings.seed))


def _assign_fn(centroids: np.ndarray, metric: str, dim: int):
    def assign(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            vectors = to_matrix(batch.column("vector"), dim, "column 'vector'")
            if metric == "cosine":
                vectors = normalize_rows(vectors)
            cluster = nearest_centroids(vectors, centroids, metric, 1)[:, 0]
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), batch.column("vector"), pa.array(cluster, pa.int32())],
                ["id", "vector", "cluster"],
            )

    return assign


def _build_fn(settings: BuildSettings, kind: str, threads: int, centroid_of, codebook: bytes):
    """The per-partition task: vectors in, one index-table row out."""

    def build_partition(key, table):  # no hints: pyspark infers its eval type from them
        partition_id = key[0].as_py()
        fail_first_attempt("build", settings.fail_first_attempt)
        if settings.deterministic:  # rows arrive in shuffle-fetch order, which varies
            table = table.sort_by("id")
        vectors = to_matrix(table.column("vector"), None, f"partition {partition_id}")
        if settings.metric == "cosine":
            vectors = normalize_rows(vectors)
        seed = partition_seed(settings.seed, partition_id)
        if settings.index_type == "pq":
            shared = pq.codebook_from_bytes(codebook) if codebook else None
            part = PQPartition.build(vectors, centroid_of[partition_id], settings.pq, seed, shared)
            own_codebook = b"" if shared else pq.codebook_to_bytes(part.codebook)
            exact_vectors = part.vectors.tobytes() if part.vectors is not None else None
            error = part.squared_error
        else:
            part = HNSWPartition.build(
                vectors, settings.metric, settings.hnsw_m, settings.ef_construction, seed,
                1 if settings.deterministic else resolve_threads(threads),
            )
            own_codebook, exact_vectors, error = b"", None, 0.0
        return partition_row(partition_id, table.column("id"), part.payload(), own_codebook,
                             exact_vectors, error)

    return build_partition


def partition_row(partition_id, ids, payload, codebook, exact_vectors, sq_error) -> pa.Table:
    """One row of the index table."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    one_list = pa.array([0, len(ids)], pa.int32())
    return pa.table(
        {
            "partition_id": pa.array([partition_id], pa.int32()),
            "num_rows": pa.array([len(ids)], pa.int64()),
            "ids": pa.ListArray.from_arrays(one_list, ids),
            "payload": pa.array([payload], pa.binary()),
            "codebook": pa.array([codebook], pa.binary()),
            "deleted": pa.array([[]], pa.list_(pa.int32())),
            "checksum": pa.array([storage.partition_checksum(payload, codebook, [])], pa.string()),
            "vectors": pa.array([exact_vectors], pa.binary()),
            "vectors_checksum": pa.array(
                [None if exact_vectors is None else storage.sha256(exact_vectors)], pa.string()
            ),
            "sq_error": pa.array([sq_error], pa.float64()),
        }
    )


def partition_seed(seed: int, partition_id: int) -> int:
    """A per-partition seed derived from the index seed: retries rebuild alike."""
    return (seed * 1_000_003 + partition_id * 7919) % (2**31 - 1)


def _check_stats(stats, plan: ShardPlan) -> None:
    found = [s.partition_id for s in stats]
    if found != list(range(plan.num_partitions)):
        raise RuntimeError(
            f"the index table holds partitions {found[:10]}..., expected "
            f"0..{plan.num_partitions - 1}; the build output is incomplete"
        )
