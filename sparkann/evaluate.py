"""Exact k-nearest neighbours on Spark (blocked brute force) and recall@k."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .exact import knn
from .search import QID, attach_neighbors, merge_top_k
from .vectors import id_type, normalize_rows, to_matrix, vector_column


def exact_neighbors(
    base: DataFrame,
    queries: DataFrame,
    k: int = 10,
    metric: str = "l2",
    vector_col: str = "vector",
    id_col: str = "id",
    neighbors_col: str = "neighbors",
    block_rows: int = 20_000,
    query_block_rows: int = 2_000,
) -> DataFrame:
    """``queries`` with their exact ``k`` nearest rows of ``base`` (same output as search).

    ``base`` is cut into blocks of about ``block_rows`` rows; every block is
    compared with every block of queries (broadcast), and the per-block
    candidates are merged like an index search's.
    """
    kind = id_type(base, id_col)
    rows = base.select(F.col(id_col).alias("id"), vector_column(base, vector_col).alias("vector"))
    keyed = queries.withColumn(QID, F.monotonically_increasing_id())
    qrows = keyed.select(F.col(QID).alias("qid"), vector_column(queries, vector_col).alias("vector"))
    num_blocks = max(1, math.ceil(base.count() / block_rows))
    num_qblocks = max(1, math.ceil(queries.count() / query_block_rows))
    blocks = rows.groupBy(F.pmod(F.xxhash64("id"), num_blocks).alias("block")).agg(
        F.collect_list("id").alias("ids"), F.collect_list("vector").alias("vectors")
    )
    qblocks = qrows.groupBy(F.pmod("qid", num_qblocks).alias("qblock")).agg(
        F.collect_list("qid").alias("qids"), F.collect_list("vector").alias("qvectors")
    )
    pairs = blocks.crossJoin(F.broadcast(qblocks))
    candidates = pairs.mapInArrow(
        _block_knn_fn(k, metric), f"qid long, id {kind}, distance float"
    )
    return attach_neighbors(keyed, merge_top_k(candidates, k), neighbors_col)


def _block_knn_fn(k: int, metric: str):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in range(batch.num_rows):
                base = to_matrix(batch.column("vectors")[row].values)
                queries = to_matrix(batch.column("qvectors")[row].values)
                if metric == "cosine":
                    base, queries = normalize_rows(base), normalize_rows(queries)
                labels, dists = knn(base, queries, k, metric)
                qids = np.repeat(batch.column("qids")[row].values.to_numpy(), labels.shape[1])
                ids = batch.column("ids")[row].values.take(pa.array(labels.reshape(-1)))
                yield pa.RecordBatch.from_arrays(
                    [pa.array(qids, pa.int64()), ids, pa.array(dists.reshape(-1), pa.float32())],
                    ["qid", "id", "distance"],
                )

    return run


def recall_at_k(found: DataFrame, truth: DataFrame, key_col: str, k: int,
                found_col: str = "neighbors", truth_col: str = "neighbors") -> float:
    """Mean share of each query's true ``k`` neighbours found among its first ``k`` answers."""
    ids = lambda c: F.transform(F.slice(F.col(c), 1, k), lambda n: n["id"])  # noqa: E731
    a = found.select(key_col, ids(found_col).alias("_found"))
    b = truth.select(key_col, ids(truth_col).alias("_truth"))
    hits = F.size(F.array_intersect("_found", "_truth")) / F.greatest(F.size("_truth"), F.lit(1))
    value = a.join(b, key_col).agg(F.avg(hits).alias("recall")).collect()[0].recall
    if value is None:
        raise ValueError(f"no query rows matched on {key_col!r}; recall is undefined")
    return float(value)


def model_recall(model, base: DataFrame, queries: DataFrame, key_col: str, k: int | None = None) -> float:
    """recall@k of ``model`` on ``queries`` against exact search over ``base``."""
    k = k or model.getK()
    truth = exact_neighbors(
        base, queries, k, model.getMetric(),
        vector_col=model.getOrDefault("vectorCol"), id_col=model.getOrDefault("idCol"),
    )
    found = model.copy({model.k: k}).transform(queries)
    return recall_at_k(found, truth, key_col, k, model.getOrDefault("neighborsCol"))
