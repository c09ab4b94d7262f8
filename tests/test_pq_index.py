"""indexType="pq": compressed partitions, ADC search, re-ranking; subset search for both kinds."""

from __future__ import annotations

import glob
import os

import faiss
import numpy as np
import pyarrow.parquet as papq
import pytest
from conftest import neighbor_ids, vectors_frame
from pyspark.sql import functions as F

from sparkann import ANNIndex, ANNIndexModel, datasets, exact
from sparkann.index import pq


@pytest.fixture(scope="module")
def data(spark):
    base = datasets.clustered(4000, 32, seed=11)
    queries = datasets.clustered(100, 32, seed=11, sample_seed=12)
    return base, queries, vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")


def _recall(model, data, metric="l2", k=10):
    base, queries, _, qdf = data
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    found = neighbor_ids(model.transform(qdf).collect(), key="qid")
    return exact.recall_at_k(found, exact.knn(base, queries, k, metric)[0], k)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_pq_with_rerank_reaches_exact_recall(data, metric):
    model = ANNIndex(indexType="pq", metric=metric, numPartitions=4, pqSubvectors=8,
                     rerankK=100).fit(data[2])
    assert _recall(model, data, metric) >= 0.95
    without = model.copy().setRerankK(0)
    assert 0.3 < _recall(without, data, metric) < _recall(model, data, metric)


def test_pq_save_load_round_trip(data, tmp_path):
    model = ANNIndex(indexType="pq", numPartitions=3, pqSubvectors=8, pqBits=4, k=5,
                     targetRecall=0).fit(data[2])
    before = model.transform(data[3]).orderBy("qid").collect()
    model.save(str(tmp_path / "pq"))
    loaded = ANNIndexModel.load(str(tmp_path / "pq"))
    assert loaded.getOrDefault("indexType") == "pq" and loaded.getOrDefault("pqBits") == 4
    assert loaded.transform(data[3]).orderBy("qid").collect() == before


def test_rmse_falls_as_subvectors_and_bits_grow(data):
    rmse = {}
    for m, bits in [(4, 8), (8, 8), (16, 8), (8, 4)]:
        model = ANNIndex(indexType="pq", numPartitions=2, pqSubvectors=m, pqBits=bits,
                         targetRecall=0).fit(data[2])
        rmse[m, bits] = model.summary()["pqReconstructionRMSE"]
    assert rmse[4, 8] > rmse[8, 8] > rmse[16, 8]
    assert rmse[8, 4] > rmse[8, 8]


def test_partition_codebooks_beat_one_global_pq(data):
    base = data[0]
    codewords = pq.train_codebook(base, 8, 8, seed=0)  # one PQ trained in a single process
    quantizer = faiss.ProductQuantizer(base.shape[1], 8, 8)
    faiss.copy_array_to_vector(codewords.ravel(), quantizer.centroids)
    decoded = quantizer.decode(quantizer.compute_codes(base))
    single_rmse = float(np.sqrt(((base - decoded) ** 2).sum(axis=1).mean()))
    per_partition = ANNIndex(indexType="pq", numPartitions=4, pqSubvectors=8,
                             targetRecall=0).fit(data[2])
    global_residual = ANNIndex(indexType="pq", numPartitions=4, pqSubvectors=8,
                               pqCodebook="global", targetRecall=0).fit(data[2])
    assert per_partition.summary()["pqReconstructionRMSE"] <= single_rmse
    assert global_residual.summary()["pqReconstructionRMSE"] <= single_rmse * 1.05
    assert _recall(global_residual.copy().setRerankK(0), data) > 0.3


def test_codes_only_index_is_small_on_disk(spark, tmp_path):
    base = datasets.clustered(30_000, 64, seed=2)
    path = str(tmp_path / "codes")
    model = ANNIndex(indexType="pq", numPartitions=2, pqSubvectors=16, indexPath=path,
                     targetRecall=0)
    model.fit(vectors_frame(spark, base))
    files = glob.glob(os.path.join(path, "data", "*", "*.parquet"))
    on_disk = sum(os.path.getsize(f) for f in files)
    fixed = sum(_column_bytes(f, "codebook") + _column_bytes(f, "calibration") for f in files)
    assert (on_disk - fixed) / len(base) <= 28


def _column_bytes(path, name):
    meta = papq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    col = names.index(name)
    return sum(meta.row_group(g).column(col).total_compressed_size
               for g in range(meta.num_row_groups))


@pytest.mark.parametrize("kind", ["hnsw", "pq"])
def test_subset_search_returns_only_allowed_ids(data, kind):
    base, queries, bdf, qdf = data
    rng = np.random.default_rng(0)
    subsets = [np.sort(rng.choice(len(base), size=size, replace=False)) for size in
               rng.choice([15, 60, 3000], size=len(queries))]
    allowed = {i: s.tolist() for i, s in enumerate(subsets)}
    with_subsets = qdf.join(
        qdf.sparkSession.createDataFrame(list(allowed.items()), "qid long, allowed array<long>"),
        "qid",
    )
    model = ANNIndex(indexType=kind, numPartitions=4, pqSubvectors=8, rerankK=200,
                     allowedIdsCol="allowed").fit(bdf)
    rows = sorted(model.transform(with_subsets).collect(), key=lambda r: r.qid)
    hits = []
    for row in rows:
        subset = subsets[row.qid]
        ids = [n.id for n in row.neighbors]
        assert len(ids) == 10 and set(ids) <= set(subset.tolist())
        truth = subset[exact.knn(base[subset], queries[row.qid : row.qid + 1], 10)[0][0]]
        hits.append(len(set(ids) & set(truth.tolist())) / 10)
    assert np.mean(hits) >= 0.95


def test_subset_smaller_than_k_and_plain_queries_mix(data):
    base, queries, bdf, qdf = data
    mixed = qdf.withColumn(
        "allowed",
        F.when(F.col("qid") % 2 == 0, F.array(F.lit(5).cast("long"), F.lit(7).cast("long"))),
    )
    model = ANNIndex(numPartitions=4, allowedIdsCol="allowed").fit(bdf)
    for row in model.transform(mixed).collect():
        ids = sorted(n.id for n in row.neighbors)
        assert ids == [5, 7] if row.qid % 2 == 0 else len(ids) == 10
