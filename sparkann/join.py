"""The nearest-neighbour join: one output row per (query row, neighbour), with the
neighbour's stored item columns, its distance and its rank.

Spark moves the data: the search is the model's lazy search, the neighbour lists
are exploded with ``posexplode``, and the item columns come from the index's
partition files (read and verified in tasks, see :func:`item_rows`), joined by id.
"""

from __future__ import annotations

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .loader import IndexHandle, partition_items
from .storage.format import Manifest
from .stored import item_ddl, live_positions, per_stored_partition

JOIN_TYPES = ("inner", "left")
NEIGHBORS = "__sparkann_neighbors"
FOUND = "__sparkann_found"


def output_names(manifest: Manifest, id_col: str, prefix: str) -> list[str]:
    """The columns a join adds: the neighbour's id, its item columns, distance, rank."""
    return [f"{prefix}{id_col}", *[f"{prefix}{name}" for name, _ in manifest.item_types],
            "distance", "rank"]


def check_join(queries: DataFrame, manifest: Manifest, id_col: str, how: str,
               prefix: str) -> None:
    """``ValueError`` for an unknown ``how``, or for a column the join would add that
    the query rows already have."""
    if how not in JOIN_TYPES:
        raise ValueError(f"how={how!r} must be one of {', '.join(JOIN_TYPES)}")
    if not isinstance(prefix, str):
        raise ValueError(f"itemPrefix={prefix!r} must be a string")
    clash = [name for name in output_names(manifest, id_col, prefix) if name in queries.columns]
    if clash:
        raise ValueError(f"nearestJoin: the query rows already have the column(s) {clash}, "
                         "which the join adds for each neighbour; rename them, or pass "
                         "itemPrefix (for example itemPrefix='item_') to prefix the "
                         "neighbour's id and item columns")


def nearest_join(searched: DataFrame, query_cols: list[str], manifest: Manifest,
                 handle: IndexHandle, id_col: str, how: str, prefix: str) -> DataFrame:
    """``searched`` (the query rows with their neighbour lists in :data:`NEIGHBORS`) as
    one row per (query row, neighbour), or, under ``how="left"``, one row with null
    neighbour columns for a query without neighbours."""
    explode = F.posexplode_outer if how == "left" else F.posexplode
    exploded = searched.select(*[F.col(f"`{c}`") for c in query_cols],
                               explode(NEIGHBORS).alias("__sparkann_pos", FOUND))
    pairs = exploded.select(
        *[F.col(f"`{c}`") for c in query_cols],
        F.col(FOUND)["id"].alias(f"{prefix}{id_col}"),
        F.col(FOUND)["distance"].alias("distance"),
        (F.col("__sparkann_pos") + 1).alias("rank"))
    if not manifest.item_types:
        return pairs
    found = item_rows(searched.sparkSession, manifest, handle).withColumnsRenamed(
        {"id": "__sparkann_item_id",
         **{name: f"{prefix}{name}" for name, _ in manifest.item_types}})
    joined = pairs.join(found, pairs[f"`{prefix}{id_col}`"] == found["__sparkann_item_id"],
                        "left")
    return joined.select(*[F.col(f"`{c}`") for c in query_cols],
                         *[F.col(f"`{name}`") for name in output_names(manifest, id_col,
                                                                         prefix)])


def item_rows(spark, manifest: Manifest, handle: IndexHandle) -> DataFrame:
    """(id, item columns...) of every live row of a version, read from its partition
    files in tasks and verified against the manifest."""
    return per_stored_partition(spark, manifest, handle, _live_items,
                                f"id {manifest.id_type}" + item_ddl(manifest))


def _live_items(index, pid: int) -> pa.RecordBatch:
    ids, values = partition_items(index, pid)
    keep = live_positions(index, pid, len(ids))
    return pa.RecordBatch.from_arrays(
        [ids.take(keep), *[values.column(n).combine_chunks().take(keep)
                           for n in values.column_names]],
        ["id", *values.column_names])
