"""Calibration: the cheapest search settings that reach a target recall.

``fit`` (and :meth:`ANNIndexModel.calibrate`) measure recall@k on a seeded
sample of queries -- indexed rows with their own id excluded, or the user's
own queries -- against exact neighbours computed on Spark, then store the
cheapest ``numProbes`` and index-type setting (``efSearch`` for HNSW,
``rerankK`` for PQ) that reach the target as the index's search defaults.

Cost, with ``S`` sample queries (at most :data:`MAX_SAMPLE`): one pass over the
``N`` indexed rows for the exact neighbours (``N x S x d`` multiply-adds, in
parallel tasks), and one search job of the sample over a ladder of settings
(``S x probes x ladder`` partition searches, independent of ``N``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .exact import top_k
from .loader import IndexHandle, LoadedIndex, open_index, partition
from .metrics import Metric
from .partitioning.router import centroid_gaps
from .sampling import collect_sample
from .search.topk import top_k_lists
from .vectors import list_array, to_matrix

log = logging.getLogger(__name__)

MAX_SAMPLE = 1000
MIN_SAMPLE = 100
PROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# probeEpsilon values tried with numProbes > 1 when the user set none: a further
# cluster is probed only for queries near its border, a fraction of the cost
EPSILON_LADDER = (0.0, 0.02, 0.05, 0.1, 0.2)
MARGIN_SIGMAS = 2.5  # measured recall must clear the target by this many standard errors
# The hard tail of a sample of indexed rows: its share with the smallest centroid gap
# (see router.centroid_gaps). Queries unlike the indexed rows (far from every centroid,
# or between several) look like this tail, so calibration on indexed rows also asks the
# tail for HARD_MISS_SHARE of the misses the target allows: recall 0.975 for 0.95.
HARD_SHARE = 0.25
HARD_MISS_SHARE = 0.5


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


@dataclass(frozen=True)
class Choice:
    num_probes: int
    epsilon: float
    setting: dict
    recall: float
    cost: float
    hard_recall: float = 1.0  # on the sample's hard tail (1.0: none)


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
    kind = pa.int64() if id_type == "long" else pa.string()
    n = len(sample.vectors)
    rows = np.repeat(found.column("query").to_numpy(),
                     np.diff(found.column("ids").combine_chunks().offsets.to_numpy()))
    ids = found.column("ids").combine_chunks().values.cast(kind)
    dists = found.column("dists").combine_chunks().values.to_numpy(zero_copy_only=False)
    keep = np.ones(len(rows), dtype=bool)
    if sample.ids is not None and not sample.held:
        keep = _not_own(ids, rows, sample.ids.cast(kind))
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
            cols, dists = top_k(metric.pairwise(queries, vectors), fetch)
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


def probe_ladder(num_clusters: int) -> list[int]:
    ladder = sorted({p for p in PROBE_LADDER if p <= num_clusters})
    if num_clusters <= PROBE_LADDER[-1] and num_clusters not in ladder:
        ladder.append(num_clusters)
    return ladder


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
    kind = "long" if index.manifest.id_type == "long" else "string"
    found = work.repartition(tasks, "pid").mapInArrow(
        _ladder_fn(handle, sample.vectors, settings, fetch, with_vectors),
        f"pid int, query int, setting int, ids array<{kind}>, dists array<float>").toArrow()
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


def epsilons_to_try(epsilon: float | None) -> tuple[float, ...]:
    """The user's probeEpsilon, or (None) the ladder calibration chooses from."""
    return EPSILON_LADDER if epsilon is None else (float(epsilon),)


def choose(index: LoadedIndex, sample: Sample, truth: list[np.ndarray], k: int,
           settings: list[dict], epsilons: tuple[float, ...], target: float, ranked, dists,
           found: pa.Table) -> tuple[Choice, list[Choice]]:
    """Recall and cost of every (numProbes, probeEpsilon, setting); the cheapest reaching
    the target with a margin for the sample's standard error, else the cheapest reaching
    it at all, else the one of best recall. ``found`` must hold the answers of every
    partition probed with the smallest epsilon."""
    import pandas as pd

    n = len(sample.vectors)
    own_excluded = sample.ids is not None and not sample.held
    own_ids = [] if sample.ids is None or sample.held else sample.ids.to_numpy(
        zero_copy_only=False)
    fetch = k + (1 if own_excluded else 0)
    pids = found.column("pid").to_numpy()
    query = found.column("query").to_numpy()
    setting = found.column("setting").to_numpy()
    lengths = np.diff(found.column("ids").combine_chunks().offsets.to_numpy())
    flat_ids = found.column("ids").combine_chunks().values
    flat_d = found.column("dists").combine_chunks().values.to_numpy(zero_copy_only=False)
    codes, uniques = pd.factorize(np.concatenate([
        flat_ids.to_numpy(zero_copy_only=False), np.concatenate(truth) if truth else [],
        own_ids]))
    cand_codes = codes[:len(flat_ids)]
    truth_codes = codes[len(flat_ids):len(flat_ids) + sum(len(t) for t in truth)]
    truth_rows = np.repeat(np.arange(n), [len(t) for t in truth])
    truth_keys = truth_rows.astype(np.int64) * len(uniques) + truth_codes
    own = codes[len(flat_ids) + len(truth_codes):] if own_excluded else None
    cand_q = np.repeat(query, lengths)
    cand_pid = np.repeat(pids, lengths)
    cand_s = np.repeat(setting, lengths)
    if own is not None:
        mine = cand_codes != own[cand_q]
        cand_q, cand_pid, cand_s = cand_q[mine], cand_pid[mine], cand_s[mine]
        cand_codes, flat_d = cand_codes[mine], flat_d[mine]
    rows = np.asarray(index.manifest.partitions.rows, dtype=np.float64)
    wanted = np.bincount(truth_rows, minlength=n)
    hard = hard_tail(dists) if sample.ids is not None else np.zeros(n, dtype=bool)
    trials = []
    probe_values = probe_ladder(len(index.meta.centroids))
    for probes, epsilon in [(p, e) for p in probe_values
                            for e in (epsilons if p > 1 else epsilons[:1])]:
        mask = index.router.probed(ranked, dists, probes, fetch, epsilon)
        r, c = np.nonzero(mask)
        qpos, ppos = index.router.expand(r, ranked[r, c])
        pair_keys = qpos.astype(np.int64) * index.manifest.num_partitions + ppos
        probed = np.isin(cand_q.astype(np.int64) * index.manifest.num_partitions + cand_pid,
                         pair_keys)
        for number, values in enumerate(settings):
            pick = probed & (cand_s == number)
            hits = _hits(cand_q[pick], flat_d[pick], cand_codes[pick], truth_keys,
                         len(uniques), n, k)
            cost = float(np.sum(index.cls.probe_cost(values, rows[ppos],
                                                     index.manifest.dim))) / n
            trials.append(Choice(probes, epsilon, dict(values),
                                 round(_share(hits, wanted), 5), round(cost, 3),
                                 round(_share(hits[hard], wanted[hard]), 5)))
    return _cheapest(trials, target, n * k, hard_target(target) if hard.any() else 0.0,
                     int(wanted[hard].sum())), trials


def hard_target(target: float) -> float:
    """Recall asked of the hard tail: HARD_MISS_SHARE of the misses ``target`` allows."""
    return 1.0 - HARD_MISS_SHARE * (1.0 - target)


def hard_tail(dists: np.ndarray) -> np.ndarray:
    """The HARD_SHARE of queries with the smallest centroid gap."""
    threshold = hard_gap(dists)
    if threshold is None:  # one cluster: no query is nearer a border than another
        return np.zeros(len(dists), dtype=bool)
    return centroid_gaps(dists) <= threshold


def hard_gap(dists: np.ndarray) -> float | None:
    """The centroid gap below which a sample query counts as hard (None: no border)."""
    gaps = centroid_gaps(dists)
    value = float(np.quantile(gaps, HARD_SHARE)) if len(gaps) else np.inf
    return value if np.isfinite(value) else None


def _cheapest(trials: list, target: float, pairs: int, hard: float, hard_pairs: int) -> Choice:
    """The cheapest trial whose recall clears the target (and the hard tail its own)
    by a margin for the sample's standard error, else without the margin, else the
    one of best recall."""
    def margin(goal: float, count: int) -> float:
        return MARGIN_SIGMAS * float(np.sqrt(goal * (1 - goal) / max(count, 1)))

    strict = [t for t in trials if t.recall >= target + margin(target, pairs)
              and t.hard_recall >= hard + margin(hard, hard_pairs)]
    good = strict or [t for t in trials if t.recall >= target and t.hard_recall >= hard]
    if good:
        return min(good, key=lambda t: (t.cost, t.num_probes, t.epsilon))
    return max(trials, key=lambda t: (min(t.recall - target, t.hard_recall - hard), -t.cost))


def _share(hits: np.ndarray, wanted: np.ndarray) -> float:
    return float(hits.sum()) / max(int(wanted.sum()), 1)


def _hits(q: np.ndarray, d: np.ndarray, codes: np.ndarray, truth_keys: np.ndarray,
          width: int, n: int, k: int) -> np.ndarray:
    """How many of each query's exact neighbours are among its ``k`` best candidates."""
    order = np.lexsort((d, q))
    q, codes = q[order], codes[order]
    starts = np.searchsorted(q, np.arange(n))
    rank = np.arange(len(q)) - starts[q] if len(q) else np.empty(0, np.int64)
    top = rank < k
    found = np.isin(q[top].astype(np.int64) * width + codes[top], truth_keys)
    return np.bincount(q[top][found], minlength=n)


def calibrate(spark, handle: IndexHandle, base: DataFrame, num_rows: int, k: int, target: float,
              seed: int, epsilon: float | None, queries: DataFrame | None = None) -> dict:
    """Measure the ladder on a sample and return the chosen search defaults and a report.

    ``base`` holds the indexed rows (id, vector) for the exact neighbours;
    ``queries`` (vector column ``vector``) replaces the sample of indexed rows;
    ``epsilon`` None lets calibration choose probeEpsilon too.
    """
    import time

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
    best, trials = choose(index, sample, truth, k, settings, epsilons, target, ranked, dists,
                          found)
    return report_of(best, trials, target, k, dists,
                     "indexed rows" if queries is None else "queries",
                     time.perf_counter() - started, queries is None)


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

    def to_bytes(self) -> bytes:
        pids = np.array(sorted(self.queries_of), dtype=np.int32)
        lists = [np.asarray(self.queries_of[p], np.int32) for p in pids]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int32)
        routed = pa.table({"pid": pa.array(pids, pa.int32()), "queries": pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(np.concatenate(lists) if lists else [], pa.int32()))})
        sample = pa.table({"id": self.ids, "vector": list_array(self.vectors)})
        head = json.dumps({"settings": self.settings, "fetch": self.fetch}).encode()
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
                    for i, p in enumerate(routed_table.column("pid").to_pylist())})


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


def plan_calibration(sample: Sample, ranker, shards, sizes: np.ndarray, k: int,
                     settings: list[dict]) -> tuple[CalibrationPlan, int]:
    """Route the held-out queries as deep as any probe setting on the ladder goes;
    returns the plan and that depth (in clusters)."""
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
    return CalibrationPlan(sample.vectors, sample.ids, settings, k, queries_of), depth


def search_held_out(index, plan: CalibrationPlan, pid: int, ids: pa.Array, knobs_of,
                    threads: int) -> bytes | None:
    """Inside a build task, before the held-out rows are added: every ladder setting's
    answers for the queries routed to this partition, as Arrow IPC bytes."""
    queries = plan.queries_of.get(pid)
    if queries is None or len(queries) == 0:
        return None
    batches = []
    for number, setting in enumerate(plan.settings):
        labels, dists = index.search(plan.vectors[queries], plan.fetch,
                                     knobs_of(setting, threads))
        batches.append(_ladder_rows(pid, queries, number, labels, dists, ids))
    return _ipc(pa.Table.from_batches(batches))


def found_at_fit(spark, root: str, run: str) -> pa.Table:
    """The held-out searches the build tasks stored beside their partitions."""
    from .storage.fs import join

    rows = spark.read.parquet(join(root, run)).select("calibration").where(
        "calibration IS NOT NULL").toArrow()
    tables = [pa.ipc.open_stream(value.as_py()).read_all()
              for value in rows.column("calibration").combine_chunks()]
    if not tables:
        return pa.table({"pid": pa.array([], pa.int32()), "query": pa.array([], pa.int32()),
                         "setting": pa.array([], pa.int32()), "ids": pa.array([], pa.list_(
                             pa.int64())), "dists": pa.array([], pa.list_(pa.float32()))})
    return pa.concat_tables(tables)


def report_of(best: Choice, trials: list, target: float, k: int, dists: np.ndarray,
              source: str, seconds: float, tail: bool) -> dict:
    """The calibration report: the chosen settings, every trial, and the sample's
    centroid-gap profile that searches compare their queries with (query drift)."""
    sample_size = len(dists)
    reached = best.recall >= target and (not tail or best.hard_recall >= hard_target(target))
    if reached:
        log.info("sparkann: calibrated for recall@%d >= %.3f: numProbes=%d probeEpsilon=%g "
                 "%s (recall %.4f on %d held-out queries)", k, target, best.num_probes,
                 best.epsilon, best.setting, best.recall, sample_size)
    else:
        log.warning("sparkann: no search setting reaches recall@%d %.3f; the best measured, "
                    "numProbes=%d probeEpsilon=%g %s, reaches %.4f on %d sample queries. The "
                    "index is usable; raise hnswM / efConstruction (or numPartitions for "
                    "fewer, larger partitions) to reach the target", k, target,
                    best.num_probes, best.epsilon, best.setting, best.recall, sample_size)
    return {
        "targetRecall": target, "k": k, "recall": best.recall, "reached": reached,
        "numProbes": best.num_probes, "probeEpsilon": best.epsilon, **best.setting,
        "sampleQueries": sample_size,
        "sampleSource": source, "seconds": round(seconds, 3),
        **({"hardRecall": best.hard_recall, "hardTarget": hard_target(target)} if tail else {}),
        "hardGap": hard_gap(dists),
        "farDistance": float(np.quantile(dists[:, 0], 1 - HARD_SHARE)) if len(dists) else None,
        "hardShare": HARD_SHARE,
        "trials": [{"numProbes": t.num_probes, "probeEpsilon": t.epsilon, **t.setting,
                    "recall": t.recall, "cost": t.cost,
                    **({"hardRecall": t.hard_recall} if tail else {})} for t in trials],
    }


def calibrate_at_fit(manifest, meta, plan: CalibrationPlan, found: pa.Table, base: DataFrame,
                     target: float, epsilon: float | None) -> dict:
    """The fit's calibration report, from what its build tasks found for the held-out
    queries and their exact neighbours among the other rows (one pass over ``base``)."""
    import time

    started = time.perf_counter()
    index = LoadedIndex.create(manifest, meta)
    sample = Sample(plan.vectors, plan.ids, held=True)
    truth = exact_neighbors(base, sample, index.metric, plan.fetch, manifest.dim,
                            manifest.id_type)
    ranked, dists = index.router.ranked_clusters(sample.vectors, probe_ladder(
        len(meta.centroids))[-1], plan.fetch)
    best, trials = choose(index, sample, truth, plan.fetch, plan.settings,
                          epsilons_to_try(epsilon), target,
                          ranked, dists, found)
    return report_of(best, trials, target, plan.fetch, dists, "held-out indexed rows",
                     time.perf_counter() - started, True)
