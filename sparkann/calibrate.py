"""Calibration: the cheapest search settings that reach a target recall.

Two sources of sample queries, one measurement:

* at ``fit``, a seeded sample of indexed rows is *held out*: each build task searches
  the held-out queries routed to its partition with every setting of the ladder
  before adding them to its index (:func:`plan_held_out`, :func:`search_held_out`),
  and :func:`calibrate_at_fit` measures what the tasks found;
* after a build, :func:`calibrate` (:meth:`ANNIndexModel.calibrate`) searches a
  sample of indexed rows (their own ids excluded) or the user's own queries in one
  Spark job over the ladder.

Exact neighbours come from one pass over the indexed rows; the choice -- the
cheapest ``numProbes``, ``probeEpsilon`` and index-type setting (``efSearch``,
``rerankK``) reaching the target -- is made by :mod:`sparkann.tuning` and handed
back as a :class:`~sparkann.tuning.SearchDefaults` carrying the report.

Cost, with ``S`` sample queries (at most :data:`MAX_SAMPLE`): one pass over the
``N`` indexed rows for the exact neighbours (``N x S x d`` multiply-adds, in
parallel tasks), and ``S x probes x ladder`` partition searches, independent of ``N``.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .exact import knn, top_k
from .index import PartitionIndex
from .loader import IndexHandle, LoadedIndex, fresh_partition, open_index, partition
from .metrics import Metric
from .sampling import collect_sample
from .search.topk import top_k_lists
from .storage.format import IndexFormatError, sha256
from .storage.fs import join, read_file, store_for
from .tasks import cluster_cores
from .tuning import (
    Found,
    ProbeModel,
    SearchDefaults,
    epsilons_to_try,
    first_round,
    hard_tail,
    measure,
    probe_ladder,
    search_defaults,
    settled,
)
from .vectors import list_array, to_matrix

MAX_SAMPLE = 1000
MIN_SAMPLE = 100


def sample_size(num_rows: int) -> int:
    return int(min(MAX_SAMPLE, max(MIN_SAMPLE, num_rows // 20), num_rows))


@dataclass(frozen=True)
class Sample:
    """Calibration queries: prepared vectors and (for indexed rows) their ids.

    ``held`` samples were kept out of the partition indexes while they were
    searched (the fit's calibration): their exact neighbours are taken among the
    other rows. Otherwise each query's own id is excluded from its neighbours.
    """

    vectors: np.ndarray
    ids: pa.Array | None  # own ids to exclude, or None for outside queries
    held: bool = False


def draw_sample(rows: DataFrame, num_rows: int, seed: int, metric: Metric, dim: int,
                with_ids: bool, size: int | None = None, held: bool = False) -> Sample:
    """A seeded sample of (id, vector) rows, collected to the driver."""
    size = size or sample_size(num_rows)
    table = collect_sample(rows, size, num_rows, seed + 17, [F.col("id"), F.col("vector")])
    vectors = metric.prepare(to_matrix(table.column("vector"), dim))
    ids = table.column("id").combine_chunks() if with_ids else None
    return Sample(vectors, ids, held)


def exact_neighbors(base: DataFrame, sample: Sample, metric: Metric, k: int, dim: int,
                    id_type: str) -> list[np.ndarray]:
    """The exact ``k`` nearest ids of each sample query among ``base`` (id, vector)
    rows, the query's own id excluded; one pass over ``base`` in parallel tasks."""
    fetch = k + (1 if sample.ids is not None and not sample.held else 0)
    skip = sample.ids if sample.held else None
    found = base.mapInArrow(_exact_fn(sample.vectors, metric, fetch, dim, skip),
                            f"query int, ids array<{id_type}>, dists array<float>").toArrow()
    arrow_id = pa.int64() if id_type == "long" else pa.string()
    n = len(sample.vectors)
    rows = np.repeat(found.column("query").to_numpy(),
                     np.diff(found.column("ids").combine_chunks().offsets.to_numpy()))
    ids = found.column("ids").combine_chunks().values.cast(arrow_id)
    dists = found.column("dists").combine_chunks().values.to_numpy(zero_copy_only=False)
    keep = np.ones(len(rows), dtype=bool)
    if sample.ids is not None and not sample.held:
        keep = _not_own(ids, rows, sample.ids.cast(arrow_id))
    lists = top_k_lists(n, rows[keep], dists[keep], ids.filter(pa.array(keep)), k)
    return [lists[q].values.field("id").to_numpy(zero_copy_only=False) for q in range(n)]


def _not_own(ids: pa.Array, rows: np.ndarray, own: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.not_equal(ids, own.take(pa.array(rows))), True))


def _exact_fn(queries: np.ndarray, metric: Metric, fetch: int, dim: int,
              skip: pa.Array | None = None):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        best: tuple | None = None
        for batch in batches:
            if skip is not None:  # rows held out of the indexes are no one's neighbour
                batch = batch.filter(pc.invert(pc.is_in(batch.column("id"),
                                                        value_set=skip.cast(batch.schema
                                                                            .field("id").type))))
            if not batch.num_rows:
                continue
            vectors = metric.prepare(to_matrix(batch.column("vector"), dim))
            cols, dists = knn(vectors, queries, fetch, metric)
            ids = batch.column("id").take(pa.array(cols.reshape(-1)))
            best = (dists, ids) if best is None else _fold(best, (dists, ids), fetch)
        if best is not None:
            yield _as_rows(*best)

    return run


def _fold(first: tuple, second: tuple, fetch: int) -> tuple:
    """The ``fetch`` best of two (n, w) blocks of candidates per query."""
    (d1, i1), (d2, i2) = first, second
    n, w1, w2 = d1.shape[0], d1.shape[1], d2.shape[1]
    order, best = top_k(np.concatenate([d1, d2], axis=1), fetch)
    row = np.arange(n)[:, None]
    position = np.where(order < w1, row * w1 + order, n * w1 + row * w2 + (order - w1))
    return best, pa.concat_arrays([i1, i2.cast(i1.type)]).take(pa.array(position.reshape(-1)))


def _as_rows(dists: np.ndarray, ids: pa.Array) -> pa.RecordBatch:
    n, width = dists.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [pa.array(np.arange(n, dtype=np.int32)), pa.ListArray.from_arrays(offsets, ids),
         pa.ListArray.from_arrays(offsets, pa.array(dists.reshape(-1), pa.float32()))],
        ["query", "ids", "dists"])


# ------------------------------------------------------------------ ladder


def ladder_results(spark, handle: IndexHandle, index: LoadedIndex, sample: Sample, k: int,
                   settings: list[dict], epsilon: float, with_vectors: bool):
    """One Spark job: every sample query searched in each partition of its deepest
    probe list, with every ladder setting. Returns the candidates as flat arrays."""
    fetch = k + (1 if sample.ids is not None else 0)
    probes = probe_ladder(len(index.meta.centroids))
    ranked, dists = index.router.ranked_clusters(sample.vectors, probes[-1], fetch)
    mask = index.router.probed(ranked, dists, probes[-1], fetch, epsilon)
    rows, cols = np.nonzero(mask)
    queries, pids = index.router.expand(rows, ranked[rows, cols])
    keep = np.asarray([bool(index.manifest.partitions.files[p]) for p in pids], dtype=bool)
    queries, pids = queries[keep], pids[keep]
    order = np.argsort(pids, kind="stable")
    table = pa.table({"pid": pa.array(pids[order], pa.int32()),
                      "query": pa.array(queries[order], pa.int32())})
    work = spark.createDataFrame(table.to_pandas()).groupBy("pid").agg(
        {"query": "collect_list"}).withColumnRenamed("collect_list(query)", "queries")
    tasks = max(1, min(len(np.unique(pids)), 64))
    id_sql = "long" if index.manifest.id_type == "long" else "string"
    found = work.repartition(tasks, "pid").mapInArrow(
        _ladder_fn(handle, sample.vectors, settings, fetch, with_vectors),
        f"pid int, query int, setting int, ids array<{id_sql}>, dists array<float>").toArrow()
    return ranked, dists, found


def _ladder_fn(handle: IndexHandle, vectors: np.ndarray, settings: list[dict], fetch: int,
               with_vectors: bool):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = open_index(handle)
        for batch in batches:
            for row in range(batch.num_rows):
                pid = batch.column("pid")[row].as_py()
                queries = batch.column("queries")[row].values.to_numpy(zero_copy_only=False)
                part = partition(index, pid, with_vectors)
                for number, setting in enumerate(settings):
                    labels, dists = part.index.search(vectors[queries], fetch,
                                                      index.cls.search_knobs(setting))
                    yield _ladder_rows(pid, queries, number, labels, dists, part.ids)

    return run


def _ladder_rows(pid, queries, number, labels, dists, ids) -> pa.RecordBatch:
    n = len(queries)
    found = labels >= 0
    counts = found.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.RecordBatch.from_arrays(
        [pa.array(np.full(n, pid, np.int32)), pa.array(queries.astype(np.int32)),
         pa.array(np.full(n, number, np.int32)),
         pa.ListArray.from_arrays(offsets, ids.take(pa.array(labels[found]))),
         pa.ListArray.from_arrays(offsets, pa.array(dists[found], pa.float32()))],
        ["pid", "query", "setting", "ids", "dists"])


def calibrate(spark, handle: IndexHandle, base: DataFrame, num_rows: int, k: int, target: float,
              seed: int, epsilon: float | None,
              queries: DataFrame | None = None) -> SearchDefaults:
    """The search defaults a sample measures as cheapest for ``target``, with the report.

    ``base`` holds the indexed rows (id, vector) for the exact neighbours;
    ``queries`` (vector column ``vector``) replaces the sample of indexed rows;
    ``epsilon`` None lets calibration choose probeEpsilon too.
    """
    started = time.perf_counter()
    index = open_index(handle)
    manifest, metric = index.manifest, index.metric
    source = base if queries is None else queries
    count = num_rows if queries is None else int(queries.count())
    size = None if queries is None else min(count, MAX_SAMPLE)  # a given sample: all of it
    sample = draw_sample(source, count, seed, metric, manifest.dim, queries is None, size)
    if len(sample.vectors) == 0:
        raise ValueError("the calibration sample is empty")
    truth = exact_neighbors(base, sample, metric, k, manifest.dim, manifest.id_type)
    settings = index.cls.search_ladder(k, manifest.params)
    with_vectors = any(index.cls.search_knobs(s).needs_vectors for s in settings)
    epsilons = epsilons_to_try(epsilon)
    ranked, dists, found = ladder_results(spark, handle, index, sample, k, settings,
                                          min(epsilons), with_vectors)
    return chosen(index, sample, truth, k, settings, epsilons, target, ranked, dists, found,
                  "indexed rows" if queries is None else "queries", started)


def chosen(index: LoadedIndex, sample: Sample, truth: list[np.ndarray], k: int,
           settings: list[dict], epsilons: tuple[float, ...], target: float,
           ranked: np.ndarray, dists: np.ndarray, found: pa.Table, source: str,
           started: float, trials: list | None = None) -> SearchDefaults:
    """The cheapest setting reaching the target on the sample (``trials``: measured
    already), and the report. A sample of indexed rows (with ids) also holds its hard
    tail to its own target."""
    hard = hard_tail(dists) if sample.ids is not None else np.zeros(len(truth), dtype=bool)
    if trials is None:
        trials = measured(ProbeModel.of(index), sample, truth, k, settings, epsilons, ranked,
                          dists, found, hard)
    wanted = np.asarray([len(t) for t in truth], dtype=np.int64)
    return search_defaults(trials, target, k, dists, hard, wanted, source,
                           time.perf_counter() - started, sample.ids is not None)


def measured(model: ProbeModel, sample: Sample, truth: list[np.ndarray], k: int,
             settings: list[dict], epsilons: tuple[float, ...], ranked: np.ndarray,
             dists: np.ndarray, found: pa.Table, hard: np.ndarray) -> list:
    """The trials of ``settings`` on the sample, from the answers ``found``; a sample of
    indexed rows still in the index has each query's own row left out of its answers."""
    candidates = Found.from_table(found)
    own_excluded = sample.ids is not None and not sample.held
    if sample.ids is not None and own_excluded:
        candidates = candidates.without(sample.ids.to_numpy(zero_copy_only=False))
    return measure(model, candidates, truth, k, k + int(own_excluded), settings, epsilons,
                   ranked, dists, hard)


# ------------------------------------------------ held-out calibration at fit


@dataclass(frozen=True)
class CalibrationPlan:
    """What the build tasks of a fit need to calibrate: held-out queries (indexed rows
    that each partition adds to its index only after searching them) and which of them
    each partition searches."""

    vectors: np.ndarray  # (S, d) prepared
    ids: pa.Array
    settings: list
    fetch: int
    queries_of: dict  # partition id -> query positions searched there
    searched: int = -1  # how many settings (the first) the build tasks search; -1: all

    @property
    def first_round(self) -> list:
        """The settings the build tasks search."""
        return self.settings if self.searched < 0 else self.settings[:self.searched]

    def to_bytes(self) -> bytes:
        pids = np.array(sorted(self.queries_of), dtype=np.int32)
        lists = [np.asarray(self.queries_of[p], np.int32) for p in pids]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32)
        routed = pa.table({"pid": pa.array(pids, pa.int32()), "queries": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(np.concatenate(lists) if lists else [], pa.int32()))})
        sample = pa.table({"id": self.ids, "vector": list_array(self.vectors)})
        head = json.dumps({"settings": self.settings, "fetch": self.fetch,
                           "searched": self.searched}).encode()
        return b"".join(_framed(part) for part in (head, _ipc(sample), _ipc(routed)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "CalibrationPlan":
        head, sample, routed = _unframed(data, 3)
        doc = json.loads(head)
        sample_table = pa.ipc.open_stream(sample).read_all()
        routed_table = pa.ipc.open_stream(routed).read_all()
        queries = routed_table.column("queries").combine_chunks()
        return cls(to_matrix(sample_table.column("vector")),
                   sample_table.column("id").combine_chunks(), list(doc["settings"]),
                   int(doc["fetch"]),
                   {int(p): queries[i].values.to_numpy(zero_copy_only=False)
                    for i, p in enumerate(routed_table.column("pid").to_pylist())},
                   int(doc.get("searched", -1)))


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _framed(part: bytes) -> bytes:
    return len(part).to_bytes(8, "little") + part


def _unframed(data: bytes, count: int) -> list[bytes]:
    parts, offset = [], 0
    for _ in range(count):
        size = int.from_bytes(data[offset:offset + 8], "little")
        parts.append(data[offset + 8:offset + 8 + size])
        offset += 8 + size
    if offset != len(data):
        raise ValueError("the calibration plan is damaged")
    return parts


@dataclass(frozen=True)
class PlanHandle:
    """How a build task finds the fit's calibration plan."""

    uri: str
    sha256: str

    def read(self) -> CalibrationPlan:
        return _read_plan(self.uri, self.sha256)


@functools.lru_cache(maxsize=1)
def _read_plan(uri: str, digest: str) -> CalibrationPlan:
    """The plan, read, verified and parsed once per worker process. Not to be modified."""
    data = read_file(uri, 1 << 30)
    if sha256(data) != digest:
        raise IndexFormatError(f"the calibration plan {uri} changed during the build")
    return CalibrationPlan.from_bytes(data)


@dataclass(frozen=True)
class PlanFile:
    """A fit's calibration plan, written under the index root (``relative``) for its
    build tasks, which read it through ``handle``."""

    plan: CalibrationPlan
    relative: str
    handle: PlanHandle


@dataclass(frozen=True)
class HeldOut:
    """What a fit's build tasks found for its held-out queries (rows pid, query,
    setting, ids, dists), with the plan they followed."""

    plan: CalibrationPlan
    found: pa.Table


def plan_held_out(rows: DataFrame, num_rows: int, params: dict, metric: Metric, dim: int,
                  ranker, shards, sizes: np.ndarray, settings: list[dict],
                  root: str, costs: list[float] | None = None) -> PlanFile:
    """Draw the fit's held-out queries, route them as deep as any probe setting on the
    ladder goes, and write the plan for the build tasks (``costs``: of each setting per
    probe, which sizes the first round, see :func:`sparkann.tuning.first_round`)."""
    sample = draw_sample(rows, num_rows, int(params["seed"]), metric, dim, True, held=True)
    plan = plan_calibration(sample, ranker, shards, sizes, int(params["k"]), settings)
    if costs is not None:
        plan = replace(plan, searched=first_round(costs))
    data = plan.to_bytes()
    relative = f"staging/{uuid.uuid4().hex}-calibration.bin"
    store_for(rows.sparkSession, root).write(join(root, relative), data)
    return PlanFile(plan, relative,
                    PlanHandle(join(root, relative), sha256(data)))


def plan_calibration(sample: Sample, ranker, shards, sizes: np.ndarray, k: int,
                     settings: list[dict]) -> CalibrationPlan:
    """The plan of held-out queries routed as deep as the ladder's largest numProbes."""
    depth = min(len(sizes), probe_ladder(len(sizes))[-1] + 2)
    ranked, _ = ranker.rank(sample.vectors, depth)
    rows = np.repeat(np.arange(len(ranked)), ranked.shape[1])
    clusters = ranked.reshape(-1)
    counts = shards.counts[clusters]
    query = np.repeat(rows, counts)
    first = np.repeat(shards.offsets[clusters], counts)
    within = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
    pids = first + within
    queries_of = {int(p): np.unique(query[pids == p]) for p in np.unique(pids)}
    return CalibrationPlan(sample.vectors, sample.ids, settings, k, queries_of)


@dataclass(frozen=True)
class HeldOutBuild:
    """A partition index built inside a task with its held-out rows searched first."""

    index: PartitionIndex  # held-out rows added last
    order: np.ndarray  # the input rows' positions in label order (held-out rows last)
    found: bytes | None  # the held-out searches (see search_held_out)
    seconds: float  # spent searching


def build_holding_out(cls, handle: PlanHandle, pid: int, vectors: np.ndarray, ids: pa.Array,
                      context, seed: int, threads: int) -> HeldOutBuild:
    """Inside a build task: the partition's index built without its held-out rows, which
    it searches with every ladder setting before they join it."""
    plan = handle.read()
    held = np.asarray(pc.is_in(ids, value_set=plan.ids.cast(ids.type)))
    index = cls.build(vectors[~held], context, seed, threads)
    kept = ids.filter(pa.array(~held))
    started = time.perf_counter()
    found = search_held_out(index, plan, pid, kept, cls.search_knobs, threads)
    seconds = time.perf_counter() - started
    index.add(vectors[held], threads)
    order = np.concatenate([np.flatnonzero(~held), np.flatnonzero(held)])
    return HeldOutBuild(index, order, found, seconds)


def search_held_out(index, plan: CalibrationPlan, pid: int, ids: pa.Array, knobs_of,
                    threads: int) -> bytes | None:
    """Inside a build task, before the held-out rows are added: every ladder setting's
    answers for the queries routed to this partition, as Arrow IPC bytes."""
    queries = plan.queries_of.get(pid)
    if queries is None or len(queries) == 0:
        return None
    return _ipc(_ladder_table(index, plan, pid, queries, ids, knobs_of, threads,
                              plan.first_round, 0))


def _ladder_table(index, plan: CalibrationPlan, pid: int, queries: np.ndarray, ids: pa.Array,
                  knobs_of, threads: int, settings: list, first: int) -> pa.Table:
    """The answers of ``queries`` in one partition with each of ``settings`` (numbered
    from ``first`` on the plan's ladder)."""
    batches = []
    for number, setting in enumerate(settings, first):
        labels, dists = index.search(plan.vectors[queries], plan.fetch,
                                     knobs_of(setting, threads))
        batches.append(_ladder_rows(pid, queries, number, labels, dists, ids))
    return pa.Table.from_batches(batches)


def found_at_fit(stored) -> pa.Table:
    """The held-out searches the build tasks stored beside their partitions (their
    ``calibration`` values, as the partitions' facts were read back)."""
    tables = [pa.ipc.open_stream(value).read_all() for value in stored]
    if not tables:
        return pa.table({"pid": pa.array([], pa.int32()), "query": pa.array([], pa.int32()),
                         "setting": pa.array([], pa.int32()), "ids": pa.array([], pa.list_(
                             pa.int64())), "dists": pa.array([], pa.list_(pa.float32()))})
    return pa.concat_tables(tables)


def calibrate_at_fit(manifest, meta, held: HeldOut, base: DataFrame, target: float,
                     epsilon: float | None) -> SearchDefaults:
    """The fit's search defaults, from what its build tasks found for the held-out
    queries and their exact neighbours among the other rows (one pass over ``base``).
    When the build tasks' first round of settings leaves the choice open, the rest of
    the ladder is searched on the built partitions, the held-out rows hidden."""
    started = time.perf_counter()
    index = LoadedIndex.create(manifest, meta)
    plan = held.plan
    sample = Sample(plan.vectors, plan.ids, held=True)
    truth = exact_neighbors(base, sample, index.metric, plan.fetch, manifest.dim,
                            manifest.id_type)
    ranked, dists = index.router.ranked_clusters(sample.vectors, probe_ladder(
        len(meta.centroids))[-1], plan.fetch)
    epsilons = epsilons_to_try(epsilon)
    settings, found, trials = plan.first_round, held.found, None
    if len(settings) < len(plan.settings):
        model, hard = ProbeModel.of(index), hard_tail(dists)
        trials = measured(model, sample, truth, plan.fetch, settings, epsilons, ranked, dists,
                          found, hard)
        wanted = np.asarray([len(t) for t in truth], dtype=np.int64)
        if not settled(model, trials, plan.settings[len(settings):], epsilons, ranked, dists,
                       plan.fetch, target, wanted, hard):
            settings, trials = plan.settings, None
            found = pa.concat_tables([found, search_rest(base.sparkSession, index, plan)
                                      .cast(found.schema)])
    return chosen(index, sample, truth, plan.fetch, settings, epsilons, target, ranked, dists,
                  found, "held-out indexed rows", started, trials)


def search_rest(spark, index: LoadedIndex, plan: CalibrationPlan) -> pa.Table:
    """The ladder's settings past the first round: one Spark job searching the built
    partitions, each with its held-out rows hidden, for the queries routed to it."""
    pids = sorted(p for p in plan.queries_of if index.manifest.partitions.files[p])
    work = spark.createDataFrame(pa.table({"pid": pa.array(pids, pa.int32())}))
    id_sql = "long" if index.manifest.id_type == "long" else "string"
    tasks = max(1, min(len(pids), 2 * cluster_cores(spark)))
    return work.repartition(tasks, "pid").mapInArrow(
        _rest_fn(index, plan), f"pid int, query int, setting int, ids array<{id_sql}>, "
        "dists array<float>").toArrow()


def _rest_fn(built: LoadedIndex, plan: CalibrationPlan):
    manifest, meta = built.manifest, built.meta

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        index = LoadedIndex.create(manifest, meta)
        for batch in batches:
            for pid in batch.column("pid").to_pylist():
                part = fresh_partition(index, pid, False)
                held = np.asarray(pc.is_in(part.ids, value_set=plan.ids.cast(part.ids.type)))
                part.index.hide(np.flatnonzero(held).astype(np.int64))
                yield from _ladder_table(part.index, plan, pid, plan.queries_of[pid], part.ids,
                                         index.cls.search_knobs, 1,
                                         plan.settings[plan.searched:], plan.searched
                                         ).to_batches()

    return run
