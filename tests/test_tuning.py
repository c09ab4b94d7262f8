"""Choosing search defaults (sparkann.tuning) and the exact-search kernels it counts
recall with (sparkann.exact). No Spark: real routers, real exact search, numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sparkann import datasets, exact, tuning
from sparkann.index.hnsw import HNSWIndex
from sparkann.metrics import get_metric
from sparkann.partitioning.router import CentroidRanker, Router, ShardPlan, rank_brute_force

K = 5


# ------------------------------------------------------------------ recall


def test_hit_counts_counts_each_true_neighbour_once_for_any_id_type():
    hits, wanted = exact.hit_counts(3, [0, 0, 0, 1, 2], np.array(["a", "b", "a", "z", "c"]),
                                    [0, 0, 1, 1, 2], np.array(["a", "c", "y", "z", "c"]))
    np.testing.assert_array_equal(hits, [1, 1, 1])  # "a" found twice counts once
    np.testing.assert_array_equal(wanted, [2, 2, 1])
    big = np.array([2**62 + 1, 2**62 + 2], dtype=np.int64)  # not exact as float64
    hits, _ = exact.hit_counts(1, [0], big[:1], [0], big[1:])
    assert hits.tolist() == [0]


def test_hit_counts_refuses_query_positions_outside_the_sample():
    with pytest.raises(ValueError, match="outside 0..1"):
        exact.hit_counts(2, [2], np.array([1]), [0], np.array([1]))
    with pytest.raises(ValueError, match="both its query and its id"):
        exact.hit_counts(2, [0, 1], np.array([1]), [0], np.array([1]))


def test_recall_at_k_skips_missing_labels_and_cuts_at_k():
    found = np.array([[3, 1, -1], [7, 8, 9]])
    truth = np.array([[1, 2, 3], [9, 8, 4]])
    assert exact.recall_at_k(found, truth, 3) == pytest.approx(4 / 6)
    assert exact.recall_at_k(found, truth, 2) == pytest.approx(2 / 4)  # 3 and 1; 8
    assert exact.recall_at_k([["a", "b"], ["c"]], [["b", "x"], ["c", "d"]], 2) == 0.5
    with pytest.raises(ValueError, match="found has 1 queries, truth 2"):
        exact.recall_at_k(found[:1], truth, 3)


def test_knn_takes_a_metric_object_or_its_name():
    base = datasets.clustered(300, 8, seed=3)
    queries = datasets.clustered(20, 8, seed=3, sample_seed=4)
    by_name = exact.knn(base, queries, K, "ip")
    by_object = exact.knn(base, queries, K, get_metric("ip"))
    np.testing.assert_array_equal(by_name[0], by_object[0])
    brute = np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(by_name[0], brute)


# ------------------------------------------------------------------ choice


def choice(probes, recall, cost, hard=1.0, epsilon=0.0):
    return tuning.Choice(probes, epsilon, {"efSearch": 16}, recall, cost, hard)


def test_choose_wants_a_margin_for_the_sample_error_then_takes_the_cheapest():
    close, clear = choice(1, 0.951, 10.0), choice(2, 0.99, 20.0)
    assert tuning.choose([close, clear], 0.95, 10_000, 0.0, 0) is clear  # 0.951: within noise
    assert tuning.choose([close, choice(2, 0.94, 5.0)], 0.95, 10_000, 0.0, 0) is close
    assert tuning.choose([choice(3, 0.99, 30.0), clear], 0.95, 10_000, 0.0, 0) is clear
    same = [choice(2, 0.99, 20.0, epsilon=0.1), choice(3, 0.99, 20.0), clear]
    assert tuning.choose(same, 0.95, 10_000, 0.0, 0) is clear  # ties: fewer probes, epsilon


def test_choose_holds_the_hard_tail_to_its_own_target():
    easy_only = choice(1, 0.99, 10.0, hard=0.90)
    both = choice(2, 0.99, 20.0, hard=0.99)
    hard = tuning.hard_target(0.95)
    assert hard == pytest.approx(0.975)
    assert tuning.choose([easy_only, both], 0.95, 10_000, hard, 2_500) is both


def test_choose_falls_back_to_the_best_recall_when_nothing_reaches_the_target():
    low, better = choice(1, 0.80, 1.0), choice(2, 0.90, 2.0, hard=0.85)
    assert tuning.choose([low, better], 0.95, 1000, 0.0, 0) is better
    assert tuning.cheapest(tuning.reaching([low, better], 0.95)) is None


def test_hard_tail_is_the_share_of_queries_nearest_a_border():
    rng = np.random.default_rng(0)
    nearest = rng.uniform(1.0, 2.0, 400)
    dists = np.stack([nearest, nearest * rng.uniform(1.0, 3.0, 400)], axis=1)
    hard = tuning.hard_tail(dists)
    assert abs(hard.mean() - tuning.HARD_SHARE) < 0.01
    gaps = (dists[:, 1] - dists[:, 0]) / dists[:, 0]
    assert gaps[hard].max() <= gaps[~hard].min()
    assert not tuning.hard_tail(dists[:, :1]).any()  # one cluster: no border


# ------------------------------------------------------------------ measure


@pytest.fixture(scope="module")
def routed():
    """Four clusters of real data, each its own partition searched exactly."""
    base = datasets.clustered(800, 8, num_clusters=4, seed=11)
    queries = datasets.clustered(60, 8, num_clusters=4, seed=11, sample_seed=12)
    metric = get_metric("l2")
    centroids = np.stack([base[i::4].mean(axis=0) for i in range(4)])
    home = rank_brute_force(base, centroids, "l2", 1)[0][:, 0]
    sizes = np.bincount(home, minlength=4)
    router = Router(CentroidRanker(centroids, metric), sizes, ShardPlan(np.ones(4, np.int64)))
    model = tuning.ProbeModel(router, sizes.astype(np.float64), 8, HNSWIndex.probe_cost)
    ranked, dists = router.ranked_clusters(queries, 4, K)
    truth = list(exact.knn(base, queries, K)[0])
    return base, queries, home, model, ranked, dists, truth


def found_in_every_partition(base, queries, home, short: int, width: int = K) -> pa.Table:
    """Each query's exact top ``width`` in every partition: setting 0 misses its ``short``
    best answers, setting 1 misses none."""
    rows = []
    for pid in range(4):
        members = np.flatnonzero(home == pid)
        labels, dists = exact.knn(base[members], queries, width)
        for number, skip in enumerate((short, 0)):
            for q in range(len(queries)):
                rows.append((pid, q, number, members[labels[q, skip:]].tolist(),
                             dists[q, skip:].tolist()))
    columns = list(zip(*rows))
    return pa.table({"pid": pa.array(columns[0], pa.int32()),
                              "query": pa.array(columns[1], pa.int32()),
                              "setting": pa.array(columns[2], pa.int32()),
                              "ids": pa.array(columns[3], pa.list_(pa.int64())),
                              "dists": pa.array(columns[4], pa.list_(pa.float32()))})


def test_measure_gives_every_setting_its_recall_and_cost(routed):
    base, queries, home, model, ranked, dists, truth = routed
    table = found_in_every_partition(base, queries, home, short=1)
    settings = [{"efSearch": 16}, {"efSearch": 32}]
    hard = tuning.hard_tail(dists)
    trials = tuning.measure(model, tuning.Found.from_table(table), truth, K, K, settings,
                            (0.0,), ranked, dists, hard)
    assert [(t.num_probes, t.setting["efSearch"]) for t in trials] == [
        (p, e) for p in (1, 2, 3, 4) for e in (16, 32)]
    full = {(t.num_probes, t.setting["efSearch"]): t for t in trials}
    assert full[(4, 32)].recall == 1.0 and full[(4, 32)].hard_recall == 1.0
    assert full[(4, 16)].recall < 1.0  # each partition's best answer missing
    recalls = [full[(p, 32)].recall for p in (1, 2, 3, 4)]
    assert recalls == sorted(recalls) and recalls[0] < 1.0
    assert full[(1, 32)].hard_recall < full[(1, 32)].recall  # border queries miss more
    costs = [full[(p, 16)].cost for p in (1, 2, 3, 4)]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    assert full[(2, 32)].cost == pytest.approx(2 * full[(2, 16)].cost, rel=1e-3)


def test_measure_excludes_each_querys_own_id(routed):
    base, _, home, model, _, _, _ = routed
    own = np.arange(0, 800, 20)  # indexed rows as queries: each finds itself first
    queries = base[own]
    ranked, dists = model.router.ranked_clusters(queries, 4, K + 1)
    truth = [labels[labels != q][:K] for q, labels in zip(own, exact.knn(base, queries,
                                                                          K + 1)[0])]
    table = found_in_every_partition(base, queries, home, short=0, width=K + 1)
    found = tuning.Found.from_table(table)
    hard = np.zeros(len(own), dtype=bool)
    kept = tuning.measure(model, found.without(own), truth, K, K + 1, [{"efSearch": 16}] * 2,
                          (0.0,), ranked, dists, hard)
    assert max(t.recall for t in kept) == 1.0
    mixed = tuning.measure(model, found, truth, K, K + 1, [{"efSearch": 16}] * 2, (0.0,),
                           ranked, dists, hard)
    assert max(t.recall for t in mixed) < 1.0  # the query's own row takes a place


def test_search_defaults_carry_the_chosen_setting_and_the_report(routed):
    base, queries, home, model, ranked, dists, truth = routed
    table = found_in_every_partition(base, queries, home, short=1)
    hard = tuning.hard_tail(dists)
    trials = tuning.measure(model, tuning.Found.from_table(table), truth, K, K,
                            [{"efSearch": 16}, {"efSearch": 32}], (0.0,), ranked, dists, hard)
    wanted = np.full(len(truth), K)
    defaults = tuning.search_defaults(trials, 0.9, K, dists, hard, wanted, "indexed rows",
                                      1.5, True)
    report = defaults.report
    assert defaults.params() == {"numProbes": report["numProbes"], "probeEpsilon": 0.0,
                                 "efSearch": report["efSearch"]}
    assert report["reached"] and report["recall"] >= 0.9 and report["hardRecall"] >= 0.95
    assert {"targetRecall", "hardRecall", "hardTarget", "hardGap", "farDistance",
            "hardShare", "sampleQueries", "sampleSource", "trials"} <= set(report)
    assert len(report["trials"]) == len(trials)
    chosen = [t for t in trials if (t.num_probes, t.setting) == (defaults.num_probes,
                                                                  defaults.knobs)]
    assert all(t.cost >= chosen[0].cost for t in trials
               if t.recall >= 0.9 and t.hard_recall >= 0.95)
    outside = tuning.search_defaults(trials, 0.9, K, dists, np.zeros(len(truth), bool),
                                     wanted, "queries", 1.5, False)
    assert "hardRecall" not in outside.report and outside.report["hardGap"] is not None


# ------------------------------------------------------------ first round


def test_first_round_takes_the_settings_within_its_cost_of_the_cheapest():
    assert tuning.first_round([1.0, 2.0, 3.9, 4.0, 4.1, 9.0]) == 4  # up to 4x the cheapest
    assert tuning.first_round([2.0, 8.0, 8.5]) == 2
    assert tuning.first_round([1.0, 1.5]) == 2  # the whole ladder is cheap: all of it
    assert tuning.first_round([5.0]) == 1
    assert tuning.first_round([]) == 0
