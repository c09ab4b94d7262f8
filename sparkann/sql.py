"""SQL: search an index by path from a table of queries, with a Python UDTF::

    sparkann.sql.register(spark)  # once per session
    spark.sql('''SELECT * FROM sparkann_search(TABLE(queries), '/data/items-index', 10,
                                              "category = 'shoes' AND price < 100")''')

The function returns one row per (query row, neighbour), in the shape of
:meth:`ANNIndexModel.nearestJoin`: every query column, then the neighbour's id (named
as the index's ``idCol``), its stored item columns, ``distance`` and ``rank``. Its
arguments, by position or by name:

``queries`` (a ``TABLE(...)`` holding the query vectors), ``path`` (the index),
``k`` (default 10), ``filter`` (a predicate over the item columns, default none),
``vector_col`` (default ``'vector'``) and ``prefix`` (put before the neighbour's
column names, to keep them apart from the query's; default none).

The index's newest version is read once when the query is analysed, on the driver,
and its calibrated search settings are used. Each task searches its own query rows
against the index in its worker cache (the query-local strategy), so the index must
fit a worker's cache, and the path must be readable by the driver and the executors.
A filter's passing rows are counted in each worker, from the item columns of every
partition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import types as T
from pyspark.sql.udtf import AnalyzeArgument, AnalyzeResult

from . import filters
from .loader import CACHE, IndexHandle, cache_budget, cached_items, id_map, open_index
from .search.filtered import count_passing, counted_groups
from .search.local import neighbours
from .search.plan import SearchPlan
from .tasks import resolve_threads
from .vectors import checked_queries

DEFAULT_NAME = "sparkann_search"
BATCH_ROWS = 1024  # query rows searched together
SPARK_TYPES = {"boolean": T.BooleanType(), "tinyint": T.ByteType(), "smallint": T.ShortType(),
               "int": T.IntegerType(), "bigint": T.LongType(), "float": T.FloatType(),
               "double": T.DoubleType(), "string": T.StringType(), "date": T.DateType()}


def register(spark, name: str = DEFAULT_NAME) -> None:
    """Register the search table function under ``name`` in ``spark``'s session (classic
    or Spark Connect)."""
    from pyspark.sql.functions import udtf

    spark.udtf.register(name, udtf(SearchFunction))


@dataclass
class SearchAnalysis(AnalyzeResult):
    """What analysis found, handed to each task: the search plan and output names."""

    plan: SearchPlan | None = None
    query_names: tuple = ()
    text: str = ""


class SearchFunction:
    """The table function; see the module docstring."""

    @staticmethod
    def analyze(queries: AnalyzeArgument, path: AnalyzeArgument, k: AnalyzeArgument | None = None,
                filter: AnalyzeArgument | None = None,
                vector_col: AnalyzeArgument | None = None,
                prefix: AnalyzeArgument | None = None) -> SearchAnalysis:
        if not queries.isTable:
            raise ValueError("sparkann_search: the first argument must be TABLE(queries)")
        values = {name: constant(arg, name) for name, arg in
                  (("path", path), ("k", k), ("filter", filter), ("vector_col", vector_col),
                   ("prefix", prefix))}
        assert isinstance(queries.dataType, T.StructType)
        return analysed(queries.dataType, str(values["path"] or ""),
                        10 if values["k"] is None else values["k"],
                        str(values["filter"] or ""), str(values["vector_col"] or "vector"),
                        str(values["prefix"] or ""))

    def __init__(self, analyze_result: SearchAnalysis):
        self.analysis = analyze_result
        self.rows: list = []

    def eval(self, queries, path, k=None, filter=None, vector_col=None, prefix=None):
        self.rows.append(queries)
        if len(self.rows) >= BATCH_ROWS:
            yield from self.flush()

    def terminate(self):
        yield from self.flush()

    def flush(self) -> Iterator[tuple]:
        rows, self.rows = self.rows, []
        if rows:
            yield from answered(self.analysis, rows)


def constant(arg: AnalyzeArgument | None, name: str):
    """A scalar argument's value; it must be a literal."""
    if arg is None:
        return None
    if arg.isTable or not arg.isConstantExpression:
        raise ValueError(f"sparkann_search: argument {name!r} must be a literal")
    return arg.value


def analysed(schema: T.StructType, path: str, k, text: str, vector_col: str,
             prefix: str) -> SearchAnalysis:
    """The output schema and search plan of a call, from the index's newest version."""
    from .estimator import ANNIndexModel
    from .storage.versions import load

    if not path:
        raise ValueError("sparkann_search: 'path' must name an index")
    manifest, digest = load(None, path)
    model = ANNIndexModel(manifest, digest)._with_index_defaults().setK(int(k))
    id_col = model.getIdCol()
    check_vector_column(schema, vector_col)
    if text:
        if not manifest.item_types:
            raise ValueError("sparkann_search: a filter needs item columns stored with the "
                             "index; fit it with ANNIndex(itemCols=[...])")
        filters.compiled(text, manifest.item_types)
    item_fields = [T.StructField(prefix + name, SPARK_TYPES[kind])
                   for name, kind in manifest.item_types]
    spark_id = T.LongType() if manifest.id_type == "long" else T.StringType()
    added = [T.StructField(prefix + id_col, spark_id), *item_fields,
             T.StructField("distance", T.FloatType()), T.StructField("rank", T.IntegerType())]
    clash = sorted({f.name for f in added} & set(schema.names))
    if clash:
        raise ValueError(f"sparkann_search: the queries already have columns {clash}; pass "
                         "a prefix argument for the neighbour's columns")
    settings = model.searchSettings()
    plan = SearchPlan(
        handle=IndexHandle(manifest.root, manifest.version, digest), id_type=manifest.id_type,
        dim=manifest.dim, vector_col=vector_col, neighbors_col="__sparkann_neighbors",
        k=settings["k"], num_probes=settings["numProbes"],
        probe_epsilon=settings["probeEpsilon"], knobs=model._knobs(settings["k"]),
        with_vectors=model._knobs(settings["k"]).needs_vectors, allowed_col="",
        exclude_self=False, id_col=id_col, strategy="local", reads="task",
        location_buckets=manifest.locations.buckets if manifest.locations else 1,
        item_types=tuple(manifest.item_types))
    return SearchAnalysis(schema=T.StructType(list(schema.fields) + added), plan=plan,
                          query_names=tuple(schema.names), text=text)


def check_vector_column(schema: T.StructType, name: str) -> None:
    if name not in schema.names:
        raise ValueError(f"sparkann_search: vector column {name!r} not found; the queries "
                         f"have {schema.names} (pass vector_col)")
    kind = schema[name].dataType
    if not (isinstance(kind, T.ArrayType)
            and isinstance(kind.elementType, (T.FloatType, T.DoubleType))):
        raise ValueError(f"sparkann_search: vector column {name!r} is {kind.simpleString()}; "
                         "expected array<float> or array<double>")


def answered(analysis: SearchAnalysis, rows: list) -> Iterator[tuple]:
    """Output rows of a batch of query rows: one per (query row, neighbour)."""
    plan = analysis.plan
    assert plan is not None
    index = open_index(plan.handle)
    if analysis.text:
        plan = replace(plan, item_filter=worker_filter(index, plan, analysis.text))
    column = pa.array([row[plan.vector_col] for row in rows], pa.list_(pa.float32()))
    vectors = index.metric.prepare(checked_queries(column, plan.dim, plan.vector_col),
                                   f"query column {plan.vector_col!r}")
    n = len(rows)
    knobs = replace(plan.knobs, threads=resolve_threads(plan.knobs.threads))
    found = neighbours(index, plan, vectors, pa.nulls(n, pa.list_(plan.arrow_id_type)),
                       None, pa.nulls(n, pa.int32()), knobs)
    ids = found.values.field("id")
    values = item_values(index, ids) if plan.item_types else []
    offsets = found.offsets.to_numpy()
    dists = found.values.field("distance").to_pylist()
    id_list = ids.to_pylist()
    for q, row in enumerate(rows):
        own = tuple(row[name] for name in analysis.query_names)
        for rank, at in enumerate(range(offsets[q], offsets[q + 1]), start=1):
            yield (*own, id_list[at], *[column[at] for column in values], dists[at], rank)


def worker_filter(index, plan: SearchPlan, text: str):
    """The filter's passing rows counted in this worker, once per version and filter."""
    manifest = index.manifest
    key = ("sql-filter", manifest.root, manifest.version, text)

    def count():
        pids = [pid for pid, f in enumerate(manifest.partitions.files) if f]
        batches = [count_passing(index, pid, text, ()) for pid in pids]
        table = pa.Table.from_batches(batches) if batches else pa.table(
            {"partition_id": pa.array([], pa.int32()), "count": pa.array([], pa.int64())})
        spec = counted_groups(manifest, text, [], table)
        return spec, 24 * len(pids) + 64

    return CACHE.get(key, count, cache_budget())


def item_values(index, ids: pa.Array) -> list[list]:
    """The stored item columns of ``ids`` (one list per column)."""
    pids, labels = id_map(index).locate(ids)
    columns: list[list] = [[None] * len(ids) for _ in index.manifest.item_types]
    for pid in np.unique(pids):
        at = np.flatnonzero(pids == pid)
        taken = cached_items(index, int(pid)).take(pa.array(labels[at]))
        for c, name in enumerate(taken.column_names):
            for position, value in zip(at, taken.column(name).to_pylist()):
                columns[c][position] = value
    return columns


__all__ = ["register", "DEFAULT_NAME"]
