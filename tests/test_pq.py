"""Tests for sparkann.pq (pure numpy product quantization)."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkann.pq import (
    PQCodebook,
    adc_distances,
    adc_tables,
    adc_topk,
    codebook_from_bytes,
    codebook_to_bytes,
    decode,
    encode,
    pack_codes,
    reconstruction_rmse,
    train_codebook,
    unpack_codes,
)

N, NQ, DIM = 2000, 50, 32
FAST = settings(max_examples=25, deadline=None)


def make_data(n: int, d: int = DIM, rank: int = 8, clusters: int = 20, seed: int = 0):
    """Seeded clustered, low-rank data plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d))
    centers = 3.0 * rng.standard_normal((clusters, rank))
    latent = centers[rng.integers(clusters, size=n)] + rng.standard_normal((n, rank))
    return (latent @ basis + 0.1 * rng.standard_normal((n, d))).astype(np.float32)


_ALL = make_data(N + NQ)
DATA, QUERIES = _ALL[:N], _ALL[N:]


@cache
def trained(m: int, nbits: int) -> PQCodebook:
    return train_codebook(DATA, m=m, nbits=nbits, seed=0)


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, metric: str = "l2"):
    q, b = queries.astype(np.float64), base.astype(np.float64)
    if metric == "l2":
        dist = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    else:
        dist = -q @ b.T
    return np.argsort(dist, axis=1, kind="stable")[:, :k], dist


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return hits / truth.size


def grid_codebook(m: int, nbits: int, dsub: int, seed: int) -> PQCodebook:
    """Random codebook on an integer grid with distinct first coordinates.

    Codewords are >= 1 apart and all arithmetic is exact in float32, so
    nearest-codeword search has no near ties.
    """
    rng = np.random.default_rng(seed)
    ksub = 1 << nbits
    cw = rng.integers(-20, 21, size=(m, ksub, dsub)).astype(np.float32)
    for j in range(m):
        cw[j, :, 0] = rng.choice(np.arange(-300, 300), size=ksub, replace=False)
    return PQCodebook(cw)


# ------------------------------------------------------------- codebook / shapes


def test_codebook_properties():
    cb = trained(4, 4)
    assert (cb.m, cb.ksub, cb.dsub, cb.dim, cb.nbits) == (4, 16, 8, 32, 4)
    assert cb.codewords.dtype == np.float32 and cb.codewords.shape == (4, 16, 8)
    assert not cb.codewords.flags.writeable
    assert trained(8, 8).nbits == 8


@pytest.mark.parametrize("m, nbits", [(4, 4), (8, 8)])
def test_encode_decode_shapes_and_dtypes(m, nbits):
    cb = trained(m, nbits)
    codes = encode(cb, DATA)
    assert codes.shape == (N, m) and codes.dtype == np.uint8
    assert codes.max() < cb.ksub
    decoded = decode(cb, codes)
    assert decoded.shape == DATA.shape and decoded.dtype == np.float32
    assert encode(cb, DATA[:0]).shape == (0, m)


def test_encode_picks_nearest_codeword():
    cb = trained(4, 4)
    codes = encode(cb, DATA[:200])
    sub = DATA[:200].reshape(200, 4, 8)
    brute = ((sub[:, :, None, :] - cb.codewords[None]) ** 2).sum(-1).argmin(-1)
    assert (codes == brute).mean() > 0.999  # float rounding may flip exact near-ties


# ------------------------------------------------------------------ RMSE


def test_rmse_decreases_as_m_grows():
    errors = [reconstruction_rmse(trained(m, 8), DATA) for m in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_rmse_decreases_as_nbits_grows():
    assert reconstruction_rmse(trained(8, 4), DATA) > reconstruction_rmse(
        trained(8, 8), DATA
    )


def test_rmse_matches_definition_and_accepts_codes():
    cb = trained(4, 8)
    codes = encode(cb, DATA)
    err = DATA.astype(np.float64) - decode(cb, codes)
    expected = np.sqrt(np.mean(np.sum(err**2, axis=1)))
    assert reconstruction_rmse(cb, DATA) == pytest.approx(expected, rel=1e-9)
    assert reconstruction_rmse(cb, DATA, codes) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="rows"):
        reconstruction_rmse(cb, DATA, codes[:10])


# ------------------------------------------------------------------- ADC


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adc_equals_exact_distance_to_decoded(metric):
    cb = trained(8, 8)
    codes = encode(cb, DATA)
    tables = adc_tables(cb, QUERIES, metric)
    assert tables.shape == (NQ, 8, 256) and tables.dtype == np.float32
    approx = adc_distances(tables, codes)
    assert approx.shape == (NQ, N) and approx.dtype == np.float32
    _, exact = exact_topk(QUERIES, decode(cb, codes), 1, metric)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(approx, exact, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_adc_topk_matches_exact_search_on_decoded(metric):
    cb = trained(8, 8)
    codes = encode(cb, DATA)
    idx, dist = adc_topk(adc_tables(cb, QUERIES, metric), codes, 10)
    assert idx.shape == dist.shape == (NQ, 10)
    assert np.all(np.diff(dist, axis=1) >= 0)
    truth, _ = exact_topk(QUERIES, decode(cb, codes), 10, metric)
    assert recall(idx, truth) == 1.0


def test_adc_topk_scores_queries_in_bounded_blocks(monkeypatch):
    import sparkann.pq as pq_module

    cb = trained(8, 8)
    tables, codes = adc_tables(cb, QUERIES, "l2"), encode(cb, DATA)
    whole = adc_topk(tables, codes, 10)
    monkeypatch.setattr(pq_module, "_TOPK_ELEMS", 3 * len(codes))  # three queries per block
    blocked = adc_topk(tables, codes, 10)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


def test_adc_topk_recall_vs_raw_data():
    cb = trained(16, 8)
    idx, _ = adc_topk(adc_tables(cb, QUERIES, "l2"), encode(cb, DATA), 10)
    truth, _ = exact_topk(QUERIES, DATA, 10)
    assert recall(idx, truth) > 0.5


def test_adc_topk_breaks_ties_by_index():
    tables = np.zeros((3, 2, 16), dtype=np.float32)
    codes = np.random.default_rng(0).integers(0, 16, size=(100, 2))
    idx, dist = adc_topk(tables, codes, 7)
    np.testing.assert_array_equal(idx, np.tile(np.arange(7), (3, 1)))
    assert not dist.any()
    # Partial ties: codes 0 cost 0, everything else 1; the 0-coded rows come first.
    tables[:, :, 1:] = 1.0
    codes = np.array([[1, 1], [0, 0], [1, 1], [0, 0], [0, 1], [0, 1]])
    idx, dist = adc_topk(tables, codes, 4)
    np.testing.assert_array_equal(idx[0], [1, 3, 4, 5])
    np.testing.assert_array_equal(dist[0], [0, 0, 1, 1])


def test_adc_topk_caps_k_at_n():
    cb = trained(4, 4)
    tables = adc_tables(cb, QUERIES[:2])
    idx, dist = adc_topk(tables, encode(cb, DATA[:5]), 50)
    assert idx.shape == dist.shape == (2, 5)
    assert sorted(idx[0]) == list(range(5))
    idx, _ = adc_topk(tables, np.zeros((0, 4), dtype=np.uint8), 3)
    assert idx.shape == (2, 0)


def test_adc_rejects_bad_input():
    cb = trained(4, 4)
    with pytest.raises(ValueError, match="metric"):
        adc_tables(cb, QUERIES, "cosine")
    with pytest.raises(ValueError, match="queries"):
        adc_tables(cb, QUERIES[:, :8])
    tables = adc_tables(cb, QUERIES)
    with pytest.raises(ValueError, match="codes"):
        adc_distances(tables, np.full((3, 4), 16))
    with pytest.raises(ValueError, match="codes"):
        adc_distances(tables, np.zeros((3, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="k"):
        adc_topk(tables, encode(cb, DATA[:5]), 0)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("nbits, width", [(4, 8), (8, 16)])
def test_pack_unpack_round_trip(nbits, width):
    codes = (
        np.random.default_rng(1)
        .integers(0, 1 << nbits, size=(300, 16))
        .astype(np.uint8)
    )
    packed = pack_codes(codes, nbits)
    assert packed.shape == (300, width) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_codes(packed, 16, nbits), codes)
    np.testing.assert_array_equal(unpack_codes(packed.tobytes(), 16, nbits), codes)


def test_pack_unpack_validate_sizes():
    with pytest.raises(ValueError, match="codes"):
        pack_codes(np.array([[16, 0]]), 4)
    with pytest.raises(ValueError, match="nbits"):
        pack_codes(np.zeros((2, 2), dtype=np.uint8), 6)
    with pytest.raises(ValueError, match="multiple"):
        unpack_codes(b"\x00" * 9, 16, 4)
    with pytest.raises(ValueError, match="shape"):
        unpack_codes(np.zeros((2, 7), dtype=np.uint8), 16, 4)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(np.zeros((2, 8), dtype=np.int64), 16, 4)
    with pytest.raises(ValueError, match="m"):
        unpack_codes(b"", 0, 8)


# ----------------------------------------------------------- serialization


def test_codebook_bytes_round_trip():
    cb = trained(4, 4)
    blob = codebook_to_bytes(cb)
    assert blob[:4] == b"SPQ1"
    assert codebook_from_bytes(blob) == cb
    assert codebook_from_bytes(bytearray(blob)) == cb


def test_codebook_from_bytes_rejects_damaged_data():
    blob = codebook_to_bytes(grid_codebook(2, 4, 2, seed=0))
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match="damaged"):
            codebook_from_bytes(blob[:cut])
    bad = [
        blob + b"\x00",  # trailing bytes
        b"XPQ1" + blob[4:],  # bad magic
        blob[:4] + (2**32 - 1).to_bytes(4, "little") + blob[8:],  # huge m
        blob[:8] + (17).to_bytes(4, "little") + blob[12:],  # ksub not 16/256
        blob[:-4] + np.float32(np.nan).tobytes(),  # non-finite payload
        bytes(np.random.default_rng(0).integers(0, 256, size=500, dtype=np.uint8)),
    ]
    for data in bad:
        with pytest.raises(ValueError, match="damaged"):
            codebook_from_bytes(data)


# ------------------------------------------------------- training parameters


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"m": 5}, "m"),
        ({"m": 0}, "m"),
        ({"m": 4, "nbits": 6}, "nbits"),
        ({"m": 4, "seed": -1}, "seed"),
        ({"m": 4, "max_iter": 0}, "max_iter"),
        ({"m": 4, "sample_size": 0}, "sample_size"),
    ],
)
def test_train_rejects_bad_params(kwargs, name):
    with pytest.raises(ValueError, match=name):
        train_codebook(DATA[:100], **kwargs)


def test_train_rejects_non_integer_params():
    with pytest.raises(TypeError, match="m"):
        train_codebook(DATA[:100], m=2.5)
    with pytest.raises(TypeError, match="seed"):
        train_codebook(DATA[:100], m=4, seed="0")


def test_train_m_error_lists_valid_divisors():
    with pytest.raises(ValueError, match=r"m=5.*\[1, 2, 4, 8, 16, 32\]"):
        train_codebook(DATA[:100], m=5)


@pytest.mark.parametrize(
    "vectors",
    [
        np.zeros((0, 32)),
        np.zeros(32),
        np.full((10, 32), np.nan),
        np.full((10, 32), np.inf),
    ],
)
def test_train_rejects_bad_vectors(vectors):
    with pytest.raises(ValueError, match="vectors"):
        train_codebook(vectors, m=4)


def test_training_is_deterministic():
    a = train_codebook(DATA[:600], m=4, nbits=8, seed=7)
    b = train_codebook(DATA[:600], m=4, nbits=8, seed=7)
    c = train_codebook(DATA[:600], m=4, nbits=8, seed=8)
    assert a == b and a != c
    np.testing.assert_array_equal(encode(a, DATA), encode(b, DATA))


def test_training_with_fewer_points_than_codewords():
    small = DATA[:10]
    cb = train_codebook(small, m=4, nbits=8)
    assert cb.codewords.shape == (4, 256, 8)
    assert cb == train_codebook(small, m=4, nbits=8)
    assert reconstruction_rmse(cb, small) == pytest.approx(0.0, abs=1e-3)


def test_training_on_sample():
    a = train_codebook(DATA, m=4, nbits=4, sample_size=500, seed=3)
    assert a == train_codebook(DATA, m=4, nbits=4, sample_size=500, seed=3)
    assert reconstruction_rmse(a, DATA) < 1.5 * reconstruction_rmse(trained(4, 4), DATA)


# ------------------------------------------------------------- properties


@FAST
@given(
    n=st.integers(0, 40),
    m=st.integers(1, 17),
    nbits=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_unpack_round_trip_property(n, m, nbits, seed):
    codes = (
        np.random.default_rng(seed)
        .integers(0, 1 << nbits, size=(n, m))
        .astype(np.uint8)
    )
    packed = pack_codes(codes, nbits)
    assert packed.shape == (n, (m * nbits + 7) // 8)
    np.testing.assert_array_equal(unpack_codes(packed, m, nbits), codes)
    np.testing.assert_array_equal(unpack_codes(packed.ravel(), m, nbits), codes)


@FAST
@given(
    n=st.integers(0, 30),
    m=st.integers(1, 6),
    dsub=st.integers(1, 5),
    nbits=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_decode_shape_property(n, m, dsub, nbits, seed):
    cb = grid_codebook(m, nbits, dsub, seed)
    codes = (
        np.random.default_rng(seed).integers(0, cb.ksub, size=(n, m)).astype(np.uint8)
    )
    decoded = decode(cb, codes)
    assert decoded.shape == (n, m * dsub) and decoded.dtype == np.float32
    recoded = encode(cb, decoded)
    assert recoded.shape == (n, m) and recoded.dtype == np.uint8
    np.testing.assert_array_equal(recoded, codes)  # codewords encode to themselves
    assert codebook_from_bytes(codebook_to_bytes(cb)) == cb
