"""Partition-side search: query rows meet the partitions they probe.

For indexes larger than a worker's cache. Every step is a ``mapInArrow`` or a
repartition, so the plan also runs on streaming DataFrames:

1. *route*: each query row becomes one row record (its own columns) and one
   probe record per partition it probes (its prepared vector). A query with
   an allowed-id subset becomes locate records instead, one per id-location
   bucket of its ids.
2. *locate* (subset searches only): each bucket's task maps ids to partitions.
3. *search*: probe records are co-located with their partition
   (``repartitionById``); each task loads its few partitions once and streams
   its records through them, emitting candidate lists.
4. *merge*: records meet again by query key (and, in batch jobs, sorted by it,
   so a task holds a batch of records, and a query's records, at a time); each
   row gets its top ``k``, batch by batch with numpy.

Query vectors and candidate lists travel packed as binary (see :mod:`.packing`).

The key is 128 bits of the SHA-256 of an exact encoding of the query's own
content (vector, allowed ids, own id; see :func:`query_key`), computed inside
this single chain of stages: whatever order Spark
computes or recomputes the query DataFrame in, a record's key names its row's
content, and rows with the same content have the same answer. Every record
carries how many ids or probes its query expects; a query whose records do
not add up fails the job rather than answer from part of its candidates.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from .. import testing
from ..loader import LoadedIndex, location_map, open_index, partition
from ..storage import items, tables
from ..tasks import cluster_cores, resolve_threads, threads_per_task
from ..vectors import checked_queries
from .binary import packed_lists, packed_rows, unpacked_lists, unpacked_rows
from .filtered import passing_mask, query_groups, routed
from .plan import ALLOWED, MATCH, SELF, VEC, SearchPlan, cache_bytes, output_schema
from .topk import Candidates, UnbalancedQuery, last_key_start, query_neighbours

K1, K2, PID, BUCKET = "__sparkann_k1", "__sparkann_k2", "__sparkann_pid", "__sparkann_bucket"
NEED, COVER, QVEC = "__sparkann_need", "__sparkann_cover", "__sparkann_qvec"
CIDS, CDIST = "__sparkann_cids", "__sparkann_cdist"
GROUP = "__sparkann_group"  # a probe record's match group (see .filtered)
ROW, LOCATE, COVERAGE = -1, -2, -3  # record kinds that are not partition ids


def record_schema(queries: DataFrame, id_type: str) -> T.StructType:
    """Every stage's records: the query's own columns (set on row records only),
    then the search's."""
    own = [T.StructField(f.name, f.dataType, True) for f in queries.schema.fields]
    spark_id = T.LongType() if id_type == "long" else T.StringType()
    return T.StructType(own + [
        T.StructField(K1, T.LongType()), T.StructField(K2, T.LongType()),
        T.StructField(PID, T.IntegerType()), T.StructField(BUCKET, T.IntegerType()),
        T.StructField(NEED, T.LongType()), T.StructField(COVER, T.LongType()),
        T.StructField(QVEC, T.BinaryType()), T.StructField(SELF, spark_id),
        T.StructField(ALLOWED, T.ArrayType(spark_id)),
        T.StructField(CIDS, T.BinaryType() if id_type == "long" else T.ArrayType(spark_id)),
        T.StructField(CDIST, T.BinaryType()), T.StructField(GROUP, T.LongType()),
    ])


def partition_side(queries: DataFrame, helpers, plan: SearchPlan, loaded_bytes: int,
                   num_partitions: int, manifest_files: tuple = ()) -> DataFrame:
    """The partition-side plan of a search over ``queries``."""
    spark = queries.sparkSession
    if plan.reads == "join" and (plan.allowed or queries.isStreaming
                                 or plan.item_filter is not None):
        raise ValueError("with spark.sparkann.payloadReads='join' (Spark reads the index), "
                         "searches support neither allowedIdsCol, filter, matchCols nor "
                         "streaming queries; use an index location the executors can read "
                         "with pyarrow")
    key = query_key(F.col(VEC), F.col(ALLOWED), F.col(SELF), F.col(MATCH))
    keyed = queries.select("*", *helpers).select("*", *key)
    schema = record_schema(queries, plan.id_type)
    own = list(queries.columns)
    records = keyed.mapInArrow(route_fn(plan, own), schema)
    cores = cluster_cores(spark)
    if plan.allowed:
        tasks = max(plan.location_buckets, 2 * cores)
        target = F.when(F.col(PID) == LOCATE, F.col(BUCKET)).otherwise(F.pmod(K1, F.lit(tasks)))
        records = records.repartitionById(tasks, target.cast("int")).mapInArrow(
            locate_fn(plan), schema)
    tasks = search_tasks(num_partitions, loaded_bytes, cache_bytes(spark), cores)
    threads = threads_per_task(spark, plan.knobs.threads, min(tasks, num_partitions))
    if plan.reads == "join":
        searched = joined_search(records, plan, threads, schema, manifest_files)
    else:
        target = F.when(F.col(PID) >= 0, F.col(PID)).otherwise(F.pmod(K1, F.lit(tasks)))
        searched = records.repartitionById(tasks, target.cast("int")).mapInArrow(
            search_fn(plan, threads), schema)
    met = searched.repartition(K1, K2)
    if not queries.isStreaming:
        met = met.sortWithinPartitions(K1, K2)  # one query at a time in each merge task
    return met.mapInArrow(merge_fn(plan, own, sorted_keys=not queries.isStreaming),
                          output_schema(queries, plan))


def query_key(*columns: Column) -> list[Column]:
    """K1 and K2: the two halves of 128 bits of the SHA-256 of ``columns`` as JSON.
    JSON is an exact encoding (nulls kept, an empty array, null and [null] apart,
    strings escaped), so rows with different content have different keys."""
    content = F.struct(*[c.alias(f"c{i}") for i, c in enumerate(columns)])
    digest = F.sha2(F.to_json(content, {"ignoreNullFields": "false"}), 256)
    return [F.conv(F.substring(digest, start, 16), 16, -10).cast("long").alias(name)
            for start, name in ((1, K1), (17, K2))]


def search_tasks(num_partitions: int, loaded_bytes: int, cache: int, cores: int) -> int:
    """Search tasks: each holds its partitions (``pid mod tasks``) for its lifetime,
    so enough that a task's share of the loaded index (``loaded_bytes``) fits half the
    worker cache, and a few per core."""
    by_memory = math.ceil(2 * loaded_bytes / max(cache, 1))
    return int(max(1, min(num_partitions, max(4 * cores, by_memory))))


# ------------------------------------------------------------------- route


def route_fn(plan: SearchPlan, own: list[str]):
    def route(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        testing.inject("search")
        index = open_index(plan.handle)
        for batch in batches:
            if batch.num_rows:
                yield from route_batch(index, plan, own, batch)

    return route


def route_batch(index: LoadedIndex, plan: SearchPlan, own: list[str],
                batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    n = batch.num_rows
    selfs = batch.column(SELF)
    vectors = index.metric.prepare(
        checked_queries(batch.column(VEC), plan.dim, plan.vector_col,
                        selfs if plan.exclude_self else None, plan.id_col),
        f"query column {plan.vector_col!r}")
    allowed = batch.column(ALLOWED)
    spec = plan.item_filter
    groups = query_groups(spec, batch.column(MATCH), n)
    subset = np.asarray(allowed.is_valid()) if plan.allowed else np.zeros(n, dtype=bool)
    need = np.zeros(n, np.int64)
    plain = np.flatnonzero(~subset & (groups >= 0))
    if len(plain):
        rows, pids = routed(index, spec, vectors[plain], groups[plain], plan.num_probes,
                            plan.fetch_k, plan.probe_epsilon)
        rows = plain[rows]
        need += np.bincount(rows, minlength=n)
        yield records(batch, own, plan, rows, {
            PID: pa.array(pids, pa.int32()), COVER: pa.array(np.ones(len(rows), np.int64)),
            QVEC: packed_rows(vectors[rows]), SELF: selfs.take(pa.array(rows)),
            GROUP: pa.array(groups[rows], pa.int64())})
    for row in np.flatnonzero(subset & (groups >= 0)):
        ids = pc.unique(allowed[int(row)].values.drop_null())
        need[row] = len(ids)
        buckets = tables.id_buckets(ids, plan.location_buckets)
        for bucket in np.unique(buckets):
            mine = ids.filter(pa.array(buckets == bucket))
            at = np.array([row])
            yield records(batch, own, plan, at, {
                PID: pa.array([LOCATE], pa.int32()), BUCKET: pa.array([bucket], pa.int32()),
                COVER: pa.array([0], pa.int64()), QVEC: packed_rows(vectors[at]),
                SELF: selfs.take(pa.array(at)), GROUP: pa.array(groups[at], pa.int64()),
                ALLOWED: pa.ListArray.from_arrays(pa.array([0, len(mine)], pa.int32()), mine)})
    everyone = np.arange(n)
    yield records(batch, own, plan, everyone, {
        PID: pa.array(np.full(n, ROW), pa.int32()), COVER: pa.array(np.zeros(n, np.int64)),
        **{name: batch.column(name) for name in own}}, need=need)


def records(batch: pa.RecordBatch, own: list[str], plan: SearchPlan, rows: np.ndarray,
            values: dict, need: np.ndarray | None = None) -> pa.RecordBatch:
    """Records of ``rows`` of a keyed batch: ``values`` set, every other column null."""
    take = pa.array(rows, pa.int64())
    count = len(rows)
    columns = dict(values)
    columns[K1], columns[K2] = batch.column(K1).take(take), batch.column(K2).take(take)
    if need is not None:
        columns[NEED] = pa.array(need[rows], pa.int64())
    return assemble(batch.schema, own, plan, columns, count)


def assemble(source: pa.Schema, own: list[str], plan: SearchPlan, columns: dict,
             count: int) -> pa.RecordBatch:
    """A record batch in the record schema, nulls where ``columns`` says nothing."""
    arrow_id = plan.arrow_id_type
    packed_ids = pa.binary() if arrow_id == pa.int64() else pa.list_(arrow_id)
    internal = {K1: pa.int64(), K2: pa.int64(), PID: pa.int32(), BUCKET: pa.int32(),
                NEED: pa.int64(), COVER: pa.int64(), QVEC: pa.binary(),
                SELF: arrow_id, ALLOWED: pa.list_(arrow_id), CIDS: packed_ids,
                CDIST: pa.binary(), GROUP: pa.int64()}
    names = own + list(internal)
    types = [source.field(name).type for name in own] + list(internal.values())
    arrays = [columns[name] if name in columns else pa.nulls(count, t)
              for name, t in zip(names, types)]
    return pa.RecordBatch.from_arrays(arrays, names)


# ------------------------------------------------------------------ locate


def locate_fn(plan: SearchPlan):
    """Locate records become one subset-probe record per partition holding their ids."""

    def locate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(plan.handle)
        own = None
        for batch in batches:
            own = own or [n for n in batch.schema.names if not n.startswith("__sparkann_")]
            kinds = batch.column(PID).to_numpy(zero_copy_only=False)
            todo = np.flatnonzero(kinds == LOCATE)
            if len(todo) < batch.num_rows:
                yield batch.filter(pa.array(kinds != LOCATE))
            for row in todo:
                yield located(index, plan, own, batch, int(row))

    return locate


def located(index: LoadedIndex, plan: SearchPlan, own: list[str], batch: pa.RecordBatch,
            row: int) -> pa.RecordBatch:
    """One subset-probe record per partition holding some of a locate record's ids,
    and a coverage record for the ids the index does not hold."""
    import pandas as pd

    where = location_map(index, batch.column(BUCKET)[row].as_py())
    wanted = batch.column(ALLOWED)[row].values
    hits = pd.DataFrame({"id": wanted.to_numpy(zero_copy_only=False)}).merge(where, on="id")
    # an id stored twice (deleted, then added again) is searched in both partitions
    # and counted once, in the first
    first = hits.drop_duplicates("id")
    cover = first.groupby("partition_id").size()
    groups = list(hits.groupby("partition_id")["id"])
    pids = [int(pid) for pid, _ in groups] + [COVERAGE]
    id_lists = [pa.array(ids.to_numpy(), wanted.type) for _, ids in groups]
    covered = [int(cover.get(pid, 0)) for pid in pids[:-1]]
    lost = len(wanted) - len(first)
    take = pa.array(np.full(len(pids), row), pa.int64())
    sizes = [len(ids) for ids in id_lists] + [0]
    columns = {
        PID: pa.array(pids, pa.int32()), COVER: pa.array(covered + [lost], pa.int64()),
        NEED: batch.column(NEED).take(take), K1: batch.column(K1).take(take),
        K2: batch.column(K2).take(take), BUCKET: batch.column(BUCKET).take(take),
        QVEC: batch.column(QVEC).take(take),
        SELF: batch.column(SELF).take(take), GROUP: batch.column(GROUP).take(take),
        ALLOWED: pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)),
            pa.concat_arrays(id_lists) if id_lists else pa.array([], wanted.type)),
    }
    return assemble(batch.schema, own, plan, columns, len(pids))


# ------------------------------------------------------------------ search


def search_fn(plan: SearchPlan, thread_hint: int):
    """Probe records through their partitions; other records pass through."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        testing.inject("search")
        index = open_index(plan.handle)
        knobs = replace(plan.knobs, threads=resolve_threads(thread_hint))
        pinned: dict = {}  # this task's partitions, loaded once for its lifetime
        own = None
        for batch in batches:
            own = own or [n for n in batch.schema.names if not n.startswith("__sparkann_")]
            kinds = batch.column(PID).to_numpy(zero_copy_only=False)
            probes = kinds >= 0
            if not probes.all():
                yield batch.filter(pa.array(~probes))
            if probes.any():
                yield from searched(index, plan, own, batch.filter(pa.array(probes)), pinned,
                                    knobs)

    return run


def searched(index: LoadedIndex, plan: SearchPlan, own: list[str], batch: pa.RecordBatch,
             pinned: dict, knobs) -> Iterator[pa.RecordBatch]:
    pids = batch.column(PID).to_numpy(zero_copy_only=False)
    for pid in np.unique(pids):
        rows = np.flatnonzero(pids == pid)
        part = pinned.get(int(pid))
        if part is None and index.manifest.partitions.files[int(pid)]:
            part = pinned[int(pid)] = partition(index, int(pid), plan.with_vectors)
        group = batch.take(pa.array(rows))
        cids, cdist = candidate_lists(part, plan, group, knobs, index, int(pid))
        yield assemble(batch.schema, own, plan, {
            K1: group.column(K1), K2: group.column(K2), PID: group.column(PID),
            BUCKET: group.column(BUCKET), NEED: group.column(NEED), COVER: group.column(COVER),
            CIDS: cids, CDIST: cdist,
        }, group.num_rows)


def candidate_lists(part, plan: SearchPlan, group: pa.RecordBatch, knobs,
                    index: LoadedIndex | None = None, pid: int = -1):
    """(ids, distances) list columns of each probe record of one partition."""
    n = group.num_rows
    candidates = Candidates(n, plan.arrow_id_type)
    if part is not None:
        vectors = unpacked_rows(group.column(QVEC), plan.dim)
        allowed = group.column(ALLOWED)
        subset = np.asarray(allowed.is_valid())
        spec = plan.item_filter
        groups = (_numbers(group, GROUP) if spec is not None else np.zeros(n, np.int64))

        def passing(of: int) -> np.ndarray:
            assert spec is not None and index is not None
            return passing_mask(index, spec, pid, of)

        plain = np.flatnonzero(~subset)
        for of in np.unique(groups[plain]):
            rows = plain[groups[plain] == of]
            if spec is None:
                labels, dists = part.search(vectors[rows], plan.fetch_k, knobs)
            else:
                labels, dists = part.search_filtered(vectors[rows], passing(int(of)),
                                                     plan.fetch_k, knobs)
            candidates.add(rows, labels, dists, part.ids)
        for row in np.flatnonzero(subset):
            labels = _labels_of(part, allowed[int(row)].values)
            if spec is not None:
                labels = labels[passing(int(groups[row]))[labels]]
            found, dists = part.search_subset(vectors[row], labels, plan.fetch_k, knobs)
            candidates.add(np.array([row]), found, dists, part.ids)
    lists = candidates.best(plan.fetch_k, group.column(SELF) if plan.exclude_self else None)
    values = lists.values
    offsets = lists.offsets
    return (packed_lists(pa.ListArray.from_arrays(offsets, values.field("id"))),
            packed_lists(pa.ListArray.from_arrays(offsets, values.field("distance"))))


def _labels_of(part, wanted: pa.Array) -> np.ndarray:
    """Every row label of the partition holding one of ``wanted`` (deleted ones too)."""
    import pandas as pd

    if not hasattr(part, "id_index"):
        part.id_index = pd.Index(part.ids.to_numpy(zero_copy_only=False))
    positions, _ = part.id_index.get_indexer_non_unique(wanted.to_numpy(zero_copy_only=False))
    return np.unique(positions[positions >= 0]).astype(np.int64)


# ------------------------------------------------------------------- merge


def merge_fn(plan: SearchPlan, own: list[str], sorted_keys: bool):
    """Records met by key: each row record leaves with its top ``k``. Sorted by key, a
    batch's last key may go on in the next batch: its records wait for it."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if not sorted_keys:  # a stream's task: any key may come in any batch
            whole = list(batches)
            if whole:
                yield merged(plan, own, _concat(whole))
            return
        carry = None
        for batch in batches:
            if carry is not None and carry.num_rows:
                batch = _concat([carry, batch])
            cut = last_key_start(_numbers(batch, K1), _numbers(batch, K2))
            if cut:
                yield merged(plan, own, batch.slice(0, cut))
            carry = batch.slice(cut)
        if carry is not None and carry.num_rows:
            yield merged(plan, own, carry)

    return run


def merged(plan: SearchPlan, own: list[str], batch: pa.RecordBatch) -> pa.RecordBatch:
    """The output rows (own columns and neighbours) of a batch holding all the records
    of its keys."""
    try:
        rows, lists = query_neighbours(
            _numbers(batch, K1), _numbers(batch, K2), _numbers(batch, PID),
            _numbers(batch, BUCKET, -1), _numbers(batch, NEED), _numbers(batch, COVER),
            unpacked_lists(batch.column(CIDS), plan.arrow_id_type),
            unpacked_lists(batch.column(CDIST), pa.float32()), plan.k, ROW)
    except UnbalancedQuery as bad:
        raise RuntimeError(
            "sparkann: a query's search records do not add up (rows "
            f"{bad.rows}, expected {bad.need} partition or id results, got "
            f"{bad.cover}); the query DataFrame changed while Spark recomputed it. "
            "Make it deterministic (for example, write it out or checkpoint it) and retry"
        ) from None
    own_rows = batch.select(own).take(pa.array(rows, pa.int64()))
    return pa.RecordBatch.from_arrays(list(own_rows.columns) + [lists],
                                      own + [plan.neighbors_col])


def _numbers(batch: pa.RecordBatch, name: str, null: int = 0) -> np.ndarray:
    return batch.column(name).fill_null(null).to_numpy(zero_copy_only=False)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    table = pa.Table.from_batches(batches).combine_chunks()
    return table.to_batches()[0] if table.num_rows else batches[0]


# ------------------------------------------------------ Spark-read payloads


def joined_search(records: DataFrame, plan: SearchPlan, threads: int, schema: T.StructType,
                  files: tuple) -> DataFrame:
    """The search stage when Spark, not the tasks, reads the index: probe records are
    grouped per partition and joined with that partition's row (and deletions)."""
    spark = records.sparkSession
    root, partition_files, delete_files = files
    probes = records.where(F.col(PID) >= 0)
    others = records.where(F.col(PID) < 0)
    columns = [F.col(c) for c in (K1, K2, PID, NEED, COVER, QVEC, SELF)]
    grouped = probes.groupBy(PID, F.pmod(K1, F.lit(8)).alias("__sparkann_chunk")).agg(
        F.collect_list(F.struct(*columns)).alias("__sparkann_probes"))
    skipped = ("partition_id", "pid", items.ITEMS) + (() if plan.with_vectors else ("vectors",))
    rows = tables.named_rows(spark, root, list(partition_files)).select(
        F.col("pid").alias(PID),
        *[c for c in tables.stored_columns(plan.item_types) if c not in skipped])
    joined = grouped.join(rows, PID)
    if delete_files:
        deleted = spark.read.parquet(*delete_files).groupBy(F.col("pid").alias(PID)).agg(
            F.collect_list(F.struct("labels", "count", "checksum")).alias("__sparkann_deleted"))
        joined = joined.join(deleted, PID, "left")
    own = [f for f in records.schema.fields if not f.name.startswith("__sparkann_")]
    own_arrow = to_arrow_schema(T.StructType(own))
    return others.unionByName(joined.mapInArrow(_joined_fn(plan, threads, own_arrow), schema))


def _joined_fn(plan: SearchPlan, thread_hint: int, own_schema: pa.Schema):
    from ..loader import partition_from_row

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        testing.inject("search")
        index = open_index(plan.handle)
        knobs = replace(plan.knobs, threads=resolve_threads(thread_hint))
        own = list(own_schema.names)
        for batch in batches:
            for row in range(batch.num_rows):
                pid = batch.column(PID)[row].as_py()
                part = partition_from_row(index, pid, pa.Table.from_batches([batch.slice(row, 1)]),
                                          plan.with_vectors,
                                          _joined_deletes(index, pid, batch, row))
                probes = batch.column("__sparkann_probes")[row].values
                group = pa.RecordBatch.from_arrays(
                    [probes.field(i) for i in range(probes.type.num_fields)],
                    [probes.type.field(i).name for i in range(probes.type.num_fields)])
                group = pa.RecordBatch.from_arrays(
                    list(group.columns) + [pa.nulls(group.num_rows, pa.list_(plan.arrow_id_type))],
                    list(group.schema.names) + [ALLOWED])
                cids, cdist = candidate_lists(part, plan, group, knobs)
                yield assemble(own_schema, own, plan, {
                    K1: group.column(K1), K2: group.column(K2), PID: group.column(PID),
                    NEED: group.column(NEED), COVER: group.column(COVER), CIDS: cids,
                    CDIST: cdist}, group.num_rows)

    return run


def _joined_deletes(index, pid: int, batch: pa.RecordBatch, row: int) -> np.ndarray:
    """A partition's deleted labels as Spark read them, checked against the manifest."""
    from ..storage.format import IndexFormatError

    expected = sorted((d.count, d.sha256) for d in index.manifest.partitions.deletes[pid])
    if "__sparkann_deleted" not in batch.schema.names or not batch.column(
            "__sparkann_deleted")[row].is_valid:
        got: list = []
        labels = np.empty(0, np.int64)
    else:
        files = batch.column("__sparkann_deleted")[row].values
        parts = [files.field("labels")[i].values.to_numpy(zero_copy_only=False)
                 for i in range(len(files))]
        got = sorted((int(files.field("count")[i].as_py()), tables.labels_checksum(p))
                     for i, p in enumerate(parts))
        labels = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
    if got != expected:
        raise IndexFormatError(f"index partition {pid}: its delete files do not match the "
                               "manifest")
    return labels
