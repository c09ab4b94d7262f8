"""Build an index with Spark: check, train centroids, assign once, build, store.

Spark code here only moves data; the algorithms live in
:mod:`sparkann.partitioning` and :mod:`sparkann.index`. Driver-side work is
bounded by the number of centroids, never by the number of rows: the
centroids are trained on bounded samples (the fine level of a two-level
training runs in Spark tasks), every row is assigned exactly once, and
partition sizes and bytes come from the build tasks' own output.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import calibrate, testing
from .index import PartitionContext, index_type
from .loader import checked_meta
from .metrics import Metric, get_metric
from .observe import StageTimer
from .partitioning import kmeans, packing
from .partitioning.router import (
    META_HNSW_MIN_CENTROIDS,
    CentroidRanker,
    ShardPlan,
    build_centroid_graph,
    rank_brute_force,
)
from .sampling import collect_sample, sampled
from .storage import items, tables
from .storage.format import MAX_META_BYTES, IndexFormatError, Manifest, Meta, Partitions, sha256
from .storage.fs import join, read_file, store_for
from .storage.transaction import Transaction
from .storage.versions import check_index_root
from .tasks import cluster_cores, resolve_threads, threads_per_task
from .vectors import (
    MAX_SQUARED_NORM,
    TOO_LARGE,
    id_type,
    list_array,
    to_matrix,
    vector_column,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetaHandle:
    """How a task finds the meta file of an index being built."""

    uri: str
    sha256: str
    dim: int

    def read(self) -> Meta:
        return _read_meta(self.uri, self.sha256, self.dim)


@functools.lru_cache(maxsize=1)
def _read_meta(uri: str, digest: str, dim: int) -> Meta:
    """The meta file, read, verified and parsed once per worker process: a build's tasks
    (one per packed group of partitions) all read the same file. Not to be modified."""
    data = read_file(uri, MAX_META_BYTES)
    if sha256(data) != digest:
        raise IndexFormatError(f"the meta file {uri} changed during the build")
    return Meta.from_bytes(data, dim)


@dataclass(frozen=True)
class Built:
    """What a build found beyond the files it wrote (those are in its transaction):
    its clusters, and what its tasks found for the held-out calibration queries."""

    partitions: Partitions
    num_clusters: int
    max_partition_rows: int
    meta: Meta | None = None
    calibration: calibrate.HeldOut | None = None  # the held-out searches, when calibrating
    item_types: list = field(default_factory=list)  # stored item columns: (name, Spark type)


# column names the build's own stages use beside the item columns
INTERNAL_COLUMNS = ("id", "vector", "partition_id", "id_hash", "task")


def input_rows(df: DataFrame, vector_col: str, id_col: str,
               item_cols: list[str] | None = None) -> tuple[DataFrame, str]:
    """(id, vector array<float>, item columns...) of a user's DataFrame, and the id type;
    ``ValueError`` naming an item column that cannot be stored."""
    id_sql = id_type(df, id_col)
    item_cols = list(item_cols or [])
    items.item_types(df.schema, item_cols, (id_col, vector_col, *INTERNAL_COLUMNS))
    rows = df.select(F.col(id_col).cast("long" if id_sql == "long" else "string").alias("id"),
                     vector_column(df, vector_col).alias("vector"), *item_cols)
    return rows, id_sql


def item_types_of(rows: DataFrame) -> list[tuple[str, str]]:
    """(name, Spark type) of the item columns of :func:`input_rows`' rows."""
    return [(f.name, f.dataType.simpleString()) for f in rows.schema.fields
            if f.name not in ("id", "vector")]


def build_index(rows: DataFrame, id_sql: str, params: dict, txn: Transaction,
                stage: StageTimer) -> tuple[Built, int, int]:
    """Write an index of ``rows`` (id, vector) through ``txn``: meta file, partitions
    and id locations. Returns what was built, the row count and the dimension; nothing
    is committed. With ``targetRecall`` > 0 a sample of rows is held out of each
    partition index while its task searches it (see :mod:`sparkann.calibrate`)."""
    spark, root = rows.sparkSession, txn.root
    check_index_root(spark, root)
    metric = get_metric(params["metric"])
    item_types = item_types_of(rows)
    if item_types and params["allowDuplicateIds"]:
        raise ValueError("itemCols cannot be stored with allowDuplicateIds=True: nearestJoin "
                         "finds an item's columns by its id")
    rows, with_items = rows.select("id", "vector"), rows
    with stage("validate input"):
        num_rows, dim = check_rows(rows, params)
    log.info("sparkann: indexing %d vectors of dimension %d", num_rows, dim)
    cls = index_type(params["indexType"])
    cls.check_params(params, dim)
    num_clusters = params["numPartitions"] or kmeans.default_num_clusters(num_rows)
    if num_clusters > num_rows:
        raise ValueError(f"numPartitions={num_clusters} is larger than the number of rows "
                         f"({num_rows})")
    max_rows = params["maxPartitionRows"] or kmeans.default_max_partition_rows(
        cls.stored_row_bytes(params, dim))
    seed = int(params["seed"])
    with stage("train centroids"):
        centroids, sample, estimated = train_centroids(rows, metric, num_clusters, num_rows,
                                                       dim, params)
    plan = ShardPlan.from_cluster_sizes(np.maximum(estimated, 1), max_rows)
    log.info("sparkann: %d clusters in %d partitions", num_clusters, plan.num_partitions)
    with stage("train shared data"):
        graph = (build_centroid_graph(centroids, metric, seed)
                 if num_clusters >= META_HNSW_MIN_CENTROIDS else b"")
        ranker = CentroidRanker(centroids, metric, graph)
        context = PartitionContext(metric, dim, params)
        nearest = ranker.nearest(sample)
        shared = cls.train_shared(sample, sample - centroids[nearest], context, seed)
    meta_value = Meta(centroids, plan.counts, graph, shared)
    meta = write_meta(txn, meta_value)
    held = None
    if params["targetRecall"] > 0:
        with stage("plan calibration"):
            ladder = cls.search_ladder(int(params["k"]), params)
            typical = int(np.median(plan.partition_rows(estimated)))
            held = calibrate.plan_held_out(rows, num_rows, params, metric, dim, ranker, plan,
                                           np.maximum(estimated, 1), ladder, root,
                                           [cls.probe_cost(s, typical, dim) for s in ladder])
    task_of = packing.pack(plan.partition_rows(estimated),
                           packing.task_capacity(estimated, cluster_cores(spark), max_rows))
    threads = build_threads(spark, params, int(task_of.max()) + 1)
    try:
        with stage("build partition indexes"):
            assigned = assign(with_items, meta, metric, dim, id_sql)
            task = build_fn(meta, params, dim, threads, held.handle if held else None,
                            item_types)
            table = per_partition(assigned, plan.num_partitions, task,
                                  tables.index_schema(id_sql, item_types), task_of)
            txn.write_partitions(table, plan.num_partitions, seconds=stage.seconds,
                                 read_back="calibration" if held else None)
        found = calibrate.found_at_fit(
            bytes(value) for _, value in sorted(txn.read_back_values.items())) if held else None
    finally:
        if held:
            store_for(spark, root).delete(join(root, held.relative))
    with stage("write id locations"):
        txn.write_locations("replace")
    searched = calibrate.HeldOut(held.plan, found) if held and found is not None else None
    built = Built(txn.partitions, num_clusters, max_rows, meta_value, searched, item_types)
    return built, num_rows, dim


def build_threads(spark, params: dict, num_tasks: int) -> int:
    """Threads per build task: enough that few tasks still fill the cores."""
    if params["deterministic"]:
        return 1
    if params["numThreads"]:
        return int(params["numThreads"])
    cores = threads_per_task(spark, 0, 1)
    return max(1, min(cores, math.ceil(2 * cores / max(num_tasks, 1))))


def check_rows(rows: DataFrame, params: dict) -> tuple[int, int]:
    """One pass of checks before any expensive work; returns (count, dim)."""
    vec = F.col("vector")
    squared = F.aggregate(vec, F.lit(0.0), lambda acc, x: acc + x.cast("double") ** 2)
    bad_value = (F.exists(vec, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
                 | (squared > MAX_SQUARED_NORM))
    # the row's value of largest magnitude (NaN sorts above every number)
    worst = F.array_max(F.transform(vec, lambda x: F.struct(F.abs(x).alias("size"),
                                                             x.alias("value"))))["value"]
    zero = F.forall(vec, lambda x: x == 0) if params["metric"] == "cosine" else F.lit(False)
    distinct = F.lit(None) if params["allowDuplicateIds"] else F.count_distinct("id")
    stats = rows.agg(
        F.sum(zero.cast("long")).alias("zero_vectors"),
        F.min(F.when(zero, F.col("id"))).alias("zero_id"),
        distinct.alias("distinct_ids"),
        F.count(F.lit(1)).alias("n"),
        F.min(F.size(vec)).alias("min_dim"),
        F.max(F.size(vec)).alias("max_dim"),
        F.sum(vec.isNull().cast("long")).alias("null_vectors"),
        F.sum(F.col("id").isNull().cast("long")).alias("null_ids"),
        F.min(F.when(bad_value, F.struct(F.col("id").alias("id"), worst.alias("value"))))
        .alias("bad"),
        F.sum(bad_value.cast("long")).alias("bad_values"),
    ).collect()[0]
    col, idc = params["vectorCol"], params["idCol"]
    if stats.n == 0:
        raise ValueError("the input DataFrame is empty; there is nothing to index")
    if stats.null_vectors:
        raise ValueError(f"column {col!r} holds {stats.null_vectors} null vector(s)")
    if stats.null_ids:
        raise ValueError(f"column {idc!r} holds {stats.null_ids} null id(s)")
    if stats.bad_values:
        raise ValueError(
            f"column {col!r} holds NaN or infinite values, or values too large, in "
            f"{stats.bad_values} row(s), for example {idc}={stats.bad.id!r} with the value "
            f"{stats.bad.value:.6g} ({TOO_LARGE})")
    if stats.min_dim != stats.max_dim:
        raise ValueError(f"column {col!r} holds vectors of differing lengths "
                         f"({stats.min_dim} to {stats.max_dim})")
    if stats.min_dim == 0:
        raise ValueError(f"column {col!r} holds empty vectors")
    if stats.zero_vectors:
        raise ValueError(
            f"column {col!r} holds {stats.zero_vectors} all-zero vector(s), which have no "
            f"direction for the cosine metric, for example {idc}={stats.zero_id!r}")
    if stats.distinct_ids is not None and stats.distinct_ids != stats.n:
        raise ValueError(
            f"column {idc!r} holds {stats.n - stats.distinct_ids} duplicate id(s), for example "
            f"{idc}={duplicate_example(rows)!r}; drop them (df.dropDuplicates([{idc!r}])) or "
            "set allowDuplicateIds=True to index every row")
    return int(stats.n), int(stats.min_dim)


def duplicate_example(rows: DataFrame):
    row = rows.groupBy("id").count().where(F.col("count") > 1).first()
    return None if row is None else row["id"]


# ----------------------------------------------------------------- centroids


def sample_vectors(rows: DataFrame, size: int, num_rows: int, seed: int, metric: Metric,
                   dim: int) -> np.ndarray:
    """A seeded sample of about ``size`` prepared vectors, collected to the driver (the
    same rows however the input is partitioned or ordered)."""
    table = collect_sample(rows, size, num_rows, seed, [F.col("id"), F.col("vector")])
    return metric.prepare(to_matrix(table.column("vector"), dim))


def train_centroids(rows: DataFrame, metric: Metric, num_clusters: int, num_rows: int,
                    dim: int, params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids, a driver sample, estimated rows per cluster)."""
    seed = int(params["seed"])
    requested = int(params["sampleSize"] or 0)
    if not kmeans.two_level(num_clusters):
        size = min(kmeans.sample_rows(num_clusters, requested), kmeans.MAX_DRIVER_SAMPLE_ROWS)
        sample = sample_vectors(rows, size, num_rows, seed, metric, dim)
        centroids = kmeans.train(sample, num_clusters, seed)
        counts = np.bincount(CentroidRanker(centroids, metric).nearest(sample),
                             minlength=num_clusters)
        return centroids, sample, counts * (num_rows / len(sample))
    coarse_n = kmeans.coarse_count(num_clusters)
    size = min(kmeans.sample_rows(coarse_n), kmeans.MAX_DRIVER_SAMPLE_ROWS)
    sample = sample_vectors(rows, size, num_rows, seed, metric, dim)
    coarse = kmeans.train(sample, coarse_n, seed)
    fine_rows = kmeans.sample_rows(num_clusters, requested)
    centroids, counts = train_fine_level(rows, metric, coarse, num_clusters, fine_rows,
                                         num_rows, dim, seed)
    return centroids, sample, counts * (num_rows / max(counts.sum(), 1))


def train_fine_level(rows: DataFrame, metric: Metric, coarse: np.ndarray, num_clusters: int,
                     sample_size: int, num_rows: int, dim: int, seed: int):
    """Fine centroids of every coarse cluster, trained in parallel Spark tasks on a
    sample of about ``sample_size`` rows; returns them and their sample counts."""
    fraction = min(1.0, sample_size / num_rows)
    picked = sampled(rows, fraction, seed + 1, [F.col("id"), F.col("vector")]).select("vector")
    grouped = picked.mapInArrow(_coarse_fn(coarse, metric, dim),
                                "coarse int, vector array<float>")
    sizes = np.zeros(len(coarse), np.int64)
    for row in grouped.groupBy("coarse").count().collect():
        sizes[row["coarse"]] = row["count"]
    counts = kmeans.fine_counts(sizes, num_clusters)
    trained = grouped.groupBy("coarse").applyInArrow(
        _fine_fn(counts, dim, seed, metric.centroid_space),
        "coarse int, centroids binary, counts binary").collect()
    by_coarse = {row["coarse"]: row for row in trained}
    parts, sample_counts = [], []
    for cluster in np.flatnonzero(counts):
        row = by_coarse[int(cluster)]
        parts.append(np.frombuffer(row["centroids"], np.float32).reshape(-1, dim))
        sample_counts.append(np.frombuffer(row["counts"], np.int64))
    centroids = np.concatenate(parts)
    if len(centroids) != num_clusters:
        raise RuntimeError(f"the fine level trained {len(centroids)} of {num_clusters} "
                           "centroids")
    return centroids, np.concatenate(sample_counts).astype(np.float64)


def _coarse_fn(coarse: np.ndarray, metric: Metric, dim: int):
    def assign(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ranker = CentroidRanker(coarse, metric)
        for batch in batches:
            vectors = metric.prepare(to_matrix(batch.column("vector"), dim))
            yield pa.RecordBatch.from_arrays(
                [pa.array(ranker.nearest(vectors), pa.int32()), list_array(vectors)],
                ["coarse", "vector"])

    return assign


def _fine_fn(counts: np.ndarray, dim: int, seed: int, space: str):
    def train(key, table):
        cluster = key[0].as_py()
        vectors = to_matrix(table.column("vector"), dim)
        vectors = vectors[np.lexsort(vectors.T[::-1])]  # arrival order varies; results must not
        fine = kmeans.train_fine(vectors, int(counts[cluster]), seed * 7919 + cluster)
        nearest = rank_brute_force(vectors, fine, space, 1)[0][:, 0]
        return pa.table({"coarse": pa.array([cluster], pa.int32()),
                         "centroids": pa.array([fine.astype(np.float32).tobytes()]),
                         "counts": pa.array([np.bincount(nearest, minlength=len(fine))
                                             .astype(np.int64).tobytes()])})

    return train


def write_meta(txn: Transaction, meta: Meta) -> MetaHandle:
    """Write the meta file through ``txn``; returns the handle tasks read it by."""
    data = meta.to_bytes()
    path = txn.write_meta(data)
    return MetaHandle(join(txn.root, path), sha256(data), meta.centroids.shape[1])


# ------------------------------------------------------------ assign and build


def assign(rows: DataFrame, meta: MetaHandle, metric: Metric, dim: int, id_sql: str) -> DataFrame:
    """(id, prepared vector, partition_id, item columns...) of every row: one
    assignment pass."""
    carried = [f for f in rows.schema.fields if f.name not in ("id", "vector")]
    hashed = rows.select("id", "vector", F.xxhash64("id").alias("id_hash"),
                         *[f.name for f in carried])
    schema = "".join(f", `{f.name}` {f.dataType.simpleString()}" for f in carried)
    return hashed.mapInArrow(_assign_fn(meta, metric, dim, [f.name for f in carried]),
                             f"id {id_sql}, vector array<float>, partition_id int" + schema)


def _assign_fn(meta: MetaHandle, metric: Metric, dim: int, carried: list[str]):
    def assign_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        loaded = meta.read()
        ranker = CentroidRanker(loaded.centroids, metric, loaded.centroid_graph)
        plan = ShardPlan(loaded.shard_counts)
        for batch in batches:
            vectors = metric.prepare(to_matrix(batch.column("vector"), dim, "column 'vector'"))
            pids = plan.partition_of(ranker.nearest(vectors),
                                     batch.column("id_hash").to_numpy(zero_copy_only=False))
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), list_array(vectors), pa.array(pids, pa.int32()),
                 *[batch.column(name) for name in carried]],
                ["id", "vector", "partition_id", *carried])

    return assign_rows


def per_partition(assigned: DataFrame, num_partitions: int, fn, schema: str,
                  task_of: np.ndarray | None = None) -> DataFrame:
    """``fn(partition_id, rows)`` applied to all rows of each partition: one Spark task
    per partition, or (``task_of``: the task number of each partition, see
    :func:`~sparkann.partitioning.packing.pack`) one per task, which applies ``fn`` to
    each of its partitions separately (``repartitionById`` is never coalesced, unlike
    a ``groupBy``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = [b for b in batches if b.num_rows]  # one task: bounded by its packing
        if not received:
            return
        received = pa.Table.from_batches(received)
        pids = received.column("partition_id").to_numpy()
        if (pids == pids[0]).all():
            yield from fn(int(pids[0]), received).to_batches()
            return
        order = np.argsort(pids, kind="stable")
        received, pids = received.take(pa.array(order)), pids[order]
        starts = np.flatnonzero(np.diff(pids, prepend=pids[0] - 1))
        for start, end in zip(starts, [*starts[1:], len(pids)]):
            yield from fn(int(pids[start]), received.slice(start, end - start)).to_batches()

    if task_of is None:
        return assigned.repartitionById(num_partitions, "partition_id").mapInArrow(run, schema)
    tasks = assigned.sparkSession.createDataFrame(
        pa.table({"partition_id": pa.array(np.arange(len(task_of)), pa.int32()),
                  "task": pa.array(task_of, pa.int32())}))
    routed = assigned.join(F.broadcast(tasks), "partition_id")
    return routed.repartitionById(int(task_of.max()) + 1, "task").drop("task").mapInArrow(
        run, schema)


def build_fn(meta: MetaHandle, params: dict, dim: int, threads: int,
             calibration: calibrate.PlanHandle | None = None, item_types: list | None = None):
    """The per-partition task: prepared vectors (and item columns) in, one index-table
    row out."""
    item_names = [name for name, _ in item_types or []]
    metric, cls = get_metric(params["metric"]), index_type(params["indexType"])
    deterministic = bool(params["deterministic"])

    def build_partition(pid: int, table: pa.Table) -> pa.Table:
        testing.inject("build")
        if deterministic:  # rows arrive in shuffle-fetch order, which varies
            table = table.sort_by("id")
        loaded = meta.read()
        cluster = int(ShardPlan(loaded.shard_counts).cluster_of[pid])
        context = PartitionContext(metric, dim, params, loaded.centroids[cluster], loaded.shared)
        vectors = to_matrix(table.column("vector"), dim, f"partition {pid}")
        ids = table.column("id").combine_chunks()
        seed = partition_seed(int(params["seed"]), pid)
        task_threads = 1 if deterministic else resolve_threads(threads)
        started = time.perf_counter()
        values = table.select(item_names) if item_names else None
        if calibration is None:
            index = cls.build(vectors, context, seed, task_threads)
            seconds = (time.perf_counter() - started, 0.0)
            return tables.partition_row(pid, ids, index.store(), None, seconds, values,
                                        item_types)
        built = calibrate.build_holding_out(cls, calibration, pid, vectors, ids, context, seed,
                                            task_threads)
        seconds = (time.perf_counter() - started - built.seconds, built.seconds)
        values = values.take(pa.array(built.order)) if values is not None else None
        return tables.partition_row(pid, ids.take(pa.array(built.order)), built.index.store(),
                                    built.found, seconds, values, item_types)

    return build_partition


def partition_seed(seed: int, partition_id: int) -> int:
    """A per-partition seed derived from the index seed: retries rebuild alike."""
    return (seed * 1_000_003 + partition_id * 7919) % (2**31 - 1)


def new_manifest(root: str, built: Built, params: dict, user_set: list[str], dim: int,
                 id_sql: str, build_seconds: dict) -> Manifest:
    """The header of a freshly built version: what it is, not its files (those are its
    transaction's, see :meth:`Transaction.manifest`)."""
    stored = {**params, "numPartitions": built.num_clusters,
              "maxPartitionRows": built.max_partition_rows,
              "balanceAtBuild": balance(built.partitions.rows)}
    return Manifest.with_param_values(
        stored, list(user_set), root=root, version=0, index_type=params["indexType"],
        metric=params["metric"], dim=dim, id_type=id_sql, meta_file="", meta_sha256="",
        partitions=built.partitions, build_seconds=build_seconds,
        item_types=list(built.item_types))


def balance(sizes) -> float:
    """Largest partition over the mean partition: 1.0 is perfect balance."""
    sizes = np.asarray([s for s in sizes], dtype=np.float64)
    return float(sizes.max() / max(sizes.mean(), 1e-9)) if len(sizes) else 1.0


def with_checked_meta(spark, manifest: Manifest) -> Meta:
    """The meta file of a manifest, read on the driver and verified."""
    data = store_for(spark, manifest.root).read(join(manifest.root, manifest.meta_file), 8 << 30)
    return checked_meta(manifest, data)
