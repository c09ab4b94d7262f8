"""One partition's index, HNSW graph or PQ codes, behind one interface. No Spark.

Both kinds answer ``search`` (a batch of queries) and ``search_subset`` (one
query restricted to some row labels, Rii-style) with row labels ``0..n-1`` and
distances in the package convention (smaller is better).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from . import exact, hnsw, pq

# A subset at most this large (or this share of the partition) is scanned
# exactly instead of walking a filtered graph.
SUBSET_SCAN_ROWS = 4096
SUBSET_SCAN_SHARE = 0.1


@dataclass(frozen=True)
class PQSettings:
    subvectors: int = 16
    nbits: int = 8
    codebook: str = "partition"  # or "global"
    rerank_k: int = 0
    train_rows: int = 65_536
    max_iter: int = 20


def padded_dim(dim: int, subvectors: int) -> int:
    """Dimension rounded up to a multiple of ``subvectors`` (zeros are appended)."""
    return -(-dim // subvectors) * subvectors


def pad(vectors: np.ndarray, width: int) -> np.ndarray:
    """Append zero columns up to ``width``; distances and inner products are unchanged."""
    extra = width - vectors.shape[1]
    return vectors if extra == 0 else np.pad(vectors, ((0, 0), (0, extra)))


def exact_subset(vectors: np.ndarray, query: np.ndarray, labels: np.ndarray, k: int, metric: str):
    """Exact top-k of ``query`` among ``vectors[labels]``."""
    dists = exact.pairwise_distances(query[None], vectors[labels], metric)
    order, best = exact.top_k(dists, k)
    return labels[order[0]][None], best


class HNSWPartition:
    kind = "hnsw"

    def __init__(self, graph):
        self.graph = graph
        self.count = graph.get_current_count()
        self.deleted = np.empty(0, np.int64)

    @property
    def live(self) -> int:
        return self.count - len(self.deleted)

    def delete(self, labels) -> None:
        """Hide rows from every answer; the graph keeps routing through them."""
        labels = np.unique(np.asarray(labels, dtype=np.int64))
        if len(labels) and (labels.min() < 0 or labels.max() >= self.count):
            raise ValueError("deleted labels out of range")
        for label in np.setdiff1d(labels, self.deleted).tolist():
            self.graph.mark_deleted(label)
        self.deleted = np.union1d(self.deleted, labels)

    @classmethod
    def build(cls, vectors, metric, M, ef_construction, seed, threads):
        return cls(hnsw.build(vectors, metric, M, ef_construction, seed, threads))

    def payload(self) -> bytes:
        return hnsw.to_bytes(self.graph)

    def add(self, vectors: np.ndarray, threads: int = 1) -> None:
        """Insert rows labelled ``count..count+n-1`` into the existing graph."""
        self.graph.resize_index(self.count + len(vectors))
        labels = np.arange(self.count, self.count + len(vectors))
        self.graph.add_items(np.ascontiguousarray(vectors, np.float32), labels, num_threads=threads)
        self.count += len(vectors)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, vectors) of the rows not deleted."""
        labels = np.setdiff1d(np.arange(self.count), self.deleted)
        vectors = np.asarray(self.graph.get_items(labels), dtype=np.float32)
        return labels, vectors.reshape(-1, self.graph.dim)

    @classmethod
    def load(cls, payload) -> "HNSWPartition":
        return cls(hnsw.from_bytes(payload))

    def search(self, queries, k, ef, metric, threads=1):
        if self.live == 0:
            return np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32)
        return hnsw.search(self.graph, queries, min(k, self.live), ef, metric, threads)

    def search_subset(self, query, labels, k, ef, metric):
        labels = labels[self._alive(labels)]
        if len(labels) <= max(SUBSET_SCAN_ROWS, SUBSET_SCAN_SHARE * self.count):
            vectors = np.asarray(self.graph.get_items(labels), dtype=np.float32)
            found, dists = exact_subset(vectors, query, np.arange(len(labels)), k, metric)
            return labels[found], dists
        allowed = set(labels.tolist())
        return hnsw.search(self.graph, query[None], k, ef, metric, 1, allowed.__contains__)

    def _alive(self, labels) -> np.ndarray:
        return ~np.isin(labels, self.deleted)


_PQ_MAGIC = b"SANNPQ01"
_PQ_HEADER = struct.Struct("<8sQ")  # magic, json length


def train_codebook(residuals: np.ndarray, settings: PQSettings, seed: int) -> pq.PQCodebook:
    """Seeded per-subspace k-means on (padded) residuals."""
    return pq.train_codebook(residuals, settings.subvectors, settings.nbits, seed,
                             settings.max_iter, settings.train_rows)


class PQPartition:
    """IVFADC: codes of residuals to the partition's centroid, searched by ADC."""

    kind = "pq"

    def __init__(self, codebook: pq.PQCodebook, codes: np.ndarray, centroid: np.ndarray,
                 vectors: np.ndarray | None = None, squared_error: float = 0.0):
        self.codebook, self.codes, self.centroid = codebook, codes, centroid
        self.vectors = vectors  # exact vectors for re-ranking, when stored
        self.count = len(codes)
        self.squared_error = squared_error  # sum of squared reconstruction errors at build
        self.rerank_k = 0  # candidates re-ranked by exact distance (needs vectors)
        self.alive: np.ndarray | None = None  # labels still searchable once rows are deleted

    def delete(self, labels) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return
        if labels.min() < 0 or labels.max() >= self.count:
            raise ValueError("deleted labels out of range")
        self.alive = np.setdiff1d(np.arange(self.count), labels)

    @classmethod
    def build(cls, vectors, centroid, settings: PQSettings, seed: int, codebook=None):
        residuals = pad(vectors - centroid, padded_dim(vectors.shape[1], settings.subvectors))
        if codebook is None:
            codebook = train_codebook(residuals, settings, seed)
        codes = pq.encode(codebook, residuals)
        error = len(codes) * pq.reconstruction_rmse(codebook, residuals, codes) ** 2
        keep = vectors if settings.rerank_k else None
        return cls(codebook, codes, centroid, keep, float(error))

    def payload(self) -> bytes:
        """Header + packed codes; the codebook and vectors are stored apart."""
        head = json.dumps({"n": self.count, "m": self.codebook.m,
                           "nbits": self.codebook.nbits}).encode()
        packed = pq.pack_codes(self.codes, self.codebook.nbits)
        return _PQ_HEADER.pack(_PQ_MAGIC, len(head)) + head + packed.tobytes()

    @classmethod
    def load(cls, payload, codebook: pq.PQCodebook, centroid, vectors=None) -> "PQPartition":
        view = memoryview(payload)
        if len(view) < _PQ_HEADER.size:
            raise ValueError("PQ payload is damaged: shorter than its header")
        magic, head_len = _PQ_HEADER.unpack(view[: _PQ_HEADER.size])
        if magic != _PQ_MAGIC or head_len > len(view) - _PQ_HEADER.size:
            raise ValueError("PQ payload is damaged: bad header")
        try:
            head = json.loads(bytes(view[_PQ_HEADER.size : _PQ_HEADER.size + head_len]))
            n, m, nbits = int(head["n"]), int(head["m"]), int(head["nbits"])
        except (ValueError, KeyError, TypeError):
            raise ValueError("PQ payload is damaged: unreadable header") from None
        if (m, nbits) != (codebook.m, codebook.nbits):
            raise ValueError("PQ payload does not match its codebook")
        body = np.frombuffer(view[_PQ_HEADER.size + head_len :], dtype=np.uint8)
        codes = pq.unpack_codes(body, m, nbits)
        if len(codes) != n or (vectors is not None and len(vectors) != n):
            raise ValueError("PQ payload is damaged: row count mismatch")
        return cls(codebook, codes, np.asarray(centroid, np.float32), vectors)

    def add(self, vectors: np.ndarray, threads: int = 1) -> None:
        """Encode new rows with the existing codebook and append them."""
        residuals = pad(vectors - self.centroid, self.codebook.dim)
        codes = pq.encode(self.codebook, residuals)
        error = pq.reconstruction_rmse(self.codebook, residuals, codes) ** 2 * len(codes)
        self.codes = np.concatenate([self.codes, codes])
        self.squared_error += float(error)
        if self.vectors is not None:
            self.vectors = np.concatenate([self.vectors, vectors])
        self.count = len(self.codes)

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        if self.vectors is None:
            raise ValueError("this PQ index stores no exact vectors (rerankK=0); "
                             "fit a new index from the source data instead")
        labels = np.arange(self.count) if self.alive is None else self.alive
        return labels, self.vectors[labels]

    def _tables(self, queries: np.ndarray, metric: str):
        """ADC tables and the per-query constant to add to table sums."""
        if metric == "l2":
            shifted = pad(queries - self.centroid, self.codebook.dim)
            return pq.adc_tables(self.codebook, shifted, "l2"), np.zeros(len(queries), np.float32)
        tables = pq.adc_tables(self.codebook, pad(queries, self.codebook.dim), "ip")
        return tables, -(queries @ self.centroid).astype(np.float32)

    def _finish(self, raw: np.ndarray, metric: str) -> np.ndarray:
        if metric == "l2":
            return np.sqrt(np.maximum(raw, 0.0))
        return raw + 1.0 if metric == "cosine" else raw

    def search(self, queries, k, ef, metric, threads=1, labels=None):
        """ADC top-k (or top-``rerank_k`` re-ranked exactly) of each query."""
        if self.alive is not None:
            labels = self.alive if labels is None else np.intersect1d(labels, self.alive)
        codes = self.codes if labels is None else self.codes[labels]
        tables, shift = self._tables(queries, metric)
        rerank = self.rerank_k if self.vectors is not None else 0
        depth = max(k, rerank) if rerank else k
        found, raw = pq.adc_topk(tables, codes, depth)
        found = found if labels is None else labels[found]
        if depth == k:
            return found, self._finish(raw + shift[:, None], metric)
        return self._rerank(queries, found, k, metric)

    def _rerank(self, queries, candidates, k, metric):
        out_l = np.empty((len(queries), min(k, candidates.shape[1])), np.int64)
        out_d = np.empty(out_l.shape, np.float32)
        for row, query in enumerate(queries):
            out_l[row], out_d[row] = (x[0] for x in
                                      exact_subset(self.vectors, query, candidates[row], k, metric))
        return out_l, out_d

    def search_subset(self, query, labels, k, ef, metric):
        return self.search(query[None], k, ef, metric, labels=labels)
