"""Choosing search settings: recall and cost of every setting on a sample of queries,
and the cheapest one reaching a target recall. Pure numpy and pyarrow; no Spark.

A *setting* is ``numProbes``, ``probeEpsilon`` and the index type's own knobs (a
dict from its ``search_ladder``, e.g. ``{"efSearch": 64}`` or ``{"rerankK": 40}``).
Its *cost* is the search work per query the index type predicts
(``probe_cost``) summed over the partitions the router probes for each sample
query: calibration (:mod:`sparkann.calibrate`) and :func:`sparkann.evaluate.tune`
both rank settings by it. Samples of indexed rows also hold their *hard tail*
(the queries nearest a centroid border) to a stricter recall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from .exact import hit_counts, share
from .partitioning.router import Router, centroid_gaps

log = logging.getLogger(__name__)

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


# The build tasks of a fit search the held-out queries first with the ladder's settings
# costing at most this many times its cheapest one; the rest only when those leave the
# choice open (see settled).
FIRST_ROUND_COST = 4.0


def first_round(costs: Sequence[float]) -> int:
    """How many settings of a ladder (cheapest first, ``costs`` per probe) a fit's build
    tasks search: those within ``FIRST_ROUND_COST`` times the cheapest."""
    values = np.asarray(costs, dtype=np.float64)
    if not len(values):
        return 0
    over = np.flatnonzero(values > FIRST_ROUND_COST * values.min())
    return int(over[0]) if len(over) else len(values)


def settled(model: "ProbeModel", trials: list["Choice"], untried: list[dict],
            epsilons: Sequence[float], ranked: np.ndarray, dists: np.ndarray, fetch: int,
            target: float, truth_pairs: np.ndarray, hard: np.ndarray) -> bool:
    """True when the settings measured so far decide the choice: one clears the target
    with the margin and every ``untried`` setting costs more than the cheapest such
    one, so measuring them could not change what :func:`choose` picks."""
    good = reaching(trials, target, hard_target(target) if hard.any() else 0.0,
                    int(truth_pairs.sum()), int(truth_pairs[hard].sum()))
    if not good:
        return False
    best = cheapest(good).cost
    n = len(ranked)
    ladder = probe_ladder(len(model.router.sizes))
    for probes, epsilon in [(p, e) for p in ladder for e in (epsilons if p > 1 else epsilons[:1])]:
        _, ppos = model.probes(ranked, dists, probes, fetch, epsilon)
        if any(round(model.cost(values, ppos, n), 3) <= best for values in untried):
            return False
    return True


def probe_ladder(num_clusters: int) -> list[int]:
    """The numProbes values calibration tries for an index of ``num_clusters``."""
    ladder = sorted({p for p in PROBE_LADDER if p <= num_clusters})
    if num_clusters <= PROBE_LADDER[-1] and num_clusters not in ladder:
        ladder.append(num_clusters)
    return ladder


def epsilons_to_try(epsilon: float | None) -> tuple[float, ...]:
    """The user's probeEpsilon, or (None) the ladder calibration chooses from."""
    return EPSILON_LADDER if epsilon is None else (float(epsilon),)


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
    if not len(gaps) or np.isinf(gaps).all():
        return None
    value = float(np.quantile(gaps, HARD_SHARE))
    return value if np.isfinite(value) else None


@dataclass(frozen=True)
class Choice:
    """One setting measured on the sample: its recall, cost and hard-tail recall."""

    num_probes: int
    epsilon: float
    setting: dict
    recall: float
    cost: float
    hard_recall: float = 1.0  # on the sample's hard tail (1.0: none)


@dataclass(frozen=True)
class ProbeModel:
    """Which partitions a query probes, and what searching them costs."""

    router: Router
    rows: np.ndarray  # rows per partition
    dim: int
    probe_cost: Callable[[dict, Any, int], Any]  # the index type's PartitionIndex.probe_cost

    @classmethod
    def of(cls, index) -> "ProbeModel":
        """The probe model of a loaded index (:class:`sparkann.loader.LoadedIndex`)."""
        return cls(index.router, np.asarray(index.manifest.partitions.rows, dtype=np.float64),
                   index.manifest.dim, index.cls.probe_cost)

    def probes(self, ranked: np.ndarray, dists: np.ndarray, num_probes: int, fetch: int,
               epsilon: float) -> tuple[np.ndarray, np.ndarray]:
        """Flat (query position, partition id) pairs searched with these settings."""
        rows, cols = np.nonzero(self.router.probed(ranked, dists, num_probes, fetch, epsilon))
        return self.router.expand(rows, ranked[rows, cols])

    def cost(self, setting: dict, pids: np.ndarray, queries: int) -> float:
        """Mean search work per query of searching partitions ``pids`` with ``setting``."""
        return float(np.sum(self.probe_cost(setting, self.rows[pids], self.dim))) / max(
            queries, 1)


@dataclass(frozen=True)
class Found:
    """Candidates the sample queries got, flat: one entry per (query, partition,
    setting number, candidate)."""

    query: np.ndarray
    pid: np.ndarray
    setting: np.ndarray
    ids: np.ndarray
    dists: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> "Found":
        """From rows (pid, query, setting, ids: list, dists: list)."""
        ids = table.column("ids").combine_chunks()
        lengths = np.diff(ids.offsets.to_numpy()) if len(ids) else np.empty(0, np.int64)
        flat = ids.values.to_numpy(zero_copy_only=False) if len(ids) else np.empty(0)
        dists = table.column("dists").combine_chunks()
        return cls(np.repeat(table.column("query").to_numpy(), lengths),
                   np.repeat(table.column("pid").to_numpy(), lengths),
                   np.repeat(table.column("setting").to_numpy(), lengths), flat,
                   dists.values.to_numpy(zero_copy_only=False) if len(dists) else np.empty(0))

    def take(self, positions: np.ndarray) -> "Found":
        return Found(self.query[positions], self.pid[positions], self.setting[positions],
                     self.ids[positions], self.dists[positions])

    def without(self, own: np.ndarray) -> "Found":
        """Without each query's own id (``own[query]``)."""
        return self.take(np.flatnonzero(self.ids != own[self.query]))

    def by_query_and_distance(self) -> "Found":
        """Sorted by query, then distance (ties keep their order)."""
        return self.take(np.lexsort((self.dists, self.query)))


def first_per_query(query: np.ndarray, n: int, k: int) -> np.ndarray:
    """Positions of the first ``k`` entries of each query in ``query`` (sorted)."""
    starts = np.searchsorted(query, np.arange(n))
    rank = np.arange(len(query)) - starts[query]
    return np.flatnonzero(rank < k)


def measure(model: ProbeModel, found: Found, truth: list[np.ndarray], k: int, fetch: int,
            settings: list[dict], epsilons: Sequence[float], ranked: np.ndarray,
            dists: np.ndarray, hard: np.ndarray) -> list[Choice]:
    """Recall@k and cost of every (numProbes, probeEpsilon, setting) on the sample.
    ``found`` must hold the answers (``fetch`` per partition) of every partition probed
    with the smallest epsilon, and ``ranked`` / ``dists`` each query's ranked centroids,
    deep enough for the largest numProbes; ``hard`` marks the hard tail."""
    n = len(truth)
    found = found.by_query_and_distance()
    truth_rows = np.repeat(np.arange(n), [len(t) for t in truth])
    truth_ids = np.concatenate(truth) if n else np.empty(0)
    trials = []
    ladder = probe_ladder(len(model.router.sizes))
    of_setting = [np.flatnonzero(found.setting == number) for number in range(len(settings))]
    for probes, epsilon in [(p, e) for p in ladder for e in (epsilons if p > 1 else epsilons[:1])]:
        qpos, ppos = model.probes(ranked, dists, probes, fetch, epsilon)
        probed = np.zeros((n, len(model.rows)), dtype=bool)
        probed[qpos, ppos] = True
        for number, values in enumerate(settings):
            mine = of_setting[number]
            pick = mine[probed[found.query[mine], found.pid[mine]]]
            top = pick[first_per_query(found.query[pick], n, k)]
            hits, wanted = hit_counts(n, found.query[top], found.ids[top], truth_rows,
                                      truth_ids)
            trials.append(Choice(probes, epsilon, dict(values), round(share(hits, wanted), 5),
                                 round(model.cost(values, ppos, n), 3),
                                 round(share(hits[hard], wanted[hard]), 5)))
    return trials


def _margin(goal: float, count: int) -> float:
    return MARGIN_SIGMAS * float(np.sqrt(goal * (1 - goal) / max(count, 1)))


def reaching(trials: Sequence, target: float, hard: float = 0.0, pairs: int = 0,
             hard_pairs: int = 0) -> list:
    """The trials whose recall clears ``target`` (and hard-tail recall ``hard``), by a
    margin for the sample's standard error when ``pairs`` (and ``hard_pairs``), the
    (query, true neighbour) pairs measured, are given."""
    return [t for t in trials
            if t.recall >= target + (_margin(target, pairs) if pairs else 0.0)
            and getattr(t, "hard_recall", 1.0) >= hard + (
                _margin(hard, hard_pairs) if hard_pairs else 0.0)]


def cheapest(trials: Sequence) -> Any:
    """The trial of least cost (ties: fewer probes, then the smaller epsilon), or None."""
    return min(trials, key=lambda t: (t.cost, t.num_probes, t.epsilon), default=None)


def choose(trials: list[Choice], target: float, pairs: int, hard: float,
           hard_pairs: int) -> Choice:
    """The cheapest trial reaching the target (and the hard tail its own) with the
    margin, else without it, else the one of best recall."""
    good = reaching(trials, target, hard, pairs, hard_pairs) or reaching(trials, target, hard)
    if good:
        return cheapest(good)
    return max(trials, key=lambda t: (min(t.recall - target, t.hard_recall - hard), -t.cost))


@dataclass(frozen=True)
class SearchDefaults:
    """The search settings an index version uses when the user sets none, and the
    calibration report that chose them (empty: fixed defaults, not calibrated)."""

    num_probes: int
    probe_epsilon: float
    knobs: dict  # the index type's own settings, e.g. {"efSearch": 64}
    report: dict = field(default_factory=dict)

    def params(self) -> dict:
        """Param name -> value, as a model's defaults take them."""
        return {"numProbes": self.num_probes, "probeEpsilon": self.probe_epsilon, **self.knobs}


def search_defaults(trials: list[Choice], target: float, k: int, dists: np.ndarray,
                    hard: np.ndarray, truth_pairs: np.ndarray, source: str, seconds: float,
                    tail: bool) -> SearchDefaults:
    """The chosen setting and its report: every trial, and the sample's centroid-gap
    profile that searches compare their queries with (query drift). ``tail``: the
    sample is of indexed rows, whose hard tail (``hard``) has its own target."""
    best = choose(trials, target, int(truth_pairs.sum()),
                  hard_target(target) if hard.any() else 0.0, int(truth_pairs[hard].sum()))
    return SearchDefaults(best.num_probes, best.epsilon, dict(best.setting),
                          report_of(best, trials, target, k, dists, source, seconds, tail))


def report_of(best: Choice, trials: list[Choice], target: float, k: int, dists: np.ndarray,
              source: str, seconds: float, tail: bool) -> dict:
    """The calibration report: the chosen settings, every trial, and the sample's
    centroid-gap profile."""
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
