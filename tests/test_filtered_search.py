"""Filtered search: ``setFilter`` (a Spark SQL predicate over the item columns) and
``setMatchCols`` (neighbours from the query's own group), in both search strategies.

Every answer is checked against exact filtered search computed here with numpy: no
returned item fails the filter, a query with fewer than ``k`` passing items gets all of
them, and recall@k is at least 0.95 at every share of passing items. The indexes are
small, so ``spark.sparkann.filterScanRows`` is lowered to make the larger shares take
the routed path (more probes, a filtered search per partition) rather than a scan.
"""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkann import ANNIndex, ANNIndexModel, datasets, exact
from sparkann.metrics import get_metric
from sparkann.search import filtered

ROWS, DIM, K, NQ = 6000, 16, 10, 100
SHARES = {0.001: "num < 0.001", 0.01: "num < 0.01", 0.1: "num < 0.1", 0.5: "num < 0.5"}
SCAN_ROWS = 40  # past this many passing rows, a filtered search is routed
SCHEMA = "id long, vector array<float>, num double, tag int, label string"


def items(seed: int = 3):
    """The item columns: ``num`` uniform, ``tag`` skewed (Zipf), ``label`` from ``tag``."""
    rng = np.random.default_rng(seed)
    num = rng.random(ROWS)
    tag = np.minimum(rng.zipf(1.6, ROWS), 40).astype(np.int64)
    return num, tag


@pytest.fixture(scope="module")
def data():
    vectors = datasets.clustered(ROWS, DIM, seed=21)
    queries = datasets.clustered(NQ, DIM, seed=21, sample_seed=99)  # another draw
    return vectors, queries, *items()


@pytest.fixture(scope="module", autouse=True)
def routed_filters(spark):
    spark.conf.set("spark.sparkann.filterScanRows", str(SCAN_ROWS))
    yield
    spark.conf.unset("spark.sparkann.filterScanRows")


def item_frame(spark, data):
    vectors, _, num, tag = data
    rows = [(i, vectors[i].tolist(), float(num[i]), int(tag[i]), f"t{tag[i]}")
            for i in range(ROWS)]
    return spark.createDataFrame(rows, SCHEMA)


def query_frame(spark, data, tags=None):
    queries = data[1]
    tags = tags if tags is not None else [int(t) for t in data[3][:NQ]]
    return spark.createDataFrame(
        [(i, queries[i].tolist(), tags[i]) for i in range(NQ)],
        "qid long, vector array<float>, qtag int")


MODELS: dict = {}


def fitted(spark, data, metric, tmp_path_factory):
    if metric not in MODELS:
        path = tmp_path_factory.mktemp(f"filtered-{metric}") / "index"
        MODELS[metric] = ANNIndex(metric=metric, numPartitions=10, k=K, seed=5,
                                  itemCols=["num", "tag", "label"],
                                  indexPath=str(path)).fit(item_frame(spark, data))
    return MODELS[metric].copy()


def exact_filtered(data, metric: str, passing: np.ndarray, tags=None) -> list[list[int]]:
    """Exact k nearest passing ids of each query (among rows of the query's tag too)."""
    vectors, queries, _, tag = data
    measure = get_metric(metric)
    base, prepared = measure.prepare(vectors), measure.prepare(queries)
    truth = []
    for q in range(NQ):
        rows = np.flatnonzero(passing & (tag == tags[q] if tags is not None else True))
        order, _ = exact.knn(base[rows], prepared[q:q + 1], K, measure)
        truth.append(rows[order[0]].tolist())
    return truth


def searched(model, spark, data, tags=None) -> list[list[int]]:
    rows = model.transform(query_frame(spark, data, tags)).collect()
    by_query = {r.qid: [n.id for n in r.neighbors] for r in rows}
    return [by_query[q] for q in range(NQ)]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    wanted = sum(len(t) for t in truth)
    return sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / max(wanted, 1)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_filtered_answers_against_exact_filtered_search(spark, data, metric, tmp_path_factory):
    model = fitted(spark, data, metric, tmp_path_factory)
    num = data[2]
    for strategy in ("local", "partition"):
        model.setSearchStrategy(strategy)
        for share, text in SHARES.items():
            passing = num < share
            truth = exact_filtered(data, metric, passing)
            found = searched(model.setFilter(text), spark, data)
            assert all(passing[i] for ids in found for i in ids), (strategy, text)
            assert [len(f) for f in found] == [len(t) for t in truth], (strategy, text)
            assert recall(found, truth) >= 0.95, (metric, strategy, text, recall(found, truth))


def test_fewer_passing_items_than_k_gives_all_of_them(spark, data, tmp_path_factory):
    model = fitted(spark, data, "l2", tmp_path_factory)
    num = data[2]
    few = np.flatnonzero(num < 0.0006)
    assert 0 < len(few) < K
    for strategy in ("local", "partition"):
        found = searched(model.setSearchStrategy(strategy).setFilter("num < 0.0006"), spark,
                         data)
        assert all(sorted(ids) == few.tolist() for ids in found)
        assert searched(model.setFilter("num > 2"), spark, data) == [[]] * NQ


def test_group_matching_answers_each_query_from_its_own_tag(spark, data, tmp_path_factory):
    model = fitted(spark, data, "cosine", tmp_path_factory).setMatchCols({"tag": "qtag"})
    tag = data[3]
    tags = [int(t) for t in tag[:NQ]]
    tags[0], tags[1] = 1000, None  # a tag no item has, and no tag: no neighbours
    for strategy in ("local", "partition"):
        model.setSearchStrategy(strategy)
        found = searched(model, spark, data, tags)
        assert found[0] == [] and found[1] == []
        assert all(tag[i] == tags[q] for q, ids in enumerate(found) for i in ids)
        truth = exact_filtered(data, "cosine", np.ones(ROWS, bool),
                               np.array([-1, -1, *tags[2:]]))
        assert recall(found, truth) >= 0.95, strategy
        # with a filter as well: both must hold
        found = searched(model.setFilter("num >= 0.5"), spark, data, tags)
        assert all(tag[i] == tags[q] and data[2][i] >= 0.5
                   for q, ids in enumerate(found) for i in ids)
        model.setFilter(None)


def test_inner_and_left_joins_with_a_filter(spark, data, tmp_path_factory):
    model = fitted(spark, data, "l2", tmp_path_factory).setMatchCols({"tag": "qtag"})
    model.setFilter("label <> 't2'")
    tags = [int(t) for t in data[3][:NQ]]
    queries = query_frame(spark, data, tags)
    no_match = {q for q in range(NQ) if tags[q] == 2}
    assert no_match
    inner = model.nearestJoin(queries).collect()
    assert {r.qid for r in inner} == set(range(NQ)) - no_match
    assert all(r.label == f"t{r.qtag}" and r.label != "t2" for r in inner)
    left = model.nearestJoin(queries, how="left").collect()
    empty = [r for r in left if r.id is None]
    assert {r.qid for r in empty} == no_match and all(r.rank is None for r in empty)


def test_a_filter_narrows_allowed_ids(spark, data, tmp_path_factory):
    model = fitted(spark, data, "ip", tmp_path_factory).setFilter("tag = 1")
    tag = data[3]
    allowed = list(range(0, ROWS, 3))
    frame = query_frame(spark, data).withColumn("allowed", F.lit(allowed).cast("array<long>"))
    model.setAllowedIdsCol("allowed")
    passing = np.zeros(ROWS, bool)
    passing[allowed] = True
    truth = exact_filtered(data, "ip", passing & (tag == 1))
    for strategy in ("local", "partition"):
        rows = model.setSearchStrategy(strategy).transform(frame).collect()
        found = {r.qid: [n.id for n in r.neighbors] for r in rows}
        assert all(tag[i] == 1 and i % 3 == 0 for ids in found.values() for i in ids)
        assert [found[q] for q in range(NQ)] == truth


def test_a_saved_model_keeps_its_filter(spark, data, tmp_path_factory, tmp_path):
    model = fitted(spark, data, "l2", tmp_path_factory)
    model.setFilter("num < 0.1 AND label IN ('t1', 't3')").setMatchCols({"tag": "qtag"})
    before = searched(model, spark, data)
    model.write().save(str(tmp_path / "saved"))
    loaded = ANNIndexModel.load(str(tmp_path / "saved"))
    assert loaded.getFilter() == model.getFilter()
    assert loaded.getMatchCols() == {"tag": "qtag"}
    assert searched(loaded, spark, data) == before
    assert searched(loaded.setFilter(None).setMatchCols(None), spark, data) != before


@pytest.mark.parametrize("change, message", [
    (lambda m: m.setFilter("price < 3"), "price"),
    (lambda m: m.setFilter("label = 3"), "label"),
    (lambda m: m.setFilter("num <"), "filter"),
    (lambda m: m.setFilter("upper(label) = 'T1'"), "not supported"),
    (lambda m: m.setMatchCols({"num": "qtag"}), "match on integer"),
    (lambda m: m.setMatchCols({"tag": "nope"}), "nope"),
    (lambda m: m.setMatchCols({"label": "qtag"}), "cast one"),
    (lambda m: m.setMatchCols({"color": "qtag"}), "not an item column"),
])
def test_bad_filters_are_refused_naming_the_problem(spark, data, tmp_path_factory, change,
                                                    message):
    model = change(fitted(spark, data, "l2", tmp_path_factory))
    with pytest.raises(ValueError, match=message):
        model.transform(query_frame(spark, data))


def test_a_filter_needs_item_columns(spark, data, tmp_path):
    vectors = data[0][:500]
    frame = spark.createDataFrame([(i, v.tolist()) for i, v in enumerate(vectors)],
                                  "id long, vector array<float>")
    model = ANNIndex(numPartitions=2, targetRecall=0, indexPath=str(tmp_path / "i")).fit(frame)
    with pytest.raises(ValueError, match="itemCols"):
        model.setFilter("num < 1").transform(frame)


def test_each_index_version_counts_a_filter_once(spark, data, tmp_path):
    # The counts of passing rows are kept per index version and filter: a second search
    # reuses them, and a version with added rows counts its own.
    vectors, queries = data[0][:800], data[1]
    frame = spark.createDataFrame(
        [(i, v.tolist(), 0.5, 1, "t1") for i, v in enumerate(vectors)], SCHEMA)
    model = ANNIndex(numPartitions=4, k=K, targetRecall=0, itemCols=["num", "tag", "label"],
                     indexPath=str(tmp_path / "i")).fit(frame).setFilter("num > 4")
    assert searched(model, spark, data) == [[]] * NQ  # no row passes
    key = next(k for k in filtered.COUNTED if k[0] == model.manifest.root and k[3] == "num > 4")
    counts = filtered.COUNTED[key]
    assert searched(model, spark, data) == [[]] * NQ and filtered.COUNTED[key] is counts
    new = [(10_000 + i, (queries[i] + 1e-3).tolist(), 5.0, 1, "t1") for i in range(NQ)]
    added = model.add(spark.createDataFrame(new, SCHEMA)).setFilter("num > 4")
    assert added.manifest.version == model.manifest.version + 1
    found = searched(added, spark, data)
    assert [ids[0] for ids in found] == [10_000 + q for q in range(NQ)]
    assert all(len(ids) == K and min(ids) >= 10_000 for ids in found)
