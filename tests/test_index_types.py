"""Index types (sparkann.index): the registry, shared helpers, HNSW and PQ partitions.

Pure numpy, hnswlib and faiss; no Spark. The type-independent contract is in
test_index_contract.py; hostile payloads are in test_format_hostile.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparkann import datasets, exact
from sparkann.index import (
    REGISTRY,
    PartitionContext,
    PartitionIndex,
    SearchKnobs,
    StoredPartition,
    index_type,
)
from sparkann.index import base as index_base
from sparkann.index import hnsw as hnsw_module
from sparkann.index import pq as pq_module
from sparkann.index.hnsw import (
    HNSWBuildParams,
    HNSWIndex,
    HNSWKnobs,
    graph_from_bytes,
    graph_to_bytes,
)
from sparkann.index.pq import (
    PQBuildParams,
    PQIndex,
    PQKnobs,
    codebook_from_bytes,
    codebook_to_bytes,
    pad,
    padded_dim,
    train_codebook,
)
from sparkann.metrics import get_metric

N, NQ, DIM = 2000, 40, 16
KNOBS = HNSWKnobs(ef_search=100)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    return (datasets.clustered(N, DIM, seed=3),
            datasets.clustered(NQ, DIM, seed=3, sample_seed=4))


def prepared(data, metric):
    return metric.prepare(data[0]), metric.prepare(data[1])


def hnsw_context(metric="l2", dim=DIM, m=16, ef_construction=100):
    params = {"hnswM": m, "efConstruction": ef_construction}
    return PartitionContext(get_metric(metric), dim, params)


def pq_context(vectors, metric="l2", m=8, bits=8, rerank=0, codebook="partition", shared=b""):
    params = {"pqSubvectors": m, "pqBits": bits, "pqCodebook": codebook, "rerankK": rerank}
    return PartitionContext(get_metric(metric), vectors.shape[1], params,
                            np.asarray(vectors, np.float32).mean(0), shared)


def unpack_codes(codes: np.ndarray, m: int, bits: int) -> np.ndarray:
    """faiss's packed codes as one small integer per sub-quantizer (LSB first)."""
    if bits == 8:
        return codes.astype(np.int64)
    low, high = codes & 0xF, codes >> 4
    return np.stack([low, high], axis=2).reshape(len(codes), -1)[:, :m].astype(np.int64)


def reconstruct(index: PQIndex) -> np.ndarray:
    """Centroid plus decoded residual of every row, decoded by hand from the codebook."""
    codes = unpack_codes(index.codes, index.m, index.nbits)
    residuals = np.concatenate([index.codewords[j][codes[:, j]] for j in range(index.m)], axis=1)
    return index.context.centroid[None, :] + residuals[:, :index.context.dim]


def rmse(index: PQIndex) -> float:
    return float(np.sqrt(index.store().sq_error / index.count))


# ---------------------------------------------------------------- registry


def test_registry_maps_names_to_index_types():
    assert {"hnsw", "pq"} <= set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.name == name and index_type(name) is cls
        assert issubclass(cls, PartitionIndex)
        assert cls.build_params == cls.Params.param_names()
        assert all(isinstance(p, str) for p in cls.build_params)
    assert HNSWIndex.build_params == ("hnswM", "efConstruction")
    assert PQIndex.build_params == ("pqSubvectors", "pqBits", "pqCodebook", "rerankK")
    with pytest.raises(ValueError, match=r"indexType='annoy'.*" + re.escape(str(sorted(REGISTRY)))):
        index_type("annoy")


def test_knobs_of_a_setting():
    assert PartitionIndex.search_knobs({"efSearch": 99, "rerankK": 7}, threads=3) == SearchKnobs(
        threads=3)
    assert HNSWIndex.search_knobs({"efSearch": 99, "rerankK": 7}, threads=3) == HNSWKnobs(
        ef_search=99, threads=3)
    assert HNSWIndex.search_knobs({}) == HNSWKnobs(ef_search=64, threads=1)
    assert PQIndex.search_knobs({"rerankK": 7}) == PQKnobs(rerank_k=7)
    assert PQKnobs(rerank_k=7).needs_vectors and not PQKnobs().needs_vectors
    assert not HNSWKnobs(ef_search=500).needs_vectors


def test_typed_params_of_each_type():
    spec = PQIndex.spec({"pqSubvectors": 8, "pqBits": 4, "pqCodebook": "global", "k": 10})
    assert spec.params == PQBuildParams(subvectors=8, bits=4, codebook="global", rerank_k=0)
    assert spec.to_params() == {"indexType": "pq", "pqSubvectors": 8, "pqBits": 4,
                                "pqCodebook": "global", "rerankK": 0}
    assert HNSWBuildParams.of(spec.params.to_params() | {"hnswM": 8, "efConstruction": 20}).m == 8
    with pytest.raises(KeyError, match="hnswM"):
        HNSWIndex.spec({"efConstruction": 20})
    with pytest.raises(TypeError, match="PQBuildParams given where HNSWBuildParams"):
        HNSWBuildParams.of(spec.params)
    with pytest.raises(ValueError, match="pqSubvectors=16 is larger than the dimension 8"):
        PQIndex.check_params({"pqSubvectors": 16, "pqBits": 8, "pqCodebook": "global"}, 8)
    HNSWIndex.check_params({"hnswM": 64, "efConstruction": 20}, 2)  # nothing to check


# ----------------------------------------------------------- base helpers


def test_padded_fills_with_minus_one_and_infinity_and_cuts_wider_results():
    labels, dists = index_base.padded(np.array([[3, 1]]), np.array([[0.5, 0.7]]), 4)
    np.testing.assert_array_equal(labels, [[3, 1, -1, -1]])
    np.testing.assert_array_equal(dists, np.float32([[0.5, 0.7, np.inf, np.inf]]))
    assert dists.dtype == np.float32
    labels, dists = index_base.padded(np.array([[3, 1, 2]]), np.array([[0.1, 0.2, 0.3]]), 2)
    np.testing.assert_array_equal(labels, [[3, 1]])


def test_checked_labels_are_unique_sorted_and_in_range():
    np.testing.assert_array_equal(index_base.checked_labels([4, 1, 4, 0], 5), [0, 1, 4])
    assert index_base.checked_labels([], 0).dtype == np.int64
    for bad in ([5], [-1], [0, 7]):
        with pytest.raises(ValueError, match="out of range 0..4"):
            index_base.checked_labels(bad, 5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_among_is_exact_search_over_the_given_rows(data, metric):
    base, queries = prepared(data, get_metric(metric))
    labels = np.arange(5, 400, 7)
    found, dists = index_base.exact_among(base[labels], labels, queries[0], 10,
                                          get_metric(metric))
    order, truth = exact.knn(base[labels], queries[:1], 10, metric)
    np.testing.assert_array_equal(found, labels[order])
    np.testing.assert_allclose(dists, truth, rtol=1e-5)
    found, dists = index_base.exact_among(base[labels[:3]], labels[:3], queries[0], 5,
                                          get_metric(metric))
    assert sorted(found[0, :3]) == labels[:3].tolist() and (found[0, 3:] == -1).all()
    found, dists = index_base.exact_among(base[:0], labels[:0], queries[0], 3, get_metric(metric))
    assert found.tolist() == [[-1, -1, -1]] and np.isinf(dists).all()


# -------------------------------------------------------------------- HNSW


def test_hnsw_search_ladder_and_probe_cost():
    for k in (1, 10, 100, 1000):
        ladder = HNSWIndex.search_ladder(k, {})
        efs = [s["efSearch"] for s in ladder]
        assert efs == sorted(set(efs)) and min(efs) >= k
        costs = [HNSWIndex.probe_cost(s, 10_000, DIM) for s in ladder]
        assert all(a < b for a, b in zip(costs, costs[1:]))
    assert HNSWIndex.search_ladder(1000, {}) == [{"efSearch": 1000}]
    setting = {"efSearch": 64}
    assert HNSWIndex.probe_cost(setting, 1000, DIM) < HNSWIndex.probe_cost(setting, 10**6, DIM)
    assert HNSWIndex.search_knobs(setting) == HNSWKnobs(ef_search=64)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_hnsw_recall_and_distances_match_exact(data, metric):
    base, queries = prepared(data, get_metric(metric))
    index = HNSWIndex.build(base, hnsw_context(metric), seed=0, threads=1)
    labels, dists = index.search(queries, 10, KNOBS)
    truth, _ = exact.knn(base, queries, 10, metric)
    assert exact.recall_at_k(labels, truth, 10) >= 0.95
    expected = get_metric(metric).pairwise(queries, base)
    np.testing.assert_allclose(dists, np.take_along_axis(expected, labels, 1),
                               rtol=1e-4, atol=1e-4)
    assert (np.diff(dists, axis=1) >= -1e-6).all()


def test_hnsw_payload_round_trip_gives_identical_answers(data):
    base, queries = data
    index = HNSWIndex.build(base, hnsw_context(m=8, ef_construction=50), seed=1, threads=1)
    payload = index.store().payload
    assert graph_to_bytes(index.graph) == payload  # the same graph stores the same bytes
    loaded = HNSWIndex.load(StoredPartition(payload), hnsw_context(m=8, ef_construction=50))
    assert loaded.count == N
    for a, b in zip(index.search(queries, 5, KNOBS), loaded.search(queries, 5, KNOBS)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.live_vectors(np.arange(N)), base)
    again = HNSWIndex.load(loaded.store(), hnsw_context(m=8, ef_construction=50))
    np.testing.assert_array_equal(again.search(queries, 5, KNOBS)[0],
                                  index.search(queries, 5, KNOBS)[0])


def test_hnsw_builds_are_reproducible_single_threaded(data):
    a = HNSWIndex.build(data[0][:500], hnsw_context(), seed=3, threads=1)
    b = HNSWIndex.build(data[0][:500], hnsw_context(), seed=3, threads=1)
    assert a.store() == b.store()


def test_hnsw_k_larger_than_graph_returns_every_vector(data):
    base, queries = data
    index = HNSWIndex.build(base[:3], hnsw_context(), seed=0, threads=1)
    labels, dists = index.search(queries[:2], 10, KNOBS)
    assert labels.shape == dists.shape == (2, 10)
    assert sorted(labels[0, :3]) == [0, 1, 2]
    assert (labels[:, 3:] == -1).all() and np.isinf(dists[:, 3:]).all()


@pytest.mark.parametrize("cut", [0, 10, 19, 20, 30, 200, -1])
def test_hnsw_truncated_payload_is_reported_damaged(data, cut):
    payload = HNSWIndex.build(data[0][:200], hnsw_context(m=8), seed=0, threads=1).store().payload
    with pytest.raises(ValueError, match="damaged"):
        graph_from_bytes(payload[:cut], DIM, "l2")


def test_hnsw_overwritten_link_bytes_are_caught(data):
    index = HNSWIndex.build(data[0][:500], hnsw_context(m=8), seed=0, threads=1)
    payload = bytearray(index.store().payload)
    payload[-64:] = b"\xff" * 64  # upper-level links of the last elements
    with pytest.raises(ValueError, match="damaged"):
        graph_from_bytes(bytes(payload), DIM, "l2")


def test_hnsw_newer_payload_format_is_refused(data):
    payload = bytearray(HNSWIndex.build(data[0][:50], hnsw_context(), 0, 1).store().payload)
    payload[8] = 99  # the format version follows the 8 magic bytes
    with pytest.raises(ValueError, match="newer"):
        graph_from_bytes(bytes(payload), DIM, "l2")


def test_hnsw_deletions_are_not_stored(data):
    base, queries = data
    index = HNSWIndex.build(base[:300], hnsw_context(), seed=0, threads=1)
    hidden = np.arange(0, 300, 3)
    index.hide(hidden)
    index.hide(hidden[:5])  # hiding again is fine
    labels, _ = index.search(queries, 300, KNOBS)
    assert not np.isin(labels, hidden).any() and (labels >= 0).sum(1).max() == 200
    loaded = HNSWIndex.load(index.store(), hnsw_context())
    labels, _ = loaded.search(queries[:3], 300, HNSWKnobs(ef_search=300))
    assert all(sorted(row) == list(range(300)) for row in labels.tolist())


def test_hnsw_hiding_below_k_pads_the_answers(data):
    base, queries = data
    index = HNSWIndex.build(base[:200], hnsw_context(m=4), seed=0, threads=1)
    index.hide(np.arange(3, 200))
    labels, dists = index.search(queries, 10, KNOBS)
    assert all(sorted(row[:3]) == [0, 1, 2] for row in labels.tolist())
    assert (labels[:, 3:] == -1).all() and np.isinf(dists[:, 3:]).all()
    index.hide(np.arange(3))
    labels, dists = index.search(queries, 10, KNOBS)
    assert (labels == -1).all() and np.isinf(dists).all()
    with pytest.raises(ValueError, match="out of range"):
        index.hide([200])


def test_hnsw_filtered_subset_search(data, monkeypatch):
    """Large subsets walk the graph with a filter instead of scanning."""
    monkeypatch.setattr(hnsw_module, "SUBSET_SCAN_ROWS", 0)
    monkeypatch.setattr(hnsw_module, "SUBSET_SCAN_SHARE", 0.0)
    base, queries = data
    index = HNSWIndex.build(base, hnsw_context(), seed=0, threads=1)
    allowed = np.arange(0, N, 2)
    index.hide(allowed[:100])
    live = allowed[100:]
    found = np.concatenate([index.search_subset(q, allowed, 10, KNOBS)[0] for q in queries])
    assert np.isin(found, live).all()
    truth, _ = exact.knn(base[live], queries, 10, "l2")
    assert exact.recall_at_k(found, live[truth], 10) >= 0.9
    labels, dists = index.search_subset(queries[0], allowed[:104], 10, KNOBS)
    assert sorted(labels[0, :4]) == allowed[100:104].tolist() and (labels[0, 4:] == -1).all()


def test_hnsw_add_keeps_hidden_rows_hidden_and_memory_grows(data):
    base, queries = data
    index = HNSWIndex.build(base[:500], hnsw_context(), seed=0, threads=1)
    before = index.memory_bytes()
    index.hide(np.arange(100))
    index.add(base[500:800], threads=1)
    assert index.count == 800 and index.memory_bytes() > before
    labels, _ = index.search(base[:100], 5, KNOBS)  # the hidden rows' own vectors
    assert not np.isin(labels, np.arange(100)).any()
    np.testing.assert_array_equal(index.live_vectors(np.arange(500, 800)), base[500:800])


def test_hnsw_compact_keeps_the_kept_vectors(data):
    base, _ = data
    index = HNSWIndex.build(base[:400], hnsw_context(), seed=0, threads=1)
    keep = np.arange(0, 400, 4)
    index.hide(np.setdiff1d(np.arange(400), keep))
    small = index.compact(keep, seed=0, threads=1)
    assert isinstance(small, HNSWIndex) and small.count == len(keep)
    np.testing.assert_array_equal(small.live_vectors(np.arange(len(keep))), base[keep])
    labels, dists = small.search(base[keep], 1, KNOBS)
    np.testing.assert_array_equal(labels[:, 0], np.arange(len(keep)))


# ---------------------------------------------------------------------- PQ


def test_padded_dim_and_pad_change_no_distance(data):
    assert [padded_dim(d, 8) for d in (1, 8, 9, 30, 32)] == [8, 8, 16, 32, 32]
    base, queries = data[0][:50, :14], data[1][:5, :14]
    wide_base, wide_queries = pad(base, 16), pad(queries, 16)
    assert wide_base.shape == (50, 16) and wide_base.flags.c_contiguous
    assert not wide_base[:, 14:].any()
    np.testing.assert_array_equal(pad(base, 14), base)
    for name in ("l2", "ip"):
        np.testing.assert_allclose(get_metric(name).pairwise(wide_queries, wide_base),
                                   get_metric(name).pairwise(queries, base),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m, bits", [(4, 4), (8, 8)])
def test_codebook_shapes_and_codes_pick_the_nearest_codeword(data, m, bits):
    base = data[0]
    index = PQIndex.build(base, pq_context(base, m=m, bits=bits), seed=0, threads=1)
    dsub = DIM // m
    assert index.codewords.shape == (m, 1 << bits, dsub) and index.codewords.dtype == np.float32
    assert index.codes.shape == (N, (m * bits + 7) // 8) and index.codes.dtype == np.uint8
    codes = unpack_codes(index.codes, m, bits)
    residuals = (base - index.context.centroid).reshape(N, m, dsub)
    brute = ((residuals[:, :, None, :] - index.codewords[None]) ** 2).sum(-1).argmin(-1)
    assert (codes == brute).mean() > 0.999  # float rounding may flip exact near-ties


def test_sq_error_matches_its_definition(data):
    base = data[0]
    index = PQIndex.build(base, pq_context(base, m=4, bits=8), seed=0, threads=1)
    expected = ((base.astype(np.float64) - reconstruct(index)) ** 2).sum()
    assert index.store().sq_error == pytest.approx(expected, rel=1e-4)


def test_rmse_falls_as_subvectors_grow(data):
    base = data[0]
    errors = [rmse(PQIndex.build(base, pq_context(base, m=m, bits=8), 0, 1)) for m in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_rmse_falls_as_bits_grow(data):
    base = data[0]
    four, eight = (rmse(PQIndex.build(base, pq_context(base, m=8, bits=b), 0, 1)) for b in (4, 8))
    assert four > eight > 0


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_adc_distance_is_the_exact_distance_to_the_reconstruction(data, metric):
    base, queries = prepared(data, get_metric(metric))
    index = PQIndex.build(base, pq_context(base, metric, m=8, bits=8), seed=0, threads=1)
    labels, dists = index.search(queries, 10, SearchKnobs())
    recon = reconstruct(index)
    full = get_metric(metric).pairwise(queries, recon)
    expected = np.take_along_axis(full, labels, 1)
    np.testing.assert_allclose(dists, expected, rtol=1e-3, atol=1e-3 * np.abs(full).max())
    truth, _ = exact.knn(recon, queries, 10, metric)  # ADC is exact search on reconstructions
    assert exact.recall_at_k(labels, truth, 10) >= 0.98


@pytest.mark.parametrize("bits, floor", [(8, 0.5), (4, 0.3)])
def test_adc_recall_against_the_raw_data(data, bits, floor):
    base, queries = data
    index = PQIndex.build(base, pq_context(base, m=8, bits=bits), seed=0, threads=1)
    labels, _ = index.search(queries, 10, SearchKnobs())
    truth, _ = exact.knn(base, queries, 10)
    assert exact.recall_at_k(labels, truth, 10) > floor


def test_pq_dimension_is_zero_padded_to_a_multiple_of_m(data):
    base, queries = data[0][:, :14], data[1][:, :14]
    index = PQIndex.build(base, pq_context(base, m=4, bits=8, rerank=1), seed=0, threads=1)
    assert index.width == 16 and index.codewords.shape == (4, 256, 4)
    labels, dists = index.search(queries, 10, PQKnobs(rerank_k=200))
    truth, truth_dists = exact.knn(base, queries, 10)
    assert exact.recall_at_k(labels, truth, 10) >= 0.95
    np.testing.assert_allclose(dists[:, 0], truth_dists[:, 0], rtol=1e-4, atol=1e-4)


def test_pq_k_capped_at_the_rows(data):
    base, queries = data
    index = PQIndex.build(base[:5], pq_context(base[:5], m=4, bits=8), seed=0, threads=1)
    labels, dists = index.search(queries[:2], 50, SearchKnobs())
    assert labels.shape == dists.shape == (2, 50)
    assert sorted(labels[0, :5]) == list(range(5))
    assert (labels[:, 5:] == -1).all() and np.isinf(dists[:, 5:]).all()


def test_training_is_deterministic(data):
    residuals = data[0][:600] - data[0][:600].mean(0)
    a = train_codebook(residuals, 4, 8, seed=7)
    np.testing.assert_array_equal(a, train_codebook(residuals, 4, 8, seed=7))
    assert not np.array_equal(a, train_codebook(residuals, 4, 8, seed=8))


def test_training_with_fewer_rows_than_codewords_reconstructs_them_exactly(data):
    small = data[0][:10]
    codewords = train_codebook(small - small.mean(0), 4, 8, seed=0)
    assert codewords.shape == (4, 256, 4)
    index = PQIndex.build(small, pq_context(small, m=4, bits=8), seed=0, threads=1)
    assert rmse(index) == pytest.approx(0.0, abs=1e-3)
    assert not train_codebook(small[:0], 4, 8, seed=0).any()  # no rows: zero codewords


def test_training_on_a_sample(data, monkeypatch):
    base = data[0]
    full = rmse(PQIndex.build(base, pq_context(base, m=4, bits=4), seed=3, threads=1))
    monkeypatch.setattr(pq_module, "TRAIN_ROWS", 500)
    sampled = PQIndex.build(base, pq_context(base, m=4, bits=4), seed=3, threads=1)
    again = PQIndex.build(base, pq_context(base, m=4, bits=4), seed=3, threads=1)
    np.testing.assert_array_equal(sampled.codewords, again.codewords)
    assert rmse(sampled) < 1.5 * full


def test_codebook_bytes_round_trip(data):
    codewords = train_codebook(data[0][:300], 4, 4, seed=0)
    blob = codebook_to_bytes(codewords)
    assert blob[:8] == b"SANNPQCB"
    for form in (blob, bytearray(blob), memoryview(blob)):
        np.testing.assert_array_equal(codebook_from_bytes(form, 4, 4, DIM), codewords)


def test_codebook_truncated_anywhere_is_reported_damaged(data):
    blob = codebook_to_bytes(train_codebook(data[0][:300, :4], 2, 4, seed=0))
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match="damaged"):
            codebook_from_bytes(blob[:cut], 2, 4, 4)
    with pytest.raises(ValueError, match="damaged"):
        codebook_from_bytes(blob + b"\x00", 2, 4, 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_pq_payload_round_trip_gives_identical_answers(data, bits):
    base, queries = data
    context = pq_context(base, m=8, bits=bits)
    index = PQIndex.build(base, context, seed=0, threads=1)
    stored = index.store()
    assert stored.vectors is None and stored.codebook
    np.testing.assert_array_equal(pq_module._codes_from_payload(stored.payload, 8, bits),
                                  index.codes)
    loaded = PQIndex.load(stored, context, with_vectors=False)
    assert loaded.sq_error == index.sq_error
    for a, b in zip(index.search(queries, 10, SearchKnobs()),
                    loaded.search(queries, 10, SearchKnobs())):
        np.testing.assert_array_equal(a, b)
    assert loaded.store() == stored


def test_pq_truncated_payload_is_reported_damaged(data):
    base = data[0][:20]
    stored = PQIndex.build(base, pq_context(base, m=4, bits=4), 0, 1).store()
    for cut in range(len(stored.payload)):
        with pytest.raises(ValueError, match="damaged"):
            pq_module._codes_from_payload(stored.payload[:cut], 4, 4)


def test_global_codebook_is_shared_and_not_stored_per_partition(data):
    base, queries = data
    context = pq_context(base, m=8, bits=8, codebook="global")
    assert PQIndex.train_shared(base, base - context.centroid, pq_context(base), 0) == b""
    shared = PQIndex.train_shared(base, base - context.centroid, context, seed=0)
    context = pq_context(base, m=8, bits=8, codebook="global", shared=shared)
    index = PQIndex.build(base[:700], context, seed=0, threads=1)
    np.testing.assert_array_equal(index.codewords, codebook_from_bytes(shared, 8, 8, DIM))
    stored = index.store()
    assert stored.codebook == b""
    loaded = PQIndex.load(stored, context)
    np.testing.assert_array_equal(loaded.search(queries, 5, SearchKnobs())[0],
                                  index.search(queries, 5, SearchKnobs())[0])
    # adding rows encodes them as building with them would
    index.add(base[700:], threads=1)
    whole = PQIndex.build(base, context, seed=0, threads=1)
    np.testing.assert_array_equal(index.codes, whole.codes)
    assert index.sq_error == pytest.approx(whole.sq_error, rel=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        PQIndex.load(stored, pq_context(base, m=4, bits=8, codebook="global", shared=shared))


def test_exact_vectors_are_kept_only_with_rerank(data):
    base, queries = data
    codes_only = PQIndex.build(base, pq_context(base, m=8, bits=8), seed=0, threads=1)
    with pytest.raises(ValueError, match="stores no exact vectors"):
        codes_only.live_vectors([0])
    with pytest.raises(ValueError, match="stores no exact vectors"):
        PQIndex.load(codes_only.store(), pq_context(base, m=8, bits=8), with_vectors=True)
    context = pq_context(base, m=8, bits=8, rerank=1)
    kept = PQIndex.build(base, context, seed=0, threads=1)
    stored = kept.store()
    assert stored.vectors == base.astype("<f4").tobytes()
    assert kept.memory_bytes() > codes_only.memory_bytes() > 0
    np.testing.assert_array_equal(kept.live_vectors([3, 1]), base[[3, 1]])
    # loaded without its vectors, it searches by ADC alone
    light = PQIndex.load(stored, context, with_vectors=False)
    np.testing.assert_array_equal(light.search(queries, 10, PQKnobs(rerank_k=100))[0],
                                  codes_only.search(queries, 10, SearchKnobs())[0])
    heavy = PQIndex.load(stored, context, with_vectors=True)
    truth, _ = exact.knn(base, queries, 10)
    found, _ = heavy.search(queries, 10, PQKnobs(rerank_k=400))
    assert exact.recall_at_k(found, truth, 10) >= 0.95
    for bad in (stored.vectors[:-4], stored.vectors[:-4] + np.float32(np.nan).tobytes()):
        damaged = StoredPartition(stored.payload, stored.codebook, bad, stored.sq_error)
        with pytest.raises(ValueError, match="exact vectors are damaged"):
            PQIndex.load(damaged, context, with_vectors=True)


def test_pq_needs_its_coarse_centroid(data):
    base = data[0][:50]
    context = pq_context(base, m=4, bits=8)
    no_centroid = PartitionContext(context.metric, DIM, context.params)
    with pytest.raises(ValueError, match="centroid"):
        PQIndex.build(base, no_centroid, seed=0, threads=1)


@pytest.mark.parametrize("bits", [4, 8])
def test_pq_hide_and_subset_without_rerank(data, bits):
    """The faiss ID selector skips hidden rows in plain and fast-scan indexes alike."""
    base, queries = data
    index = PQIndex.build(base, pq_context(base, m=8, bits=bits), seed=0, threads=1)
    hidden = np.arange(0, N, 2)
    index.hide(hidden)
    labels, _ = index.search(queries, 20, SearchKnobs())
    assert (labels >= 0).all() and not np.isin(labels, hidden).any()
    allowed = np.arange(0, 400, 3)
    live = allowed[~np.isin(allowed, hidden)]
    for query in queries[:5]:
        found, dists = index.search_subset(query, allowed, 10, SearchKnobs())
        assert found.shape == (1, 10) and np.isin(found, live).all()
    found, dists = index.search_subset(queries[0], allowed[:6], 10, SearchKnobs())
    assert sorted(found[0, :3]) == live[:3].tolist()
    assert (found[0, 3:] == -1).all() and np.isinf(dists[0, 3:]).all()


def test_pq_compact_gives_the_answers_of_hiding_the_rest(data):
    base, queries = data
    for rerank in (0, 1):
        index = PQIndex.build(base, pq_context(base, m=8, bits=8, rerank=rerank), 0, 1)
        keep = np.flatnonzero(np.random.default_rng(1).random(N) < 0.6)
        small = index.compact(keep, seed=0, threads=1)
        assert small.count == len(keep)
        np.testing.assert_array_equal(small.codes, index.codes[keep])
        index.hide(np.setdiff1d(np.arange(N), keep))
        knobs = PQKnobs(rerank_k=100 * rerank)
        hidden_labels, hidden_dists = index.search(queries, 10, knobs)
        labels, dists = small.search(queries, 10, knobs)
        np.testing.assert_array_equal(keep[labels], hidden_labels)
        np.testing.assert_allclose(dists, hidden_dists, rtol=1e-6)
        if rerank:
            expected = ((base[keep] - reconstruct(small)) ** 2).sum()
            assert small.sq_error == pytest.approx(expected, rel=1e-4)
        else:
            assert small.sq_error == pytest.approx(index.sq_error * len(keep) / N)


def test_pq_search_ladder_and_probe_cost():
    codes = {"pqSubvectors": 8, "pqBits": 8, "pqCodebook": "partition"}
    assert PQIndex.search_ladder(10, {**codes, "rerankK": 0}) == [{"rerankK": 0}]
    ladder = PQIndex.search_ladder(10, {**codes, "rerankK": 5})
    assert [s["rerankK"] for s in ladder] == [10 * f for f in PQIndex.RERANK_FACTORS]
    costs = [PQIndex.probe_cost(s, 5000, DIM) for s in ladder]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert PQIndex.probe_cost({}, 1000, DIM) < PQIndex.probe_cost({}, 10**6, DIM)
    assert PQIndex.search_knobs(ladder[-1], threads=2) == PQKnobs(rerank_k=640, threads=2)
