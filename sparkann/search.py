"""Batch search with Spark: route, group per partition, broadcast-join, merge.

Each partition's payload is read once per job and searched with all the
queries routed to it in one batched call; loaded graphs stay cached in the
Python worker between tasks and jobs.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import hnsw, storage
from .router import Router, ShardPlan
from .tasks import fail_first_attempt, resolve_threads, threads_per_task
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
    fail_first_attempt: frozenset = frozenset()


def search(queries: DataFrame, manifest: storage.Manifest, settings: SearchSettings) -> DataFrame:
    """``queries`` with a neighbours column added (best first)."""
    keyed = queries.withColumn(QID, F.monotonically_increasing_id())
    vectors = keyed.select(
        F.col(QID).alias("qid"), vector_column(queries, settings.vector_col).alias("vector")
    )
    routed = vectors.mapInArrow(
        _route_fn(manifest, settings), "qid long, partition_id int, vector array<float>"
    )
    candidates = search_routed(routed, manifest, settings, num_queries=queries.count())
    return attach_neighbors(keyed, merge_top_k(candidates, settings.k), settings.neighbors_col)


def search_routed(routed: DataFrame, manifest, settings: SearchSettings, num_queries: int):
    """(qid, id, distance) candidates of routed queries from their partitions."""
    spark = routed.sparkSession
    chunks = max(1, math.ceil(num_queries / settings.query_batch_rows))
    grouped = routed.groupBy("partition_id", F.pmod(F.col("qid"), chunks).alias("chunk")).agg(
        F.collect_list(F.struct("qid", "vector")).alias("queries")
    )
    table = storage.read_table(spark, manifest)
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


def merge_top_k(candidates: DataFrame, k: int) -> DataFrame:
    """The ``k`` smallest distances per query, ties by id: (qid, neighbors)."""
    best = F.slice(F.array_sort(F.collect_list(F.struct("distance", "id"))), 1, k)
    as_output = F.transform(best, lambda s: F.struct(s["id"].alias("id"), s["distance"].alias("distance")))
    return candidates.groupBy("qid").agg(as_output.alias("neighbors"))


def attach_neighbors(keyed: DataFrame, merged: DataFrame, column: str) -> DataFrame:
    merged = merged.withColumnRenamed("qid", QID).withColumnRenamed("neighbors", column)
    return keyed.join(merged, QID, "left").drop(QID)


def _router(manifest: storage.Manifest) -> Router:
    plan = ShardPlan(np.asarray(manifest.shard_counts), _offsets(manifest.shard_counts))
    return Router(manifest.centroids, manifest.metric, manifest.cluster_sizes, plan)


def _offsets(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def _route_fn(manifest: storage.Manifest, settings: SearchSettings):
    metric, dim, k, probes = manifest.metric, manifest.dim, settings.k, settings.num_probes

    def route(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        router = _cached(("router", manifest.token), lambda: (_router(manifest), 0))
        for batch in batches:
            vectors = _query_matrix(batch.column("vector"), dim, metric, settings.vector_col)
            rows, partitions = router.route(vectors, probes, k)
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
    metric, dim, checksums = manifest.metric, manifest.dim, manifest.checksums

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        fail_first_attempt("search", settings.fail_first_attempt)
        threads = resolve_threads(thread_hint)
        for batch in batches:
            for row in range(batch.num_rows):
                pid = batch.column("partition_id")[row].as_py()
                graph, ids = _cached(
                    (manifest.token, pid), lambda: _load_partition(batch, row, checksums[pid])
                )
                queries = batch.column("queries")[row].values
                vectors = to_matrix(queries.field("vector"), dim)
                labels, dists = hnsw.search(
                    graph, vectors, settings.k, settings.ef_search, metric, threads
                )
                found = labels >= 0
                qids = np.repeat(queries.field("qid").to_numpy(), found.sum(axis=1))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(qids, pa.int64()), ids.take(pa.array(labels[found])),
                     pa.array(dists[found], pa.float32())],
                    ["qid", "id", "distance"],
                )

    return run


def _load_partition(batch: pa.RecordBatch, row: int, expected: str):
    """Verify a partition's payload against the manifest and load it."""
    pid = batch.column("partition_id")[row].as_py()
    payload = batch.column("payload")[row].as_buffer()
    if storage.sha256(payload) != expected or batch.column("checksum")[row].as_py() != expected:
        raise ValueError(
            f"index partition {pid} is damaged: its payload checksum does not match the manifest"
        )
    try:
        graph = hnsw.from_bytes(memoryview(payload))
    except ValueError as err:
        raise ValueError(f"index partition {pid}: {err}") from None
    ids = batch.column("ids")[row].values
    if len(ids) != graph.get_current_count():
        raise ValueError(f"index partition {pid} is damaged: {len(ids)} ids for "
                         f"{graph.get_current_count()} vectors")
    return (graph, ids), payload.size


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
