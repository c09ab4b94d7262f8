"""Living indexes: add, delete, compact, rebalance, and the kNN self-join."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import neighbor_ids, run_job, vectors_frame

from sparkann import ANNIndex, ANNIndexModel, datasets, exact
from sparkann.index import index_type
from sparkann.selfjoin import knn_graph


@pytest.fixture(scope="module")
def data():
    base = datasets.clustered(6000, 24, seed=21)
    queries = datasets.clustered(150, 24, seed=21, sample_seed=22)
    return base, queries


def _recall(model, base_rows, base_ids, queries_df, queries, k=10):
    """recall@k at the same explicit settings for every model compared."""
    model = model.copy().setNumProbes(2).setEfSearch(64).setK(k)
    found = neighbor_ids(model.transform(queries_df).collect(), key="qid")
    truth = base_ids[exact.knn(base_rows, queries, k)[0]]
    return exact.recall_at_k(found, truth, k)


@pytest.mark.parametrize("kind", ["hnsw", "pq"])
def test_add_matches_a_fresh_build_and_keeps_the_old_version(spark, data, tmp_path, kind):
    base, queries = data
    qdf = vectors_frame(spark, queries, id_name="qid")
    ids = np.arange(len(base))
    params = dict(numPartitions=6, seed=5, indexType=kind, pqSubvectors=8, rerankK=100,
                  targetRecall=0)
    path = str(tmp_path / "index")
    first = ANNIndex(indexPath=path, **params).fit(vectors_frame(spark, base[:5000], ids[:5000]))
    grown = first.add(vectors_frame(spark, base[5000:], ids[5000:]))
    assert grown.summary()["numVectors"] == 6000 and grown.manifest.version == 2
    fresh = ANNIndex(**params).fit(vectors_frame(spark, base, ids))
    same = fresh.searchSettings()  # both searched alike: only the indexes differ
    tuned = ("numProbes", "probeEpsilon", *index_type(kind).search_params)
    grown_recall = _recall(grown.copy({grown.getParam(name): same[name] for name in tuned}),
                           base, ids, qdf, queries)
    assert abs(grown_recall - _recall(fresh, base, ids, qdf, queries)) <= 0.01
    old = ANNIndexModel.load(path, version=1)
    assert old.summary()["numVectors"] == 5000
    assert neighbor_ids(old.transform(qdf).collect(), "qid").max() < 5000


def test_add_refuses_ids_already_indexed(spark, data):
    base, _ = data
    model = ANNIndex(numPartitions=2, targetRecall=0).fit(vectors_frame(spark, base[:500]))
    with pytest.raises(ValueError, match=r"ids already in the index, for example id="):
        model.add(vectors_frame(spark, base[490:510], np.arange(490, 510)))


def test_delete_hides_ids_and_compact_rebuilds(spark, data):
    base, queries = data
    qdf = vectors_frame(spark, queries, id_name="qid")
    ids = np.arange(len(base))
    model = ANNIndex(numPartitions=4, seed=5, targetRecall=0).fit(vectors_frame(spark, base))
    gone = np.unique(neighbor_ids(model.transform(qdf).collect(), "qid")[:, :3])
    deleted = model.delete(gone.tolist())
    assert deleted.summary()["numVectors"] == len(base) - len(gone)
    found = neighbor_ids(deleted.transform(qdf).collect(), "qid")
    assert not set(found.ravel()) & set(gone.tolist())
    keep = np.setdiff1d(ids, gone)
    fresh = ANNIndex(numPartitions=4, seed=5, targetRecall=0).fit(
        vectors_frame(spark, base[keep], keep))
    assert abs(_recall(deleted, base[keep], keep, qdf, queries)
               - _recall(fresh, base[keep], keep, qdf, queries)) <= 0.01
    compacted = deleted.compact(minDeletedShare=0.0)
    assert compacted.summary()["deletedRows"] == 0
    assert compacted.summary()["numVectors"] == len(keep)
    again = neighbor_ids(compacted.transform(qdf).collect(), "qid")
    assert not set(again.ravel()) & set(gone.tolist())
    assert _recall(compacted, base[keep], keep, qdf, queries) >= 0.95


def test_drift_and_rebalance(spark, data):
    base, queries = data
    model = ANNIndex(numPartitions=4, seed=5, targetRecall=0).fit(
        vectors_frame(spark, base[:3000]))
    assert model.summary()["drift"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    hot = (base[0] + 0.05 * rng.standard_normal((6000, base.shape[1]))).astype(np.float32)
    skewed = model.add(vectors_frame(spark, hot, np.arange(3000, 9000)))
    assert skewed.summary()["drift"] > 1.2
    assert skewed.rebalance(maxDrift=10.0) is skewed  # below the threshold: nothing to do
    balanced = skewed.rebalance(maxDrift=1.2)
    assert balanced.summary()["drift"] == pytest.approx(1.0)
    assert balanced.summary()["numVectors"] == 9000
    rows = np.vstack([base[:3000], hot])
    qdf = vectors_frame(spark, queries, id_name="qid")
    assert _recall(balanced, rows, np.arange(9000), qdf, queries) >= 0.95


def test_self_join_agrees_with_exact_search(spark, data):
    base = data[0][:3000]
    items = vectors_frame(spark, base)
    model = ANNIndex(numPartitions=4, k=5, searchStrategy="partition").fit(items)
    edges = knn_graph(model, items.repartition(5)).toPandas()
    assert len(edges) == 3000 * 5 and (edges.id != edges.neighbor_id).all()
    assert sorted(edges["rank"].unique()) == [1, 2, 3, 4, 5]
    truth = exact.knn(base, base, 6)[0][:, 1:]
    found = edges.sort_values(["id", "rank"]).neighbor_id.to_numpy().reshape(3000, 5)
    assert exact.recall_at_k(found, truth, 5) >= 0.95


def test_exclude_self_needs_the_id_column(spark, data):
    model = ANNIndex(numPartitions=2, excludeSelf=True, targetRecall=0).fit(
        vectors_frame(spark, data[0][:300]))
    with pytest.raises(ValueError, match=r"excludeSelf needs the id column 'id'"):
        model.transform(vectors_frame(spark, data[1], id_name="qid"))


def test_knn_join_job(spark, data, tmp_path, capsys, monkeypatch):
    source = str(tmp_path / "items.parquet")
    vectors_frame(spark, data[0][:2000]).write.parquet(source)
    out = str(tmp_path / "edges.parquet")
    code, _, err = run_job(capsys, monkeypatch, "knn_join.py", "--input", source, "--output", out,
                           "--k", "4", "--log-level", "ERROR")
    assert code == 0, err[-2000:]
    edges = spark.read.parquet(out)
    assert edges.columns == ["id", "neighbor_id", "distance", "rank"]
    assert edges.count() == 2000 * 4


def test_rebalance_publishes_a_calibration_of_its_own_centroids(spark, data, tmp_path):
    base, queries = data
    qdf = vectors_frame(spark, queries, id_name="qid")
    first = ANNIndex(indexPath=str(tmp_path / "index"), numPartitions=6, seed=5).fit(
        vectors_frame(spark, base[:2000]))
    grown = first.add(vectors_frame(spark, base[2000:], np.arange(2000, len(base))))
    rebalanced = grown.rebalance(maxDrift=0.0)
    old, new = grown.summary()["calibration"], rebalanced.summary()["calibration"]
    assert new["sampleSource"] == "held-out indexed rows" and new["reached"], new
    assert new != old and new["sampleQueries"] > old["sampleQueries"]  # measured anew
    settings = rebalanced.searchSettings()
    assert {n: settings[n] for n in ("numProbes", "probeEpsilon", "efSearch")} == \
        {n: new[n] for n in ("numProbes", "probeEpsilon", "efSearch")}
    found = neighbor_ids(rebalanced.transform(qdf).collect(), key="qid")
    assert exact.recall_at_k(found, exact.knn(base, queries, 10)[0], 10) >= 0.95


def test_quantized_vectors_are_never_taken_as_the_truth(spark, data, tmp_path):
    base, _ = data
    model = ANNIndex(indexType="hnsw_sq8", numPartitions=4, seed=5).fit(
        vectors_frame(spark, base[:3000]))
    assert model.summary()["calibration"]["reached"]  # at fit: the exact input rows
    with pytest.raises(ValueError, match="indexType='hnsw_sq8' stores only quantized"):
        model.calibrate(0.9)
    rebalanced = model.rebalance(maxDrift=0.0)
    assert rebalanced.summary()["calibration"] == {}
    assert rebalanced.searchSettings()["numProbes"] == 3  # the fixed default for 4 clusters


def test_add_locates_ids_where_it_wrote_them_even_if_the_input_changes(spark, data):
    """An input that gives other vectors each time it is read (a nondeterministic UDF)
    still gets id locations that name the partition file holding each id."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    base, _ = data
    model = ANNIndex(numPartitions=6, seed=5, targetRecall=0.0).fit(
        vectors_frame(spark, base[:3000]))
    pool = base[::50].astype(np.float32)

    @F.udf(ArrayType(FloatType()))
    def any_row(_):
        return pool[np.random.default_rng().integers(len(pool))].tolist()

    added = spark.range(3000, 3600).select(
        F.col("id"), any_row.asNondeterministic()(F.col("id")).alias("vector"))
    grown = model.add(added)
    root, manifest = grown.manifest.root, grown.manifest
    stored = spark.read.parquet(*[os.path.join(root, f) for f in manifest.partitions.files if f])
    held = {(int(r.pid), int(i)) for r in stored.select("pid", "ids").collect() for i in r.ids}
    files = [os.path.join(root, f) for fs in manifest.locations.files for f in fs]
    located = {(int(r.partition_id), int(r.id))
               for r in spark.read.parquet(*files).select("partition_id", "id").collect()}
    assert len(held) == 3600 and located == held
