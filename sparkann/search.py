"""Batch search with Spark: route, group per partition, search, merge.

Routed queries are shuffled so each (partition, chunk) lands in one task,
which loads that partition from its Parquet file on a cache miss and searches
all its queries in one batched call; loaded graphs stay cached in the Python
worker between tasks and jobs. Indexes on stores the tasks cannot read are
read by Spark instead and joined with the grouped queries.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as fs
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import pq as product_quantizer
from . import storage
from .partitions import HNSWPartition, PQPartition
from .router import Router, ShardPlan
from .tasks import (
    FaultPlan,
    cluster_cores,
    fail_first_attempt,
    resolve_threads,
    threads_per_task,
)
from .vectors import list_array, normalize_rows, to_matrix, vector_column

QID = "__sparkann_qid"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    vector_col: str
    neighbors_col: str
    k: int
    num_probes: int
    ef_search: int
    query_batch_rows: int = 20_000
    broadcast_bytes: int = 256 << 20
    num_threads: int = 0
    fail_first_attempt: FaultPlan | frozenset = frozenset()
    rerank_k: int = 0
    allowed_ids_col: str = ""
    exclude_self_col: str = ""  # the query id column whose own id is dropped from answers
    probe_epsilon: float = 0.0  # query-aware probe pruning (0 = off)
    payload_reads: str = "auto"  # "task", "join" or "auto" (see PAYLOAD_READS_CONF)


def search(queries: DataFrame, manifest: storage.Manifest, settings: SearchSettings) -> DataFrame:
    """``queries`` with a neighbours column added (best first).

    With ``exclude_self_col``, ``settings.k`` must already count the extra
    neighbour that may be the query itself.
    """
    keyed = queries.withColumn(QID, F.monotonically_increasing_id())
    columns = [F.col(QID).alias("qid"), vector_column(queries, settings.vector_col).alias("vector")]
    allowed_type = f"array<{manifest.id_type}>"
    if settings.allowed_ids_col:
        columns.append(allowed_ids_column(queries, settings.allowed_ids_col, allowed_type))
    else:
        columns.append(F.lit(None).cast(allowed_type).alias("allowed"))
    rows = keyed.select(*columns)
    routed = route(rows, manifest, settings)
    if settings.allowed_ids_col:
        routed = routed.unionByName(route_to_subsets(rows, manifest, settings))
    num_queries = check_queries(rows, manifest, settings.vector_col)
    log.info("sparkann: searching %d queries (k=%d, numProbes=%d, efSearch=%d)", num_queries,
             settings.k, settings.num_probes, settings.ef_search)
    candidates = search_routed(routed, manifest, settings, num_queries)
    found = attach_neighbors(keyed, merge_top_k(candidates, settings.k), settings.neighbors_col)
    if not settings.exclude_self_col:
        return found
    own = F.col(settings.exclude_self_col)
    others = F.filter(settings.neighbors_col, lambda n: n["id"] != own)
    return found.withColumn(settings.neighbors_col, F.slice(others, 1, settings.k - 1))


def check_queries(rows: DataFrame, manifest, name: str) -> int:
    """Count the queries and check their vectors on the driver before searching."""
    vec = F.col("vector")
    stats = rows.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(vec.isNull().cast("long")).alias("nulls"),
        F.min(F.size(vec)).alias("low"),
        F.max(F.size(vec)).alias("high"),
    ).collect()[0]
    if stats.nulls:
        raise ValueError(f"query column {name!r} holds {stats.nulls} null vector(s)")
    for dim in {stats.low, stats.high} - {None, manifest.dim}:
        raise ValueError(
            f"query vectors in column {name!r} have dimension {dim}, "
            f"but the index has dimension {manifest.dim}"
        )
    return int(stats.n)


def allowed_ids_column(queries: DataFrame, name: str, type_name: str):
    """The optional per-query list of ids answers are restricted to."""
    dtype = queries.schema[name].dataType if name in queries.columns else None
    if dtype is None:
        raise ValueError(
            f"allowedIdsCol={name!r} not found; the DataFrame has columns {queries.columns}")
    if not isinstance(dtype, T.ArrayType):
        raise TypeError(
            f"allowedIdsCol={name!r} has type {dtype.simpleString()}; expected {type_name}")
    return F.col(name).cast(type_name).alias("allowed")


_ROUTED = "qid long, partition_id int, vector array<float>"


def route(rows: DataFrame, manifest, settings: SearchSettings) -> DataFrame:
    """(qid, partition_id, vector, allowed) for queries without an id subset."""
    plain = rows.where(F.col("allowed").isNull())
    routed = plain.select("qid", "vector").mapInArrow(_route_fn(manifest, settings), _ROUTED)
    return routed.withColumn("allowed", F.lit(None).cast(rows.schema["allowed"].dataType))


def route_to_subsets(rows: DataFrame, manifest, settings: SearchSettings) -> DataFrame:
    """Queries with an id subset go to every partition holding one of their ids."""
    spark = rows.sparkSession
    subset = rows.where(F.col("allowed").isNotNull())
    wanted = subset.select("qid", F.explode(F.array_distinct("allowed")).alias("id"))
    located = storage.read_table(spark, manifest, ["partition_id", "ids"]).select(
        "partition_id", F.explode("ids").alias("id")
    )
    per_partition = wanted.join(located, "id").groupBy("qid", "partition_id").agg(
        F.collect_list("id").alias("allowed")
    )
    vectors = subset.select("qid", "vector").mapInArrow(
        _prepare_fn(manifest, settings), "qid long, vector array<float>"
    )
    return per_partition.join(vectors, "qid").select("qid", "partition_id", "vector", "allowed")


def search_routed(routed: DataFrame, manifest, settings: SearchSettings, num_queries: int):
    """(qid, id, distance) candidates of routed queries from their partitions."""
    files = payload_files(routed.sparkSession, manifest, settings.payload_reads)
    if files is None:
        return _search_joined(routed, manifest, settings, num_queries)
    return _search_in_tasks(routed, manifest, settings, num_queries, files)


def payload_files(spark, manifest, mode: str) -> dict[int, list[str]] | None:
    """Partition file URIs when tasks read payloads themselves, else None.

    "auto" reads in tasks when the index lies on a local (or mounted) file
    system, which every executor sees; other stores go through Spark's reader.
    """
    if mode not in PAYLOAD_READS:
        raise ValueError(f"{PAYLOAD_READS_CONF}={mode!r}: expected one of {PAYLOAD_READS}")
    if mode == "join":
        return None
    key = (manifest.token, tuple(manifest.partition_dirs), mode)
    if key not in _FILES:
        files = storage.partition_files(spark, manifest)
        local = all(uri.startswith("file:") for uris in files.values() for uri in uris)
        _FILES[key] = files if mode == "task" or local else None
    return _FILES[key]


PAYLOAD_READS_CONF = "spark.sparkann.payloadReads"
PAYLOAD_READS = ("auto", "task", "join")
_FILES: dict = {}  # (index token, data dirs, mode) -> partition files, on the driver


def _search_in_tasks(routed, manifest, settings, num_queries, files):
    """One shuffle sends each (partition, chunk) of routed queries to its own task,
    which loads the partition from its file on a cache miss."""
    spark = routed.sparkSession
    num_partitions, cores = len(manifest.checksums), cluster_cores(spark)
    chunks = _chunks(num_queries, settings.query_batch_rows, num_partitions, cores)
    cap = max(4 * cores, int(spark.conf.get("spark.sql.shuffle.partitions")))
    tasks = min(num_partitions * chunks, cap)
    key = F.col("partition_id") * chunks + F.pmod(F.col("qid"), chunks)
    spread = _by_id(routed, tasks, key)
    threads = threads_per_task(spark, settings.num_threads, tasks)
    return spread.mapInArrow(
        _search_tasks_fn(manifest, settings, threads, files),
        f"qid long, id {manifest.id_type}, distance float",
    )


def _chunks(num_queries: int, batch_rows: int, num_partitions: int, cores: int) -> int:
    """Query chunks per partition: at most ``batch_rows`` queries each, and enough
    (about four tasks per core) that the last wave of tasks keeps the cores busy,
    unless chunks would fall below a thousand queries."""
    by_size = math.ceil(num_queries / batch_rows)
    by_cores = min(math.ceil(4 * cores / num_partitions), num_queries // 1000)
    return max(1, by_size, by_cores)


def _by_id(frame: DataFrame, tasks: int, key) -> DataFrame:
    """Rows to task ``key mod tasks`` (hash partitioning before Spark 4.1)."""
    if hasattr(frame, "repartitionById"):
        return frame.repartitionById(tasks, key.cast("int"))
    return frame.repartition(tasks, key)


def _search_joined(routed, manifest, settings, num_queries):
    """Queries grouped per (partition, chunk) and joined with the index table."""
    spark = routed.sparkSession
    chunks = max(1, math.ceil(num_queries / settings.query_batch_rows))
    grouped = routed.groupBy("partition_id", F.pmod(F.col("qid"), chunks).alias("chunk")).agg(
        F.collect_list(F.struct("qid", "vector", "allowed")).alias("queries")
    )
    table = storage.read_table(spark, manifest, _payload_columns(settings))
    num_partitions = len(manifest.checksums)
    if num_partitions > 1 and num_queries * settings.num_probes < 2 * num_partitions:
        wanted = [r.partition_id for r in routed.select("partition_id").distinct().collect()]
        table = table.where(F.col("partition_id").isin(wanted))
    per_query = 4 * manifest.dim + 16
    estimate = num_queries * min(settings.num_probes + 1, num_partitions) * per_query
    side = F.broadcast(grouped) if estimate <= settings.broadcast_bytes else grouped
    joined = table.join(side, "partition_id")
    threads = threads_per_task(spark, settings.num_threads, num_partitions)
    return joined.mapInArrow(
        _search_fn(manifest, settings, threads), f"qid long, id {manifest.id_type}, distance float"
    )


def _payload_columns(settings: SearchSettings) -> list[str]:
    return storage.SEARCH_COLUMNS + (["vectors", "vectors_checksum"] if settings.rerank_k else [])


def merge_top_k(candidates: DataFrame, k: int) -> DataFrame:
    """The ``k`` smallest distances per query, ties by id: (qid, neighbors)."""
    best = F.slice(F.array_sort(F.collect_list(F.struct("distance", "id"))), 1, k)
    as_output = F.transform(
        best, lambda s: F.struct(s["id"].alias("id"), s["distance"].alias("distance")))
    return candidates.groupBy("qid").agg(as_output.alias("neighbors"))


def attach_neighbors(keyed: DataFrame, merged: DataFrame, column: str) -> DataFrame:
    """Join merged answers back onto the query rows; a query with none gets []."""
    merged = merged.withColumnRenamed("qid", QID)
    empty = F.array().cast(merged.schema["neighbors"].dataType)
    found = F.coalesce(F.col("neighbors"), empty).alias(column)
    kept = [keyed[c] for c in keyed.columns if c != QID]
    return keyed.join(merged, QID, "left").select(*kept, found)


def _plan(manifest: storage.Manifest) -> ShardPlan:
    return ShardPlan(np.asarray(manifest.shard_counts), _offsets(manifest.shard_counts))


def _router(manifest: storage.Manifest) -> Router:
    return Router(manifest.centroids, manifest.metric, manifest.cluster_sizes, _plan(manifest))


def _offsets(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _route_fn(manifest: storage.Manifest, settings: SearchSettings):
    metric, dim, k, probes = manifest.metric, manifest.dim, settings.k, settings.num_probes

    def route(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        router = _cached(("router", manifest.token), lambda: (_router(manifest), 0))
        for batch in batches:
            vectors = _query_matrix(batch.column("vector"), dim, metric, settings.vector_col)
            rows, partitions = router.route(vectors, probes, k, settings.probe_epsilon)
            take = pa.array(rows)
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("qid").take(take),
                    pa.array(partitions, pa.int32()),
                    list_array(vectors[rows]),
                ],
                ["qid", "partition_id", "vector"],
            )

    return route


def _prepare_fn(manifest: storage.Manifest, settings: SearchSettings):
    """Checked (and for cosine, normalised) query vectors."""

    def prepare(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            vectors = _query_matrix(batch.column("vector"), manifest.dim, manifest.metric,
                                    settings.vector_col)
            yield pa.RecordBatch.from_arrays([batch.column("qid"), list_array(vectors)],
                                             ["qid", "vector"])

    return prepare


def _query_matrix(column: pa.Array, dim: int, metric: str, name: str) -> np.ndarray:
    vectors = to_matrix(column, None, f"query column {name!r}")
    if len(vectors) and vectors.shape[1] != dim:
        raise ValueError(
            f"query vectors in column {name!r} have dimension {vectors.shape[1]}, "
            f"but the index has dimension {dim}"
        )
    if not np.isfinite(vectors).all():
        raise ValueError(f"query column {name!r} holds NaN or infinite values")
    return normalize_rows(vectors, f"query column {name!r}") if metric == "cosine" else vectors


def _search_fn(manifest: storage.Manifest, settings: SearchSettings, thread_hint: int):
    """Rows of the index table joined with their grouped queries."""
    rerank = settings.rerank_k > 0

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fail_first_attempt("search", settings.fail_first_attempt)
        threads = resolve_threads(thread_hint)
        for batch in batches:
            for row in range(batch.num_rows):
                pid = batch.column("partition_id")[row].as_py()
                part, ids = _loaded(manifest, pid, rerank, lambda: batch.slice(row, 1))
                queries = batch.column("queries")[row].values
                yield from _answer(part, ids, queries, manifest, settings, threads)

    return run


def _search_tasks_fn(manifest, settings: SearchSettings, thread_hint: int, files: dict):
    """Routed query rows, all of a (partition, chunk) in one task."""
    rerank = settings.rerank_k > 0
    columns = [c for c in _payload_columns(settings) if c != "partition_id"]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fail_first_attempt("search", settings.fail_first_attempt)
        threads = resolve_threads(thread_hint)
        received = list(batches)
        if not sum(b.num_rows for b in received):
            return
        table = pa.Table.from_batches(received)
        table = table.sort_by("partition_id")
        pids = table.column("partition_id").to_numpy()
        starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(pids)]):
            pid = int(pids[start])
            part, ids = _loaded(manifest, pid, rerank,
                                lambda: _read_row(files[pid], columns, pid))
            queries = _struct(table.slice(start, stop - start), ["qid", "vector", "allowed"])
            yield from _answer(part, ids, queries, manifest, settings, threads)

    return run


def _loaded(manifest: storage.Manifest, pid: int, rerank: bool, read_row):
    """(partition, ids) from the worker cache, or verified and loaded from ``read_row()``."""
    return _cached((manifest.token, pid, rerank),
                   lambda: _load_partition(manifest, pid, read_row(), rerank))


def _struct(table: pa.Table, names: list[str]) -> pa.StructArray:
    return pa.StructArray.from_arrays([table.column(n).combine_chunks() for n in names], names)


def _read_row(uris: list[str], columns: list[str], pid: int) -> pa.Table:
    """A partition's one row of the index table, read from its Parquet file(s)."""
    tables = []
    for uri in uris:
        filesystem, path = fs.FileSystem.from_uri(re.sub(r"^s3[an]://", "s3://", uri))
        tables.append(pq.read_table(path, columns=columns, filesystem=filesystem))
    table = pa.concat_tables(tables)
    if table.num_rows != 1:
        raise ValueError(
            f"index partition {pid} is damaged: its files hold {table.num_rows} rows, not 1")
    return table


def _answer(part, ids: pa.Array, queries: pa.StructArray, manifest, settings, threads):
    """Candidate rows (qid, id, distance) of one partition for its routed queries."""
    qids = queries.field("qid").to_numpy()
    vectors = to_matrix(queries.field("vector"), manifest.dim)
    allowed = queries.field("allowed")
    plain = np.asarray(allowed.is_null())
    k, ef, metric = settings.k, settings.ef_search, manifest.metric
    part.rerank_k = settings.rerank_k
    if plain.any():
        labels, dists = part.search(vectors[plain], k, ef, metric, threads)
        yield _candidates(qids[plain], labels, dists, ids)
    for row in np.nonzero(~plain)[0]:
        labels = _labels_of(ids, allowed[int(row)].values)
        if len(labels):
            found, dists = part.search_subset(vectors[row], labels, k, ef, metric)
            yield _candidates(qids[row : row + 1], found, dists, ids)


def _labels_of(ids: pa.Array, wanted: pa.Array) -> np.ndarray:
    """Row labels of the ``wanted`` ids present in this partition."""
    positions = pc.index_in(wanted, value_set=ids)
    return np.unique(positions.drop_null().to_numpy()).astype(np.int64)


def _candidates(qids, labels, dists, ids) -> pa.RecordBatch:
    found = labels >= 0
    if found.any() and labels[found].max() >= len(ids):
        raise ValueError("index partition is damaged: a graph label has no id")
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.repeat(qids, found.sum(axis=1)), pa.int64()),
            ids.take(pa.array(labels[found])),
            pa.array(dists[found], pa.float32()),
        ],
        ["qid", "id", "distance"],
    )


def _load_partition(manifest: storage.Manifest, pid: int, row, rerank: bool):
    """Verify a partition's row of the index table against the manifest and load it."""
    payload = row.column("payload")[0].as_buffer()
    codebook = row.column("codebook")[0].as_buffer() or pa.py_buffer(b"")
    deleted = row.column("deleted")[0].values.to_numpy(zero_copy_only=False)
    expected = manifest.checksums[pid]
    actual = storage.partition_checksum(payload, codebook, deleted)
    if actual != expected or row.column("checksum")[0].as_py() != expected:
        raise ValueError(
            f"index partition {pid} is damaged: its payload checksum does not match the manifest"
        )
    ids = row.column("ids")[0].values
    vectors = _exact_vectors(manifest, row, pid) if rerank else None
    try:
        part = _partition(manifest, pid, payload, codebook, vectors)
        part.delete(deleted)
    except ValueError as err:
        raise ValueError(f"index partition {pid}: {err}") from None
    if len(ids) != part.count:
        raise ValueError(
            f"index partition {pid} is damaged: {len(ids)} ids for {part.count} vectors")
    return (part, ids), payload.size + (0 if part.kind == "hnsw" else part.codes.nbytes)


def _partition(manifest, pid, payload, codebook, vectors):
    if manifest.params.get("indexType", "hnsw") == "hnsw":
        return HNSWPartition.load(memoryview(payload))
    shared = manifest.codebook or bytes(codebook)
    cluster = int(_plan(manifest).cluster_of[pid])
    return PQPartition.load(memoryview(payload), product_quantizer.codebook_from_bytes(shared),
                            manifest.centroids[cluster], vectors)


def _exact_vectors(manifest, row, pid) -> np.ndarray:
    data = row.column("vectors")[0].as_buffer()
    if data is None:
        raise ValueError(f"index partition {pid} stores no exact vectors; rebuild with rerankK > 0")
    if storage.sha256(data) != manifest.vector_checksums[pid]:
        raise ValueError(f"index partition {pid} is damaged: its exact vectors fail the checksum")
    return np.frombuffer(data, dtype=np.float32).reshape(-1, manifest.dim)


class _LRU:
    """Loaded partitions kept in the Python worker, bounded by payload bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key, load):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key][0]
        value, size = load()
        with self.lock:
            self.items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self.items) > 1:
                _, (_, dropped) = self.items.popitem(last=False)
                self.bytes -= dropped
        return value


_CACHE = _LRU(max_bytes=2 << 30)


def _cached(key, load):
    return _CACHE.get(key, load)
