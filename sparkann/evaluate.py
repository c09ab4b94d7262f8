"""Exact k-nearest neighbours on Spark (blocked brute force), recall@k, and search tuning.

* :func:`exact_neighbors`, :func:`recall_at_k`, :func:`model_recall`: exact answers and
  recall, computed in tasks by the kernels of :mod:`sparkann.exact`.
* :func:`sweep`: recall, queries/s and cost of a model over a grid of ``numProbes`` x
  index-type setting (``efSearch``, or the type's calibration ladder) on a sample of
  queries; :func:`plot_sweep` draws it, :func:`write_report` saves both.
* :func:`tune`: the cheapest setting reaching a target recall, cheapest as calibration
  counts search work (:mod:`sparkann.tuning`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import tuning
from .exact import first_k, hit_counts, knn, share
from .index import index_type
from .loader import open_index
from .metrics import get_metric
from .observe import job_label
from .sampling import collect_sample
from .search.partition import K1, K2, query_key
from .tuning import ProbeModel
from .vectors import id_type, to_matrix, vector_column

log = logging.getLogger(__name__)
KEY = "__sparkann_key"


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
    compared with every block of distinct query vectors (broadcast), and the
    per-block candidates are merged per query vector. Query rows are matched
    with their answers by a key derived from the vector itself, so the result is
    right however Spark orders or recomputes ``queries``; a row whose vector did
    not reach the search (a query DataFrame whose content changes between
    evaluations) fails the job instead of getting no answer.
    """
    id_sql = id_type(base, id_col)
    get_metric(metric)
    rows = base.select(F.col(id_col).alias("id"), vector_column(base, vector_col).alias("vector"))
    vec = vector_column(queries, vector_col)
    keyed = queries.select("*", *query_key(vec))
    distinct = keyed.select(K1, K2, vec.alias("vector")).dropDuplicates([K1, K2])
    with job_label(base.sparkSession, "sparkann: exact neighbours"):
        num_blocks = max(1, math.ceil(base.count() / block_rows))
        num_qblocks = max(1, math.ceil(distinct.count() / query_block_rows))
    blocks = rows.groupBy(F.pmod(F.xxhash64("id"), num_blocks).alias("block")).agg(
        F.collect_list("id").alias("ids"), F.collect_list("vector").alias("vectors"))
    qblocks = distinct.groupBy(F.pmod(K1, num_qblocks).alias("qblock")).agg(
        F.collect_list(K1).alias("k1s"), F.collect_list(K2).alias("k2s"),
        F.collect_list("vector").alias("qvectors"))
    pairs = blocks.crossJoin(F.broadcast(qblocks))
    candidates = pairs.mapInArrow(_block_knn_fn(k, metric),
                                  f"{K1} long, {K2} long, id {id_sql}, distance float")
    best = F.slice(F.array_sort(F.collect_list(F.struct("distance", "id"))), 1, k)
    merged = candidates.groupBy(K1, K2).agg(F.transform(
        best, lambda s: F.struct(s["id"].alias("id"), s["distance"].alias("distance")))
        .alias("__sparkann_found"))
    joined = keyed.join(merged, [K1, K2], "left")
    missing = F.raise_error(F.lit("sparkann: a query row's vector was not searched; the query "
                                  "DataFrame changed while Spark recomputed it (make it "
                                  "deterministic, e.g. write it out, and retry)"))
    found = F.when(F.col("__sparkann_found").isNull(), missing).otherwise(
        F.col("__sparkann_found"))
    return joined.select(*[keyed[c] for c in queries.columns], found.alias(neighbors_col))


def _block_knn_fn(k: int, metric: str):
    prepared = get_metric(metric)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in range(batch.num_rows):
                base = prepared.prepare(to_matrix(batch.column("vectors")[row].values))
                queries = prepared.prepare(to_matrix(batch.column("qvectors")[row].values))
                labels, dists = knn(base, queries, k, metric)
                width = labels.shape[1]
                yield pa.RecordBatch.from_arrays(
                    [pa.array(np.repeat(batch.column("k1s")[row].values.to_numpy(), width)),
                     pa.array(np.repeat(batch.column("k2s")[row].values.to_numpy(), width)),
                     batch.column("ids")[row].values.take(pa.array(labels.reshape(-1))),
                     pa.array(dists.reshape(-1), pa.float32())],
                    [K1, K2, "id", "distance"])

    return run


def recall_at_k(found: DataFrame, truth: DataFrame, key_col: str, k: int,
                found_col: str = "neighbors", truth_col: str = "neighbors") -> float:
    """Share of the queries' true ``k`` neighbours found among their first ``k`` answers
    (rows matched on ``key_col``); counted in tasks by :func:`sparkann.exact.hit_counts`."""
    ids = lambda c: F.transform(F.slice(F.col(c), 1, k), lambda n: n["id"])  # noqa: E731
    a = found.select(key_col, ids(found_col).alias("found"))
    b = truth.select(key_col, ids(truth_col).alias("truth"))
    counted = a.join(b, key_col).select("found", "truth").mapInArrow(
        _hits_fn, "hits long, wanted long, queries long")
    hits, wanted, queries = counted.agg(F.sum("hits"), F.sum("wanted"),
                                        F.sum("queries")).collect()[0]
    if not queries:
        raise ValueError(f"no query rows matched on {key_col!r}; recall is undefined")
    return share(np.asarray(hits), np.asarray(wanted))


def _hits_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        pairs = [(pc.list_parent_indices(column).to_numpy(),
                  pc.list_flatten(column).to_numpy(zero_copy_only=False))
                 for column in (batch.column("found"), batch.column("truth"))]
        hits, wanted = hit_counts(batch.num_rows, *pairs[0], *pairs[1])
        yield pa.RecordBatch.from_pydict({"hits": [int(hits.sum())],
                                          "wanted": [int(wanted.sum())],
                                          "queries": [batch.num_rows]})


def model_recall(model, base: DataFrame, queries: DataFrame, key_col: str,
                 k: int | None = None) -> float:
    """recall@k of ``model`` on ``queries`` against exact search over ``base``."""
    k = k or model.getK()
    truth = exact_neighbors(
        base, queries, k, model.getMetric(),
        vector_col=model.getVectorCol(), id_col=model.getIdCol(),
    )
    found = model.copy({model.k: k}).transform(queries)
    return recall_at_k(found, truth, key_col, k, model.getNeighborsCol())


# --------------------------------------------------------------------------
# Sweeps and tuning on a sample of queries
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """recall@k, speed and cost of one setting on the query sample."""

    num_probes: int
    setting: dict  # the index type's knobs, e.g. {"efSearch": 64} or {"rerankK": 40}
    recall: float
    seconds: float
    queries_per_second: float
    cost: float  # search work per query, as calibration counts it (see sparkann.tuning)
    epsilon: float = 0.0  # the probeEpsilon searched with

    @property
    def ef_search(self) -> int | None:
        """The setting's efSearch (None for index types without one)."""
        return self.setting.get("efSearch")

    def as_json(self) -> dict:
        return {"numProbes": self.num_probes, "probeEpsilon": self.epsilon, **self.setting,
                "recall": self.recall, "cost": self.cost, "seconds": self.seconds,
                "queriesPerSecond": self.queries_per_second}


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune` chose, with every setting it measured on the way."""

    num_probes: int
    setting: dict
    recall: float
    cost: float
    target_recall: float
    trials: list[Trial] = field(default_factory=list)

    @property
    def ef_search(self) -> int | None:
        return self.setting.get("efSearch")

    def params(self) -> dict:
        """``{"numProbes": ..., **setting}``, e.g. for ``model.copy(...)``."""
        return {"numProbes": self.num_probes, **self.setting}

    def apply(self, model):
        """A copy of ``model`` searching with the chosen settings."""
        return model.copy({model.getParam(name): value for name, value in self.params().items()})


class QuerySample:
    """A fixed sample of queries with their exact neighbours, for measuring a model.

    The sample (at most ``sample`` rows, seeded; 0 = all) is collected to the
    driver once and turned back into a small DataFrame, so every measurement
    searches exactly the same queries. Exact neighbours come from
    :func:`exact_neighbors` over ``base``, computed once.
    """

    def __init__(self, model, base: DataFrame, queries: DataFrame, k: int | None = None,
                 sample: int = 1000, seed: int = 0):
        if sample < 0:
            raise ValueError(f"sample={sample} is out of range: must be >= 0 (0 = all queries)")
        self.model = model
        self.k = int(k or model.getK())
        self.vector_col = model.getVectorCol()
        spark = queries.sparkSession
        picked = queries.select(vector_column(queries, self.vector_col).alias("vector"))
        with job_label(spark, "sparkann: sample queries"):
            if sample:
                count = picked.count()
                vectors = collect_sample(picked, sample, count, seed,
                                         [F.col("vector")]).column("vector")
            else:
                vectors = picked.toArrow().column("vector")
        if len(vectors) == 0:
            raise ValueError("the query DataFrame is empty; there is nothing to evaluate")
        table = pa.table({KEY: pa.array(np.arange(len(vectors), dtype=np.int64)),
                          self.vector_col: vectors})
        self.queries = spark.createDataFrame(table)
        self.vectors = vectors
        self.size = len(vectors)
        started = time.perf_counter()
        truth = exact_neighbors(base, self.queries, self.k, model.getMetric(),
                                vector_col=self.vector_col, id_col=model.getIdCol())
        with job_label(spark, "sparkann: exact neighbours"):
            self.truth = _ids_by_key(truth, "neighbors", self.size)
        self.exact_seconds = round(time.perf_counter() - started, 3)
        log.info("sparkann: exact neighbours of %d sample queries in %.2f s", self.size,
                 self.exact_seconds)

    def measure(self, num_probes: int, setting: dict, model=None) -> Trial:
        """Search the sample with ``numProbes`` and the index type's ``setting`` (e.g.
        ``{"efSearch": 64}``): recall@k, queries per second and cost.

        ``model`` defaults to the sample's own; another must index the same rows.
        """
        model = model or self.model
        searched = model.copy({model.k: self.k, model.numProbes: num_probes,
                               **{model.getParam(name): v for name, v in setting.items()}})
        column = searched.getNeighborsCol()
        spark = self.queries.sparkSession
        started = time.perf_counter()
        with job_label(spark, "sparkann: search"):
            found = _ids_by_key(searched.transform(self.queries), column, self.size)
        seconds = max(time.perf_counter() - started, 1e-9)
        trial = Trial(num_probes, dict(setting), _recall(found, self.truth, self.k),
                      round(seconds, 4), round(self.size / seconds, 1),
                      self.costs(model, [(num_probes, setting)])[0], model.getProbeEpsilon())
        log.info("sparkann: numProbes=%d %s: recall@%d %.4f, %.0f queries/s, cost %.1f",
                 num_probes, setting, self.k, trial.recall, trial.queries_per_second,
                 trial.cost)
        return trial

    def costs(self, model, grid: Sequence[tuple[int, dict]]) -> list[float]:
        """Search work per sample query of each ``(numProbes, setting)`` with ``model``'s
        probeEpsilon, as calibration counts it (:class:`sparkann.tuning.ProbeModel`)."""
        index = open_index(model._handle(self.queries.sparkSession))
        probe = ProbeModel.of(index)
        vectors = index.metric.prepare(to_matrix(self.vectors, index.manifest.dim))
        ranked, dists = index.router.ranked_clusters(vectors, max(p for p, _ in grid), self.k)
        epsilon = model.getProbeEpsilon()
        return [round(probe.cost(setting, probe.probes(ranked, dists, probes, self.k,
                                                       epsilon)[1], self.size), 3)
                for probes, setting in grid]


def _ids_by_key(frame: DataFrame, column: str, size: int) -> list[list]:
    """Neighbour ids of each sample query, indexed by its key."""
    table = frame.select(KEY, F.col(column).getField("id").alias("ids")).toArrow()
    result: list[list] = [[] for _ in range(size)]
    for key, ids in zip(table.column(KEY).to_pylist(), table.column("ids").to_pylist()):
        result[key] = ids or []
    return result


def _recall(found: list[list], truth: list[list], k: int) -> float:
    """Share of the sample's true ``k`` neighbours among its first ``k`` answers."""
    found_rows, found_ids = first_k(found, k)
    truth_rows, truth_ids = first_k(truth, k)
    return round(share(*hit_counts(len(truth), found_rows, found_ids, truth_rows, truth_ids)), 6)


def _settings(model, k: int, probes: Sequence[int] | None,
              efs: Sequence[int] | None) -> list[tuple[int, dict]]:
    """The (numProbes, setting) grid; impossible settings dropped. ``efs`` replaces the
    efSearch values of index types that have one."""
    partitions = int(model.manifest.params["numPartitions"])
    if probes is None:
        probes = sorted({min(2**i, partitions) for i in range(partitions.bit_length() + 1)})
    usable = sorted({p for p in probes if 1 <= p <= partitions})
    skipped = sorted(set(probes) - set(usable))
    if skipped:
        log.warning("sparkann: skipping numProbes %s: the index has %d partitions", skipped,
                    partitions)
    settings = _index_settings(model, k, efs)
    if not usable or not settings:
        raise ValueError(f"no usable setting: numProbes must be in 1..{partitions} and "
                         f"efSearch >= k={k}")
    return [(p, s) for p in usable for s in settings]


def _index_settings(model, k: int, efs: Sequence[int] | None) -> list[dict]:
    """The index type's settings to try: its calibration ladder, or the given efSearch
    values (at least ``k``) for a type that has efSearch."""
    ladder = index_type(model.manifest.index_type).search_ladder(k, model.manifest.params)
    has_ef = all("efSearch" in setting for setting in ladder)
    if efs is None:
        return [{"efSearch": e} for e in sorted({max(k, e) for e in (k, 16, 32, 64, 128, 256)})
                ] if has_ef else ladder
    if not has_ef:
        raise ValueError(f"ef={list(efs)}: indexType={model.manifest.index_type!r} has no "
                         f"efSearch; leave ef unset to try its settings {ladder}")
    beams = sorted({e for e in efs if e >= k})
    if len(beams) < len(set(efs)):
        log.warning("sparkann: skipping efSearch below k=%d: %s", k,
                    sorted({e for e in efs if e < k}))
    return [{"efSearch": e} for e in beams]


def _by_cost(evaluation: QuerySample, model,
             grid: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """The grid's settings with their costs, cheapest first (ties: fewer probes)."""
    costs = evaluation.costs(model, grid)
    order = sorted(range(len(grid)), key=lambda i: (costs[i], grid[i][0]))
    return [grid[i] for i in order]


def sweep(model, base: DataFrame, queries: DataFrame, probes: Sequence[int] | None = None,
          ef: Sequence[int] | None = None, k: int | None = None, sample: int = 1000,
          seed: int = 0, evaluation: QuerySample | None = None) -> list[Trial]:
    """recall@k, queries/s and cost of ``model`` for every ``numProbes`` x setting
    (``efSearch`` values, or the index type's calibration ladder), cheapest first.

    Exact neighbours of a seeded sample of ``sample`` queries (0 = all) are
    computed once over ``base`` (the indexed rows). The first setting is run
    once untimed first, so that timings do not include loading the index.
    """
    evaluation = evaluation or QuerySample(model, base, queries, k, sample, seed)
    grid = _by_cost(evaluation, model, _settings(model, evaluation.k, probes, ef))
    first_probes, first_setting = grid[0]
    evaluation.measure(first_probes, first_setting, model=model)  # warm-up: load partitions
    return [evaluation.measure(p, s, model=model) for p, s in grid]


def cheapest(trials: Sequence[Trial], target_recall: float) -> Trial | None:
    """The trial of least cost reaching ``target_recall`` (ties: fewer probes), or None;
    the rule calibration applies (:func:`sparkann.tuning.cheapest`)."""
    return tuning.cheapest(tuning.reaching(trials, target_recall))


def tune(model, base: DataFrame, queries: DataFrame, target_recall: float,
         k: int | None = None, probes: Sequence[int] | None = None,
         ef: Sequence[int] | None = None, sample: int = 1000, seed: int = 0,
         evaluation: QuerySample | None = None) -> Tuning:
    """The cheapest ``numProbes`` and index-type setting whose recall@k on a query sample
    reaches ``target_recall``; works for every index type.

    Cheapest means least search work per query as calibration counts it: the index
    type's cost of each partition a sample query probes (``efSearch`` for HNSW,
    the scan and re-ranking for PQ), which unlike a timing does not depend on how
    busy the cluster is. Settings are measured cheapest first and the first to
    reach the target wins, so only the settings cheaper than the answer are
    searched (plus the most expensive one, to fail fast when none can reach it).

    Parameters
    ----------
    model : ANNIndexModel
    base : DataFrame
        The indexed rows (for exact neighbours).
    queries : DataFrame
        Queries with the model's vector column; a seeded sample of ``sample`` rows
        (0 = all) is used.
    target_recall : float
        In (0, 1].
    k : int, optional
        Neighbours per query (default: the model's ``k``).
    probes : sequence of int, optional
        numProbes values (default: powers of two up to the number of partitions).
    ef : sequence of int, optional
        efSearch values, for index types that have efSearch (default: k, 16, 32, 64,
        128, 256); other types try the settings of their calibration ladder.
    evaluation : QuerySample, optional
        A sample (with exact neighbours) already made, e.g. for :func:`sweep`;
        then ``k``, ``sample`` and ``seed`` are its own.

    Raises
    ------
    ValueError
        If no candidate setting reaches the target; the message gives the best recall.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall={target_recall} is out of range: must be in (0, 1]")
    evaluation = evaluation or QuerySample(model, base, queries, k, sample, seed)
    grid = _by_cost(evaluation, model, _settings(model, evaluation.k, probes, ef))
    most_probes, most_setting = grid[-1]
    best = evaluation.measure(most_probes, most_setting, model=model)
    trials = [best]
    if best.recall < target_recall:
        raise ValueError(
            f"no setting reaches recall@{evaluation.k} {target_recall}: the most expensive, "
            f"numProbes={best.num_probes} {best.setting}, reaches {best.recall:.4f}; "
            "try larger numProbes / efSearch values")
    for probes_, setting in grid[:-1]:
        trial = evaluation.measure(probes_, setting, model=model)
        trials.append(trial)
        if trial.recall >= target_recall:
            best = trial
            break
    log.info("sparkann: tuned for recall@%d >= %s: numProbes=%d %s (recall %.4f)",
             evaluation.k, target_recall, best.num_probes, best.setting, best.recall)
    return Tuning(best.num_probes, best.setting, best.recall, best.cost, target_recall, trials)


def plot_sweep(trials: Sequence[Trial], path: str, title: str = "") -> str:
    """Save a recall-versus-queries/s chart of ``trials`` (one line per numProbes) as PNG.

    Needs matplotlib (``pip install sparkann[eval]``); uses its Agg backend.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as err:
        raise ImportError("plotting needs matplotlib; install it with "
                          "`pip install sparkann[eval]` (or `pip install matplotlib`)") from err
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for probes in sorted({t.num_probes for t in trials}):
        line = sorted((t for t in trials if t.num_probes == probes), key=lambda t: t.cost)
        ax.plot([t.recall for t in line], [t.queries_per_second for t in line], marker="o",
                label=f"numProbes={probes}")
        for t in line:
            ax.annotate(_label(t.setting), (t.recall, t.queries_per_second), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("recall@k")
    ax.set_ylabel("queries per second (log scale)")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:,.4g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "sparkann: recall versus throughput")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(setting: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in setting.items())


REPORT_NAME = "report.json"
PLOT_NAME = "recall_vs_qps.png"


def write_report(out_dir: str, trials: Sequence[Trial], evaluation: QuerySample,
                 extra: dict[str, Any] | None = None,
                 target_recall: float | None = None) -> dict:
    """Write ``report.json`` and ``recall_vs_qps.png`` under ``out_dir``; returns the report."""
    os.makedirs(out_dir, exist_ok=True)
    model = evaluation.model
    report: dict[str, Any] = {
        **(extra or {}),
        "k": evaluation.k,
        "metric": model.getMetric(),
        "sampleQueries": evaluation.size,
        "exactSeconds": evaluation.exact_seconds,
        "trials": [t.as_json() for t in trials],
    }
    if target_recall is not None:
        chosen = cheapest(trials, target_recall)
        report["targetRecall"] = target_recall
        report["cheapest"] = chosen.as_json() if chosen else None
    title = (f"sparkann: recall@{evaluation.k} vs queries/s "
             f"({evaluation.size} queries, {model.manifest.params['numPartitions']} partitions)")
    report["plot"] = plot_sweep(trials, os.path.join(out_dir, PLOT_NAME), title)
    with open(os.path.join(out_dir, REPORT_NAME), "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2, default=_plain)
    return report


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)
