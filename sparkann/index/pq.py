"""Product-quantization partitions (IVFADC) on faiss.

Each partition stores the PQ codes of its vectors' residuals to the partition's
coarse centroid (``pqSubvectors`` codes of ``pqBits`` bits), in sparkann's own
checked format; the codebook is the partition's own (trained inside its build
task) or one global codebook trained on the driver's sample. At load the codes
are handed to a faiss ``IndexIVFPQ`` with one inverted list (the partition),
converted to ``IndexIVFPQFastScan`` (SIMD 4-bit look-up tables) for 4-bit
codes. With ``rerankK > 0`` at fit time the exact vectors are stored too, and
the best ``rerankK`` ADC candidates are re-ranked by exact distance.

The dimension is zero-padded to a multiple of ``pqSubvectors``, which changes
no distance.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from .base import (
    LOADED_ROW_BYTES,
    PartitionContext,
    PartitionIndex,
    SearchKnobs,
    StoredPartition,
    TypeParams,
    checked_labels,
    exact_among,
    padded,
    param,
    strict_json,
    unpacked_header,
)

_PAYLOAD = struct.Struct("<8sQ")  # magic, json length
_PAYLOAD_MAGIC = b"SANNPQ02"
_PAYLOAD_FAMILY = b"SANNPQ0"  # SANNPQ0<version>
_CODEBOOK = struct.Struct("<8sIII")  # magic, m, ksub, dsub
_CODEBOOK_MAGIC = b"SANNPQCB"
_MAX_HEADER_BYTES = 1 << 16
TRAIN_ROWS = 65_536  # rows a codebook is trained on at most
NBITS = (4, 8)


def padded_dim(dim: int, subvectors: int) -> int:
    """Dimension rounded up to a multiple of ``subvectors`` (zeros are appended)."""
    return -(-dim // subvectors) * subvectors


def pad(vectors: np.ndarray, width: int) -> np.ndarray:
    """Append zero columns up to ``width``; distances and inner products are unchanged."""
    vectors = np.asarray(vectors, dtype=np.float32)
    extra = width - vectors.shape[1]
    return np.ascontiguousarray(vectors if extra == 0 else np.pad(vectors, ((0, 0), (0, extra))))


def code_size(m: int, nbits: int) -> int:
    return (m * nbits + 7) // 8


def train_codebook(residuals: np.ndarray, m: int, nbits: int, seed: int) -> np.ndarray:
    """Codewords (m, 2**nbits, dsub) of a product quantizer trained on ``residuals``
    (padded), on a seeded sample of at most ``TRAIN_ROWS`` rows."""
    residuals = np.ascontiguousarray(residuals, dtype=np.float32)
    if len(residuals) > TRAIN_ROWS:
        pick = np.random.default_rng(seed).choice(len(residuals), TRAIN_ROWS, replace=False)
        residuals = residuals[np.sort(pick)]
    ksub, dsub = 1 << nbits, residuals.shape[1] // m
    if len(residuals) < ksub:  # too few rows for k-means: the rows themselves, cycled
        sub = residuals.reshape(len(residuals), m, dsub).transpose(1, 0, 2)
        if len(residuals) == 0:
            return np.zeros((m, ksub, dsub), np.float32)
        return np.ascontiguousarray(np.stack([np.resize(s, (ksub, dsub)) for s in sub]))
    quantizer = faiss.ProductQuantizer(residuals.shape[1], m, nbits)
    quantizer.cp.seed = seed
    quantizer.cp.niter = 20
    quantizer.cp.min_points_per_centroid = 1  # few rows are fine (and not worth a warning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantizer.train(residuals)
    return faiss.vector_to_array(quantizer.centroids).reshape(m, ksub, dsub).astype(np.float32)


def codebook_to_bytes(codewords: np.ndarray) -> bytes:
    m, ksub, dsub = codewords.shape
    return _CODEBOOK.pack(_CODEBOOK_MAGIC, m, ksub, dsub) + np.ascontiguousarray(
        codewords, dtype="<f4").tobytes()


def codebook_from_bytes(data, m: int, nbits: int, width: int) -> np.ndarray:
    """Codewords checked against the index's ``m``, ``nbits`` and padded width."""
    view, (magic, got_m, ksub, dsub) = unpacked_header(data, _CODEBOOK, "PQ codebook")
    if magic != _CODEBOOK_MAGIC or (got_m, ksub, got_m * dsub) != (m, 1 << nbits, width):
        raise ValueError(f"PQ codebook does not match the index (m={m}, bits={nbits}, "
                         f"padded dimension {width})")
    if len(view) != _CODEBOOK.size + 4 * m * ksub * dsub:
        raise ValueError("PQ codebook is damaged: wrong length")
    codewords = np.frombuffer(view[_CODEBOOK.size:], dtype="<f4").reshape(m, ksub, dsub)
    if not np.isfinite(codewords).all():
        raise ValueError("PQ codebook is damaged: non-finite codewords")
    return codewords.astype(np.float32)


@dataclass(frozen=True)
class PQBuildParams(TypeParams):
    """Code settings of PQ partitions."""

    subvectors: int = param("pqSubvectors")
    bits: int = param("pqBits")
    codebook: str = param("pqCodebook")
    # > 0 at fit: partitions also store the exact vectors, for re-ranking
    rerank_k: int = param("rerankK", default=0)


@dataclass(frozen=True)
class PQKnobs(SearchKnobs):
    """How many ADC candidates a PQ search re-ranks by exact distance (0: none)."""

    rerank_k: int = 0

    @property
    def needs_vectors(self) -> bool:
        return self.rerank_k > 0

    def settings(self):
        return {"rerankK": self.rerank_k}


class PQIndex(PartitionIndex):
    """IVFADC codes of one partition, searched with faiss."""

    name = "pq"
    Params = PQBuildParams
    Knobs = PQKnobs
    search_params = ("rerankK",)

    RERANK_FACTORS = (1, 2, 4, 8, 16, 32, 64)

    @classmethod
    def search_ladder(cls, k, params):
        if not cls.keeps_vectors(params):
            return [{"rerankK": 0}]
        return [{"rerankK": k * f} for f in cls.RERANK_FACTORS]

    @classmethod
    def probe_cost(cls, setting, rows, dim):
        return rows / 64.0 + float(setting.get("rerankK", 0)) * dim / 64.0

    @classmethod
    def fixed_search_defaults(cls, params, k):
        return {"rerankK": PQBuildParams.of(params).rerank_k}

    @classmethod
    def search_knobs(cls, setting, threads=1):
        return PQKnobs(threads=threads, rerank_k=int(setting.get("rerankK") or 0))

    @classmethod
    def check_params(cls, params, dim):
        subvectors = PQBuildParams.of(params).subvectors
        if subvectors > dim:
            raise ValueError(f"pqSubvectors={subvectors} is larger than the dimension {dim}")

    @classmethod
    def keeps_vectors(cls, params):
        return PQBuildParams.of(params).rerank_k > 0

    @classmethod
    def stored_row_bytes(cls, params, dim):
        spec = PQBuildParams.of(params)
        vectors = 4 * dim if spec.rerank_k > 0 else 0
        return code_size(spec.subvectors, spec.bits) + vectors + 16

    @classmethod
    def summary_extra(cls, rows, sq_errors):
        return {"pqReconstructionRMSE": (sum(sq_errors) / max(sum(rows), 1)) ** 0.5}

    @classmethod
    def loaded_bytes_factor(cls, params, dim):
        # a row's code is held twice (the array updates use and faiss's inverted list),
        # with faiss's 8-byte label, the caller's id and its hidden mark
        spec = PQBuildParams.of(params)
        size = code_size(spec.subvectors, spec.bits)
        return 2.0 + (8 + LOADED_ROW_BYTES) / size

    @classmethod
    def loaded_bytes(cls, stored_bytes, partitions, params, dim):
        # the codebook is held twice by each loaded partition (its codewords and faiss's),
        # whether it was stored with the partition or once for the index
        spec = PQBuildParams.of(params)
        codebook = _CODEBOOK.size + 4 * (1 << spec.bits) * padded_dim(dim, spec.subvectors)
        codes = stored_bytes
        if spec.codebook != "global":
            codes = max(stored_bytes - partitions * codebook, 0)
        return int(cls.loaded_bytes_factor(params, dim) * codes + 2 * partitions * codebook)

    def __init__(self, context: PartitionContext, codewords: np.ndarray, codes: np.ndarray,
                 vectors: np.ndarray | None, sq_error: float = 0.0):
        self.context = context
        code_params = PQBuildParams.of(context.params)
        self.m, self.nbits = code_params.subvectors, code_params.bits
        self.width = padded_dim(context.dim, self.m)
        self.codewords, self.codes, self.vectors = codewords, codes, vectors
        self.count = len(codes)
        self.sq_error = sq_error
        self.hidden = np.zeros(self.count, dtype=bool)
        self._bitmap: np.ndarray | None = None
        self._index = self._faiss_index()

    # ----------------------------------------------------------------- building

    @classmethod
    def train_shared(cls, sample, residuals, context, seed):
        spec = PQBuildParams.of(context.params)
        if spec.codebook != "global":
            return b""
        m, nbits = spec.subvectors, spec.bits
        width = padded_dim(context.dim, m)
        return codebook_to_bytes(train_codebook(pad(residuals, width), m, nbits, seed))

    @classmethod
    def build(cls, vectors, context, seed, threads):
        spec = PQBuildParams.of(context.params)
        m, nbits = spec.subvectors, spec.bits
        width = padded_dim(context.dim, m)
        residuals = pad(np.asarray(vectors, np.float32) - _centroid(context), width)
        if context.shared:
            codewords = codebook_from_bytes(context.shared, m, nbits, width)
        else:
            codewords = train_codebook(residuals, m, nbits, seed)
        codes = _encode(codewords, residuals, nbits)
        error = float(((residuals - _decode(codewords, codes, nbits)) ** 2).sum())
        keep = np.array(vectors, np.float32) if spec.rerank_k > 0 else None
        return cls(context, codewords, codes, keep, error)

    @classmethod
    def load(cls, stored, context, with_vectors=False):
        spec = PQBuildParams.of(context.params)
        m, nbits = spec.subvectors, spec.bits
        width = padded_dim(context.dim, m)
        codewords = codebook_from_bytes(context.shared or stored.codebook, m, nbits, width)
        codes = _codes_from_payload(stored.payload, m, nbits)
        vectors = None
        if with_vectors:
            if stored.vectors is None:
                raise ValueError("this PQ index stores no exact vectors (rerankK was 0 at "
                                 "fit); re-ranking and rebalance need them")
            if len(stored.vectors) != len(codes) * 4 * context.dim:
                raise ValueError("PQ exact vectors are damaged: wrong length")
            vectors = np.frombuffer(stored.vectors, "<f4").reshape(len(codes), context.dim)
            if not np.isfinite(vectors).all():
                raise ValueError("PQ exact vectors are damaged: non-finite values")
        return cls(context, codewords, codes, vectors, stored.sq_error)

    def store(self):
        head = json.dumps({"n": self.count, "m": self.m, "nbits": self.nbits}).encode()
        payload = _PAYLOAD.pack(_PAYLOAD_MAGIC, len(head)) + head + self.codes.tobytes()
        codebook = b"" if self.context.shared else codebook_to_bytes(self.codewords)
        vectors = None if self.vectors is None else np.ascontiguousarray(
            self.vectors, "<f4").tobytes()
        return StoredPartition(payload, codebook, vectors, self.sq_error)

    # ---------------------------------------------------------------- searching

    def _faiss_index(self):
        metric = self.context.metric
        kind = faiss.METRIC_INNER_PRODUCT if metric.faiss_inner_product else faiss.METRIC_L2
        quantizer = faiss.IndexFlat(self.width, kind)
        quantizer.add(pad(_centroid(self.context)[None], self.width))
        index = faiss.IndexIVFPQ(quantizer, self.width, 1, self.m, self.nbits, kind)
        faiss.copy_array_to_vector(self.codewords.ravel(), index.pq.centroids)
        index.is_trained = True
        if self.count:
            labels = np.arange(self.count, dtype=np.int64)
            index.invlists.add_entries(0, self.count, faiss.swig_ptr(labels),
                                       faiss.swig_ptr(self.codes))
        index.ntotal = self.count
        index.nprobe = 1
        if self.nbits == 4:
            fast = faiss.IndexIVFPQFastScan(index)
            fast.nprobe = 1
            fast.own_fields = False
            # faiss's wrapper keeps the source index (and its copy of the codes) alive
            # for the copy's lifetime; the copy needs only the quantizer
            fast.referenced_objects = [quantizer]
            self._keep = (quantizer,)
            return fast
        index.own_fields = False
        self._keep = (quantizer,)
        return index

    def hide(self, labels):
        labels = checked_labels(labels, self.count)
        self.hidden[labels] = True
        self._bitmap = np.packbits(~self.hidden, bitorder="little") if self.hidden.any() else None

    def _params(self, allowed: np.ndarray | None):
        """faiss search parameters that skip hidden rows (and rows not ``allowed``)."""
        if allowed is None and self._bitmap is None:
            return None, None
        bitmap = np.packbits(allowed, bitorder="little") if allowed is not None else self._bitmap
        assert bitmap is not None
        selector = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bitmap))
        params = faiss.SearchParametersIVF()
        params.sel, params.nprobe = selector, 1
        return params, (bitmap, selector)

    def _adc(self, queries, depth: int, threads: int, allowed=None):
        queries = pad(queries, self.width)
        params, keep_alive = self._params(allowed)
        faiss.omp_set_num_threads(max(1, threads))
        raw, labels = self._index.search(queries, depth, params=params)
        del keep_alive
        labels = labels.astype(np.int64)
        dists = self.context.metric.from_faiss(raw)
        dists[labels < 0] = np.inf
        return labels, dists

    def search(self, queries, k, knobs: SearchKnobs):
        queries = np.asarray(queries, np.float32)
        if self.count == 0 or len(queries) == 0:
            return padded(np.empty((len(queries), 0), np.int64),
                          np.empty((len(queries), 0), np.float32), k)
        rerank = self.own_knobs(knobs).rerank_k if self.vectors is not None else 0
        labels, dists = self._adc(queries, max(k, rerank), knobs.threads)
        if rerank:
            labels, dists = self._rerank(queries, labels, k)
        return padded(labels[:, :k], dists[:, :k], k)

    def _rerank(self, queries, candidates, k):
        """Exact distances of the ADC candidates, vectorised over all queries."""
        assert self.vectors is not None
        dists = self.context.metric.among(queries, self.vectors, candidates)
        order = np.argsort(dists, axis=1, kind="stable")[:, :k]
        return (np.take_along_axis(candidates, order, axis=1),
                np.take_along_axis(dists, order, axis=1))

    def search_subset(self, query, labels, k, knobs):
        labels = checked_labels(labels, self.count)
        labels = labels[~self.hidden[labels]]
        if self.vectors is not None:
            return exact_among(self.vectors[labels], labels, query, k, self.context.metric)
        allowed = np.zeros(self.count, dtype=bool)
        allowed[labels] = True
        found, dists = self._adc(np.asarray(query, np.float32)[None], k, knobs.threads, allowed)
        return padded(found, dists, k)

    in_graph_filter = True

    def filtered_method(self, passing, live):
        return "graph"  # the bitmap-filtered ADC scan, re-ranked like a plain search

    def search_in_graph(self, queries, live, k, knobs):
        queries = np.asarray(queries, np.float32)
        rerank = self.own_knobs(knobs).rerank_k if self.vectors is not None else 0
        labels, dists = self._adc(queries, max(k, rerank), knobs.threads, live)
        if rerank:
            labels, dists = self._rerank(queries, labels, k)
        return labels[:, :k], dists[:, :k]

    # ---------------------------------------------------------------- updating

    def add(self, vectors, threads):
        vectors = np.asarray(vectors, np.float32)
        if len(vectors) == 0:
            return
        residuals = pad(vectors - _centroid(self.context), self.width)
        codes = _encode(self.codewords, residuals, self.nbits)
        self.sq_error += float(((residuals - _decode(self.codewords, codes, self.nbits)) ** 2)
                               .sum())
        self.codes = np.concatenate([self.codes, codes])
        if self.vectors is not None:
            self.vectors = np.concatenate([self.vectors, vectors])
        self.count = len(self.codes)
        self.hidden = np.concatenate([self.hidden, np.zeros(len(vectors), dtype=bool)])
        self.hide(np.flatnonzero(self.hidden))
        self._index = self._faiss_index()

    def compact(self, keep, seed, threads):
        keep = checked_labels(keep, self.count)
        residuals = _decode(self.codewords, self.codes[keep], self.nbits)
        exact = None if self.vectors is None else self.vectors[keep]
        error = self.sq_error * len(keep) / max(self.count, 1)
        if exact is not None:
            target = pad(exact - _centroid(self.context), self.width)
            error = float(((target - residuals) ** 2).sum())
        return PQIndex(self.context, self.codewords, np.ascontiguousarray(self.codes[keep]),
                       exact, error)

    def live_vectors(self, labels):
        if self.vectors is None:
            raise ValueError("this PQ index stores no exact vectors (rerankK was 0 at fit); "
                             "fit a new index from the source data instead")
        return self.vectors[np.asarray(labels, dtype=np.int64)]

    def memory_bytes(self):
        vectors = 0 if self.vectors is None else self.vectors.nbytes
        # the codes twice (this copy, which store/add/compact use, and faiss's inverted
        # list) and faiss's 8-byte label per row; the codewords twice (theirs and faiss's)
        return int(2 * self.codes.nbytes + 8 * self.count + vectors
                   + 2 * self.codewords.nbytes + 1024)


def _centroid(context: PartitionContext) -> np.ndarray:
    if context.centroid is None:
        raise ValueError("a PQ partition needs its coarse centroid")
    return np.asarray(context.centroid, np.float32)


def _quantizer(codewords: np.ndarray, nbits: int) -> faiss.ProductQuantizer:
    m, _, dsub = codewords.shape
    quantizer = faiss.ProductQuantizer(m * dsub, m, nbits)
    faiss.copy_array_to_vector(np.ascontiguousarray(codewords).ravel(), quantizer.centroids)
    return quantizer


def _encode(codewords: np.ndarray, residuals: np.ndarray, nbits: int) -> np.ndarray:
    if len(residuals) == 0:
        return np.empty((0, code_size(codewords.shape[0], nbits)), np.uint8)
    return np.ascontiguousarray(_quantizer(codewords, nbits).compute_codes(residuals))


def _decode(codewords: np.ndarray, codes: np.ndarray, nbits: int) -> np.ndarray:
    if len(codes) == 0:
        return np.empty((0, codewords.shape[0] * codewords.shape[2]), np.float32)
    quantizer: Any = _quantizer(codewords, nbits)  # faiss's wrapper returns the decoded rows
    return quantizer.decode(np.ascontiguousarray(codes))


def _codes_from_payload(data, m: int, nbits: int) -> np.ndarray:
    view, (magic, head_len) = unpacked_header(data, _PAYLOAD, "PQ payload")
    if magic[:7] == _PAYLOAD_FAMILY and magic[7:].isdigit() and magic[7:] > _PAYLOAD_MAGIC[7:]:
        raise ValueError(f"PQ payload {magic.decode()} is in a newer format; upgrade "
                         "sparkann to read it")
    if magic != _PAYLOAD_MAGIC or head_len > min(_MAX_HEADER_BYTES, len(view) - _PAYLOAD.size):
        raise ValueError("PQ payload is damaged: bad header")
    try:
        head = strict_json(bytes(view[_PAYLOAD.size:_PAYLOAD.size + head_len]))
        n, got_m, got_bits = (_count(head[key]) for key in ("n", "m", "nbits"))
    except (ValueError, KeyError, TypeError):
        raise ValueError("PQ payload is damaged: unreadable header") from None
    if (got_m, got_bits) != (m, nbits):
        raise ValueError(f"PQ payload has m={got_m}, bits={got_bits}; the index has "
                         f"m={m}, bits={nbits}")
    body = view[_PAYLOAD.size + head_len:]
    size = code_size(m, nbits)
    if n < 0 or len(body) != n * size:
        raise ValueError(f"PQ payload is damaged: {len(body)} code bytes for {n} rows")
    return np.frombuffer(body, np.uint8).reshape(n, size).copy()


def _count(value) -> int:
    """A header integer: not a bool, a float or text."""
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


