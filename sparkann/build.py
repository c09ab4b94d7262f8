"""Build an index with Spark: check, train centroids, assign once, build, store.

Spark code here only moves data; the algorithms live in
:mod:`sparkann.partitioning` and :mod:`sparkann.index`. Driver-side work is
bounded by the number of centroids, never by the number of rows: the
centroids are trained on bounded samples (the fine level of a two-level
training runs in Spark tasks), every row is assigned exactly once, and
partition sizes and bytes come from the build tasks' own output.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import calibrate, testing
from .index import PartitionContext, index_type
from .loader import checked_meta
from .metrics import Metric, get_metric
from .observe import StageTimer
from .partitioning import kmeans
from .partitioning.router import (
    META_HNSW_MIN_CENTROIDS,
    CentroidRanker,
    ShardPlan,
    build_centroid_graph,
    rank_brute_force,
)
from .sampling import collect_sample, sampled
from .storage import tables
from .storage.format import (
    MAX_META_BYTES,
    IndexFormatError,
    Locations,
    Manifest,
    Meta,
    Partitions,
    sha256,
)
from .storage.fs import join, read_file, store_for
from .storage.versions import CommitStateUnknownError, check_index_root, new_run
from .tasks import resolve_threads, threads_per_task
from .vectors import (
    MAX_SQUARED_NORM,
    TOO_LARGE,
    id_type,
    list_array,
    to_matrix,
    vector_column,
)

log = logging.getLogger(__name__)
LOCATION_BUCKET_ROWS = 1 << 20  # ids per bucket of the id-location table
# Test-only: a fixed number of id-location buckets, so small indexes have several.
LOCATION_BUCKETS_CONF = "spark.sparkann.test.locationBuckets"


@dataclass(frozen=True)
class MetaHandle:
    """How a task finds the meta file of an index being built."""

    uri: str
    sha256: str
    dim: int

    def read(self) -> Meta:
        data = read_file(self.uri, MAX_META_BYTES)
        if sha256(data) != self.sha256:
            raise IndexFormatError(f"the meta file {self.uri} changed during the build")
        return Meta.from_bytes(data, self.dim)


@dataclass(frozen=True)
class Built:
    """What a build wrote: its partitions, meta file and id locations, and what its
    tasks found for the held-out calibration queries."""

    partitions: Partitions
    meta_file: str
    meta_sha256: str
    locations: Locations
    num_clusters: int
    max_partition_rows: int
    meta: Meta | None = None
    calibration: tuple | None = None  # (CalibrationPlan, found table) when calibrating
    written: tuple = ()  # what the build wrote under the root (runs and the meta file)


def input_rows(df: DataFrame, vector_col: str, id_col: str) -> tuple[DataFrame, str]:
    """(id, vector array<float>) of a user's DataFrame, and the id type."""
    kind = id_type(df, id_col)
    rows = df.select(F.col(id_col).cast("long" if kind == "long" else "string").alias("id"),
                     vector_column(df, vector_col).alias("vector"))
    return rows, kind


def build_index(rows: DataFrame, kind: str, params: dict, root: str,
                stage: StageTimer) -> tuple[Built, int, int]:
    """Write an index of ``rows`` (id, vector) under ``root``; returns what was built,
    the row count and the dimension. Nothing is published. With ``targetRecall`` > 0 a
    sample of rows is held out of each partition index while its task searches it
    (see :mod:`sparkann.calibrate`)."""
    spark = rows.sparkSession
    check_index_root(spark, root)
    metric = get_metric(params["metric"])
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
    meta = write_meta(spark, root, meta_value)
    cplan = None
    if params["targetRecall"] > 0:
        with stage("plan calibration"):
            held = calibrate.draw_sample(rows, num_rows, seed, metric, dim, True, held=True)
            cplan, _ = calibrate.plan_calibration(held, ranker, plan, np.maximum(estimated, 1),
                                                  int(params["k"]),
                                                  cls.search_ladder(int(params["k"]), params))
            plan_file = write_plan(spark, root, cplan.to_bytes())
    run = new_run("data")
    threads = build_threads(spark, params, plan.num_partitions)
    written = [run, meta.relative] + ([plan_file.relative] if cplan else [])
    try:
        with stage("build partition indexes"), removed_on_failure(spark, root, written):
            assigned = assign(rows, meta.handle, metric, dim, kind)
            task = build_fn(meta.handle, params, dim, threads,
                            plan_file.handle if cplan else None)
            table = per_partition(assigned, plan.num_partitions, task, tables.index_schema(kind))
            tables.write_table(table, join(root, run), "partition_id")
        with stage("check partitions"):
            partitions = written_partitions(spark, root, run, plan.num_partitions,
                                            stage.seconds)
            found = calibrate.found_at_fit(spark, root, run) if cplan else None
    finally:
        if cplan:
            store_for(spark, root).delete(join(root, plan_file.relative))
    with stage("write id locations"), removed_on_failure(spark, root, [run, meta.relative]):
        locations, locations_run = write_locations(spark, root, partitions, num_rows, kind)
    built = Built(partitions, meta.relative, meta.handle.sha256, locations, num_clusters,
                  max_rows, meta_value, (cplan, found) if cplan else None,
                  (run, meta.relative, locations_run))
    return built, num_rows, dim


def build_threads(spark, params: dict, num_partitions: int) -> int:
    """Threads per build task: enough that few partitions still fill the cores."""
    if params["deterministic"]:
        return 1
    if params["numThreads"]:
        return int(params["numThreads"])
    cores = threads_per_task(spark, 0, 1)
    return max(1, min(cores, math.ceil(2 * cores / max(num_partitions, 1))))


@dataclass(frozen=True)
class PlanHandle:
    """How a build task finds the fit's calibration plan."""

    uri: str
    sha256: str

    def read(self) -> "calibrate.CalibrationPlan":
        data = read_file(self.uri, 1 << 30)
        if sha256(data) != self.sha256:
            raise IndexFormatError(f"the calibration plan {self.uri} changed during the build")
        return calibrate.CalibrationPlan.from_bytes(data)


@dataclass(frozen=True)
class Written:
    """A file the driver wrote under the index root, and how tasks find it."""

    relative: str  # its path under the root
    handle: Any  # a MetaHandle or a PlanHandle


def write_plan(spark, root: str, data: bytes) -> Written:
    relative = f"staging/{uuid.uuid4().hex}-calibration.bin"
    store_for(spark, root).write(join(root, relative), data)
    return Written(relative, PlanHandle(join(root, relative), sha256(data)))


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


def write_meta(spark, root: str, meta: Meta) -> Written:
    """Write the meta file; returns its path (relative to the root) and a task handle."""
    data = meta.to_bytes()
    relative = f"{new_run('meta')}.bin"
    store_for(spark, root).write(join(root, relative), data)
    return Written(relative, MetaHandle(join(root, relative), sha256(data),
                                        meta.centroids.shape[1]))


# ------------------------------------------------------------ assign and build


def assign(rows: DataFrame, meta: MetaHandle, metric: Metric, dim: int, kind: str) -> DataFrame:
    """(id, prepared vector, partition_id) of every row: one assignment pass."""
    hashed = rows.select("id", "vector", F.xxhash64("id").alias("id_hash"))
    return hashed.mapInArrow(_assign_fn(meta, metric, dim),
                             f"id {kind}, vector array<float>, partition_id int")


def _assign_fn(meta: MetaHandle, metric: Metric, dim: int):
    def assign_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        loaded = meta.read()
        ranker = CentroidRanker(loaded.centroids, metric, loaded.centroid_graph)
        plan = ShardPlan(loaded.shard_counts)
        for batch in batches:
            vectors = metric.prepare(to_matrix(batch.column("vector"), dim, "column 'vector'"))
            pids = plan.partition_of(ranker.nearest(vectors),
                                     batch.column("id_hash").to_numpy(zero_copy_only=False))
            yield pa.RecordBatch.from_arrays(
                [batch.column("id"), list_array(vectors), pa.array(pids, pa.int32())],
                ["id", "vector", "partition_id"])

    return assign_rows


def per_partition(assigned: DataFrame, num_partitions: int, fn, schema: str) -> DataFrame:
    """``fn(partition_id, rows)`` applied to all rows of each partition, one Spark task
    per partition (``repartitionById`` is never coalesced, unlike a ``groupBy``)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        received = [b for b in batches if b.num_rows]  # one partition: bounded by its size
        if not received:
            return
        received = pa.Table.from_batches(received)
        pids = received.column("partition_id").to_numpy()
        for pid in np.unique(pids):
            rows = received.filter(pa.array(pids == pid)) if len(np.unique(pids)) > 1 \
                else received
            yield from fn(int(pid), rows).to_batches()

    return assigned.repartitionById(num_partitions, "partition_id").mapInArrow(run, schema)


def build_fn(meta: MetaHandle, params: dict, dim: int, threads: int,
             calibration: PlanHandle | None = None):
    """The per-partition task: prepared vectors in, one index-table row out."""
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
        if calibration is None:
            index = cls.build(vectors, context, seed, task_threads)
            seconds = (time.perf_counter() - started, 0.0)
            return tables.partition_row(pid, ids, index.store(), None, seconds)
        plan = calibration.read()
        held = np.asarray(pc.is_in(ids, value_set=plan.ids.cast(ids.type)))
        index = cls.build(vectors[~held], context, seed, task_threads)
        kept = ids.filter(pa.array(~held))
        searched = time.perf_counter()
        found = calibrate.search_held_out(index, plan, pid, kept, cls.search_knobs,
                                          task_threads)
        searching = time.perf_counter() - searched
        index.add(vectors[held], task_threads)  # held-out rows join the index afterwards
        order = pa.concat_arrays([kept, ids.filter(pa.array(held))])
        seconds = (time.perf_counter() - started - searching, searching)
        return tables.partition_row(pid, order, index.store(), found, seconds)

    return build_partition


def partition_seed(seed: int, partition_id: int) -> int:
    """A per-partition seed derived from the index seed: retries rebuild alike."""
    return (seed * 1_000_003 + partition_id * 7919) % (2**31 - 1)


def written_partitions(spark, root: str, run: str, num_partitions: int,
                       seconds: dict | None = None) -> Partitions:
    """Per-partition facts of a written index table; partitions without rows are empty.
    ``seconds`` receives the build tasks' own time (summed over tasks)."""
    found = tables.written(spark, root, run, tables.INDEX_FACTS + [tables.TASK_SECONDS])
    facts: dict[int, tuple] = {}
    for row, file in found:
        pid = row["partition_id"]
        if pid in facts or not 0 <= pid < num_partitions:
            raise RuntimeError(f"the index table holds partition {pid} more than once or out "
                               f"of range 0..{num_partitions - 1}; the build output is damaged")
        facts[pid] = (file, int(row["num_rows"]), int(row["payload_bytes"]), row["checksum"],
                      float(row["sq_error"] or 0.0))
        if seconds is not None and row[tables.TASK_SECONDS]:
            build, search = row[tables.TASK_SECONDS]
            seconds["task seconds: build partitions"] = round(
                seconds.get("task seconds: build partitions", 0.0) + build, 3)
            seconds["task seconds: calibration searches"] = round(
                seconds.get("task seconds: calibration searches", 0.0) + search, 3)
    empty = ("", 0, 0, "", 0.0)
    columns = list(zip(*(facts.get(pid, empty) for pid in range(num_partitions))))
    return Partitions(files=list(columns[0]), rows=list(columns[1]),
                      payload_bytes=list(columns[2]), checksums=list(columns[3]),
                      sq_errors=list(columns[4]), deletes=[[] for _ in range(num_partitions)])


def location_buckets(spark, num_rows: int) -> int:
    forced = spark.conf.get(LOCATION_BUCKETS_CONF, None)
    if forced:
        return max(1, int(forced))
    return max(1, math.ceil(num_rows / LOCATION_BUCKET_ROWS))


def write_locations(spark, root: str, partitions: Partitions, num_rows: int,
                    kind: str) -> tuple[Locations, str]:
    """The id-location table (bucket, id, partition_id) from the written partitions'
    id columns (payloads are not read), and the directory it was written to."""
    buckets = location_buckets(spark, num_rows)
    run = new_run("locations")
    written = write_location_run(spark, root, run, [f for f in partitions.files if f], kind,
                                 buckets)
    by_bucket: list[list[str]] = [[] for _ in range(buckets)]
    for row, file in written:
        if file not in by_bucket[row["bucket"]]:
            by_bucket[row["bucket"]].append(file)
    return located_files(spark, root, buckets, by_bucket), run


def write_location_run(spark, root: str, run: str, files: list[str], kind: str, buckets: int,
                       first_new: dict[int, int] | None = None) -> list:
    """Write the id locations of the ids stored in these partition files, read back from
    the files themselves (never from a second evaluation of the input); with
    ``first_new``, only the ids at or past a partition's first new position. Returns
    the written (row, file) facts."""
    ids = spark.read.parquet(*[join(root, f) for f in files]).select(
        F.posexplode("ids").alias("position", "id"), F.col("pid").alias("partition_id"))
    if first_new is not None:
        starts = spark.createDataFrame(sorted(first_new.items()), "partition_id int, start int")
        ids = ids.join(F.broadcast(starts), "partition_id").where(
            F.col("position") >= F.col("start"))
    located = ids.select("id", "partition_id").mapInArrow(
        bucket_fn(buckets), f"bucket int, id {kind}, partition_id int")
    tables.write_table(located.repartitionById(buckets, "bucket"), join(root, run), "bucket")
    return tables.written(spark, root, run, ["bucket"], distinct=True)


def located_files(spark, root: str, buckets: int, by_bucket: list[list[str]],
            known: Locations | None = None) -> Locations:
    """The id-location table of these files, with each file's checksum (computed by
    Spark for the files ``known`` does not list)."""
    sums = {} if known is None else {f: c for fs, cs in zip(known.files, known.checksums)
                                     for f, c in zip(fs, cs)}
    sums.update(tables.file_checksums(spark, root, [f for fs in by_bucket for f in fs
                                                    if f not in sums]))
    return Locations(buckets, by_bucket, [[sums[f] for f in fs] for fs in by_bucket])


def bucket_fn(buckets: int):
    """(id, partition_id) rows with their id-location bucket."""

    def with_bucket(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            ids = batch.column("id")
            yield pa.RecordBatch.from_arrays(
                [pa.array(tables.id_buckets(ids, buckets), pa.int32()), ids,
                 batch.column("partition_id")], ["bucket", "id", "partition_id"])

    return with_bucket


class removed_on_failure:
    """Delete what a failed write left under the root (best effort); nothing when the
    write may have been committed (:class:`CommitStateUnknownError`)."""

    def __init__(self, spark, root: str, paths: list[str]):
        self.spark, self.root, self.paths = spark, root, paths

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None or issubclass(kind, CommitStateUnknownError):
            return False
        store = store_for(self.spark, self.root)
        for path in self.paths:
            try:
                store.delete(join(self.root, path))
            except Exception:  # the original error matters more
                log.warning("could not remove the partial output %s", join(self.root, path))
        return False


def new_manifest(root: str, built: Built, params: dict, user_set: list[str], dim: int,
                 kind: str, build_seconds: dict) -> Manifest:
    """The manifest of a fresh build (version numbers are set when it is published)."""
    stored = {**params, "numPartitions": built.num_clusters,
              "maxPartitionRows": built.max_partition_rows}
    return Manifest.with_param_values(
        stored, list(user_set), root=root, version=0, index_type=params["indexType"],
        metric=params["metric"], dim=dim, id_type=kind, meta_file=built.meta_file,
        meta_sha256=built.meta_sha256, partitions=built.partitions,
        locations=built.locations, build_seconds=build_seconds)


def with_checked_meta(spark, manifest: Manifest) -> Meta:
    """The meta file of a manifest, read on the driver and verified."""
    data = store_for(spark, manifest.root).read(join(manifest.root, manifest.meta_file), 8 << 30)
    return checked_meta(manifest, data)
