"""Flat partitions: the prepared vectors themselves, searched exactly (numpy).

For small partitions, where a graph or codes cost more than they save: every
search scans all live rows, so recall is 1 at any setting. The payload is a
small header (magic, row count, dimension) followed by the vectors as
little-endian float32, checked against the index before use.
"""

from __future__ import annotations

import struct

import numpy as np

from ..exact import top_k
from .base import (
    LOADED_ROW_BYTES,
    PartitionIndex,
    StoredPartition,
    checked_labels,
    exact_among,
    padded,
    unpacked_header,
)

MAGIC = b"SANNFLT1"
_HEADER = struct.Struct("<8sQQ")  # magic, rows, dimension
_SCAN_CELLS = 1 << 22  # distances computed at once (queries x rows)


class FlatIndex(PartitionIndex):
    """A partition's prepared vectors, scanned exactly."""

    name = "flat"

    @classmethod
    def loaded_bytes_factor(cls, params, dim):
        return 1.0 + LOADED_ROW_BYTES / (4.0 * dim)

    def __init__(self, vectors: np.ndarray, context):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.context = context
        self.count = len(self.vectors)
        self.hidden = np.zeros(self.count, dtype=bool)

    @classmethod
    def build(cls, vectors, context, seed, threads):
        return cls(np.asarray(vectors, np.float32).reshape(-1, context.dim), context)

    @classmethod
    def load(cls, stored, context, with_vectors=False):
        return cls(vectors_from_payload(stored.payload, context.dim), context)

    def store(self):
        head = _HEADER.pack(MAGIC, self.count, self.context.dim)
        return StoredPartition(payload=head + self.vectors.astype("<f4").tobytes())

    def hide(self, labels):
        self.hidden[checked_labels(labels, self.count)] = True

    def search(self, queries, k, knobs):
        queries = np.asarray(queries, np.float32)
        labels = np.full((len(queries), 0), -1, np.int64)
        dists = np.full((len(queries), 0), np.inf, np.float32)
        if self.count and len(queries):
            step = max(1, _SCAN_CELLS // self.count)
            parts = [self._scan(queries[i:i + step], k) for i in range(0, len(queries), step)]
            labels = np.concatenate([p[0] for p in parts])
            dists = np.concatenate([p[1] for p in parts])
        return padded(labels, dists, k)

    def _scan(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dists = self.context.metric.pairwise(queries, self.vectors).astype(np.float32)
        dists[:, self.hidden] = np.inf
        order, best = top_k(dists, min(k, self.count - int(self.hidden.sum())))
        return order.astype(np.int64), best

    def search_subset(self, query, labels, k, knobs):
        labels = checked_labels(labels, self.count)
        labels = labels[~self.hidden[labels]]
        return exact_among(self.vectors[labels], labels, query, k, self.context.metric)

    def filtered_method(self, passing, live):
        return "scan"

    def add(self, vectors, threads):
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.context.dim)
        self.vectors = np.concatenate([self.vectors, vectors])
        self.hidden = np.concatenate([self.hidden, np.zeros(len(vectors), dtype=bool)])
        self.count = len(self.vectors)

    def compact(self, keep, seed, threads):
        return FlatIndex(self.vectors[checked_labels(keep, self.count)], self.context)

    def live_vectors(self, labels):
        return self.vectors[np.asarray(labels, dtype=np.int64)]

    def memory_bytes(self):
        return int(self.vectors.nbytes + self.hidden.nbytes + 1024)


def vectors_from_payload(data, dim: int) -> np.ndarray:
    """The vectors of a flat payload, checked against the index's dimension."""
    view, (magic, rows, got_dim) = unpacked_header(data, _HEADER, "flat payload")
    if magic != MAGIC:
        raise ValueError("flat payload is damaged: bad magic bytes")
    if got_dim != dim:
        raise ValueError(f"flat payload has dimension {got_dim}, but the index has {dim}")
    if len(view) - _HEADER.size != 4 * rows * dim:
        raise ValueError(f"flat payload is damaged: {len(view) - _HEADER.size} vector bytes "
                         f"for {rows} rows")
    vectors = np.frombuffer(view[_HEADER.size:], "<f4").reshape(rows, dim)
    if not np.isfinite(vectors).all():
        raise ValueError("flat payload is damaged: non-finite values")
    return vectors.astype(np.float32)
