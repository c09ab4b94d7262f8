"""HNSW graphs over 8-bit scalar-quantized vectors (faiss ``IndexHNSWSQ``).

The memory-bound HNSW: each vector is stored as one byte per dimension (per-dimension
ranges trained on the partition), so a partition takes about a quarter of an
``hnsw`` partition's vector memory, at a small loss of recall. The graph's arrays and
the codes are stored in sparkann's own checked format, not as a serialized faiss
index: every length, level, offset and link is validated before faiss sees it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import faiss
import numpy as np

from .base import (
    LOADED_ROW_BYTES,
    SUBSET_SCAN_ROWS,
    SUBSET_SCAN_SHARE,
    PartitionContext,
    SearchKnobs,
    StoredPartition,
    checked_labels,
    exact_among,
    padded,
    strict_json,
    unpacked_header,
)
from .hnsw import HNSWBuildParams, HNSWSearch

MAGIC = b"SANNHSQ1"
_HEADER = struct.Struct("<8sQ")  # magic, json length
_MAX_HEADER_BYTES = 1 << 16
_MAX_LEVEL = 64
RANGE_MARGIN = 0.05  # each dimension's trained range, widened by this share each side
_ARRAYS = (("levels", np.int32), ("offsets", np.int64), ("neighbors", np.int32),
           ("trained", np.float32), ("codes", np.uint8))


class HNSWSQIndex(HNSWSearch):
    """An HNSW graph (faiss) over a partition's 8-bit scalar-quantized vectors."""

    name = "hnsw_sq8"
    exact_distances = False
    exact_vectors = False

    @classmethod
    def stored_row_bytes(cls, params, dim):
        return dim + 8 * (HNSWBuildParams.of(params).m + 1) + 16

    @classmethod
    def loaded_bytes_factor(cls, params, dim):
        # a stored row: its 8-bit code, about 2M + 1 links, its level and its offset;
        # loaded, faiss holds the same arrays and the caller adds the row's id and mark
        stored = dim + 8 * HNSWBuildParams.of(params).m + 16
        return 1.0 + LOADED_ROW_BYTES / stored

    def __init__(self, index, context: PartitionContext):
        self.index = index
        self.context = context
        self.count = int(index.ntotal)
        self.hidden = np.zeros(self.count, dtype=bool)
        self._bitmap: np.ndarray | None = None

    # ----------------------------------------------------------------- building

    @classmethod
    def _empty(cls, context: PartitionContext):
        kind = faiss.METRIC_INNER_PRODUCT if context.metric.faiss_inner_product \
            else faiss.METRIC_L2
        quantizer: Any = faiss.ScalarQuantizer.QT_8bit  # an enum value faiss's stubs type apart
        return faiss.IndexHNSWSQ(context.dim, quantizer, HNSWBuildParams.of(context.params).m,
                                 kind)

    @classmethod
    def build(cls, vectors, context, seed, threads):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = cls._empty(context)
        index.hnsw.efConstruction = HNSWBuildParams.of(context.params).ef_construction
        faiss.omp_set_num_threads(max(1, threads))
        if len(vectors):
            storage = _storage(index)
            storage.sq.rangestat_arg = RANGE_MARGIN  # room for rows added later
            index.train(vectors)
        else:  # nothing to learn ranges from: an identity range, set before any add
            _set_trained(index, np.concatenate([np.zeros(context.dim), np.ones(context.dim)]))
        index.add(vectors)
        return cls(index, context)

    @classmethod
    def load(cls, stored, context, with_vectors=False):
        return cls(_from_payload(stored.payload, context, cls._empty(context)), context)

    def store(self):
        return StoredPartition(payload=_to_payload(self.index, self.context))

    # ---------------------------------------------------------------- searching

    def hide(self, labels):
        labels = checked_labels(labels, self.count)
        self.hidden[labels] = True
        self._bitmap = np.packbits(~self.hidden, bitorder="little") if self.hidden.any() else None

    def _search(self, queries, k, ef, threads, allowed=None):
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef, k)
        bitmap = self._bitmap if allowed is None else np.packbits(allowed, bitorder="little")
        if bitmap is not None:
            params.sel = selector = faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bitmap))
        faiss.omp_set_num_threads(max(1, threads))
        raw, labels = self.index.search(np.ascontiguousarray(queries, np.float32), k,
                                        params=params)
        if bitmap is not None:
            del selector
        labels = labels.astype(np.int64)
        dists = self.context.metric.from_faiss(raw)
        dists[labels < 0] = np.inf
        return labels, dists

    def search(self, queries, k, knobs: SearchKnobs):
        width = min(k, int(self.count - self.hidden.sum()))
        if width == 0 or len(queries) == 0:
            return padded(np.empty((len(queries), 0), np.int64),
                          np.empty((len(queries), 0), np.float32), k)
        labels, dists = self._search(queries, width, self.own_knobs(knobs).ef_search,
                                     knobs.threads)
        return padded(labels, dists, k)

    def search_subset(self, query, labels, k, knobs):
        labels = checked_labels(labels, self.count)
        labels = labels[~self.hidden[labels]]
        if len(labels) <= max(SUBSET_SCAN_ROWS, SUBSET_SCAN_SHARE * self.count):
            return exact_among(self.live_vectors(labels), labels, query, k, self.context.metric)
        allowed = np.zeros(self.count, dtype=bool)
        allowed[labels] = True
        found, dists = self._search(np.asarray(query, np.float32)[None], min(k, len(labels)),
                                    self.own_knobs(knobs).ef_search, 1, allowed)
        return padded(found, dists, k)

    in_graph_filter = True

    def search_in_graph(self, queries, live, k, knobs):
        return self._search(queries, k, self.own_knobs(knobs).ef_search, knobs.threads, live)

    # ---------------------------------------------------------------- updating

    def add(self, vectors, threads):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return
        if self.count == 0:  # an empty partition learns its ranges from its first rows
            self.index = HNSWSQIndex.build(vectors, self.context, 0, threads).index
            self.count = int(self.index.ntotal)
            self.hidden = np.zeros(self.count, dtype=bool)
            return
        faiss.omp_set_num_threads(max(1, threads))
        self.index.add(vectors)
        self.count = int(self.index.ntotal)
        self.hidden = np.concatenate([self.hidden, np.zeros(len(vectors), dtype=bool)])
        self.hide(np.flatnonzero(self.hidden))

    def compact(self, keep, seed, threads):
        keep = checked_labels(keep, self.count)
        fresh = self._empty(self.context)
        fresh.hnsw.efConstruction = HNSWBuildParams.of(self.context.params).ef_construction
        _set_trained(fresh, _trained(self.index))  # decoded rows re-encode to the same codes
        faiss.omp_set_num_threads(max(1, threads))
        fresh.add(self.live_vectors(keep))
        return HNSWSQIndex(fresh, self.context)

    def live_vectors(self, labels):
        """The decoded (quantized) vectors of ``labels``."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return np.empty((0, self.context.dim), np.float32)
        codes = _codes(self.index)[labels]
        return _storage(self.index).sa_decode(np.ascontiguousarray(codes))

    def memory_bytes(self):
        hnsw: Any = self.index.hnsw
        return int(self.count * self.context.dim + hnsw.neighbors.size() * 4
                   + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8 + 1024)


def _storage(index):
    return faiss.downcast_index(index.storage)


def _trained(index) -> np.ndarray:
    return faiss.vector_to_array(_storage(index).sq.trained).astype(np.float32)


def _set_trained(index, trained: np.ndarray) -> None:
    storage = _storage(index)
    faiss.copy_array_to_vector(np.asarray(trained, np.float32), storage.sq.trained)
    storage.is_trained = True
    index.is_trained = True


def _codes(index) -> np.ndarray:
    storage = _storage(index)
    return faiss.vector_to_array(storage.codes).reshape(int(index.ntotal), storage.code_size)


def _to_payload(index, context: PartitionContext) -> bytes:
    hnsw: Any = index.hnsw
    arrays: dict[str, np.ndarray] = {
        "levels": faiss.vector_to_array(hnsw.levels).astype(np.int32),
        "offsets": faiss.vector_to_array(hnsw.offsets).astype(np.int64),
        "neighbors": faiss.vector_to_array(hnsw.neighbors).astype(np.int32),
        "trained": _trained(index),
        "codes": _codes(index),
    }
    head = {"n": int(index.ntotal), "dim": context.dim,
            "M": HNSWBuildParams.of(context.params).m,
            "entry": int(hnsw.entry_point), "maxLevel": int(hnsw.max_level),
            "efConstruction": int(hnsw.efConstruction),
            "lengths": {name: int(arrays[name].size) for name, _ in _ARRAYS}}
    text = json.dumps(head, sort_keys=True).encode()
    return b"".join([_HEADER.pack(MAGIC, len(text)), text,
                     *(np.ascontiguousarray(arrays[name], dtype).tobytes()
                       for name, dtype in _ARRAYS)])


def _from_payload(data, context: PartitionContext, index):
    """Validate a payload against the index and load it into ``index`` (empty)."""
    view, (magic, head_len) = unpacked_header(data, _HEADER, "HNSW-SQ payload")
    if magic != MAGIC or head_len > min(_MAX_HEADER_BYTES, len(view) - _HEADER.size):
        raise ValueError("HNSW-SQ payload is damaged: bad header")
    try:
        head = strict_json(bytes(view[_HEADER.size:_HEADER.size + head_len]))
        n, dim, m = (_count(head[key]) for key in ("n", "dim", "M"))
        entry, max_level = _signed(head["entry"]), _signed(head["maxLevel"])
        lengths = {name: _count(head["lengths"][name]) for name, _ in _ARRAYS}
        ef_construction = _count(head.get("efConstruction", 40))
        if ef_construction >= 1 << 31:  # faiss keeps it in an int
            raise ValueError(f"bad efConstruction {ef_construction}")
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        raise ValueError("HNSW-SQ payload is damaged: unreadable header") from None
    want_m = HNSWBuildParams.of(context.params).m
    if dim != context.dim or m != want_m:
        raise ValueError(f"HNSW-SQ payload has dim={dim}, M={m}; the index has "
                         f"dim={context.dim}, M={want_m}")
    expected = {"levels": n, "offsets": n + 1, "trained": 2 * dim, "codes": n * dim}
    if any(lengths[name] != size for name, size in expected.items()):
        raise ValueError("HNSW-SQ payload is damaged: array lengths do not match its rows")
    offset, arrays = _HEADER.size + head_len, {}
    for name, dtype in _ARRAYS:
        nbytes = lengths[name] * np.dtype(dtype).itemsize
        if offset + nbytes > len(view):
            raise ValueError(f"HNSW-SQ payload is damaged: array {name!r} is truncated")
        arrays[name] = np.frombuffer(view[offset:offset + nbytes], dtype=dtype)
        offset += nbytes
    if offset != len(view):
        raise ValueError("HNSW-SQ payload is damaged: trailing bytes")
    cum = faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level).astype(np.int64)
    _check_graph(arrays, n, entry, max_level, cum)
    if not np.isfinite(arrays["trained"]).all():
        raise ValueError("HNSW-SQ payload is damaged: non-finite quantizer ranges")
    hnsw = index.hnsw
    faiss.copy_array_to_vector(arrays["levels"].copy(), hnsw.levels)
    faiss.copy_array_to_vector(arrays["offsets"].astype(np.uint64), hnsw.offsets)
    faiss.copy_array_to_vector(arrays["neighbors"].copy(), hnsw.neighbors)
    hnsw.entry_point, hnsw.max_level = entry, max_level
    hnsw.efConstruction = max(1, ef_construction)
    _set_trained(index, arrays["trained"])
    storage = _storage(index)
    faiss.copy_array_to_vector(arrays["codes"].copy(), storage.codes)
    storage.ntotal = n
    index.ntotal = n
    return index


def _check_graph(arrays: dict, n: int, entry: int, max_level: int, cum: np.ndarray) -> None:
    """Levels, offsets, links and the entry point must form a graph faiss can walk."""
    levels, offsets, neighbors = arrays["levels"], arrays["offsets"], arrays["neighbors"]
    if n == 0:
        if entry != -1 or max_level != -1 or len(neighbors):
            raise ValueError("HNSW-SQ payload is damaged: an empty graph with links")
        return
    if levels.min() < 1 or levels.max() > min(_MAX_LEVEL, len(cum) - 1):
        raise ValueError("HNSW-SQ payload is damaged: node levels out of range")
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), cum[levels]) \
            or offsets[-1] != len(neighbors):
        raise ValueError("HNSW-SQ payload is damaged: link offsets do not match the levels")
    if len(neighbors) and (neighbors.min() < -1 or neighbors.max() >= n):
        raise ValueError("HNSW-SQ payload is damaged: graph links out of range")
    if not 0 <= entry < n or max_level != int(levels[entry]) - 1 \
            or max_level != int(levels.max()) - 1:
        raise ValueError("HNSW-SQ payload is damaged: bad entry point")
    # a link at level L must lead to a node that has level L
    slot_level = _slot_levels(levels, cum)
    used = neighbors >= 0
    if (levels[neighbors[used]] <= slot_level[used]).any():
        raise ValueError("HNSW-SQ payload is damaged: links to nodes below their level")


def _slot_levels(levels: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """The (0-based) level of every neighbour slot, node by node."""
    per_level = np.diff(cum)  # slots of each level
    max_levels = int(levels.max())
    template = np.repeat(np.arange(max_levels), per_level[:max_levels])
    sizes = cum[levels]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return template[np.arange(int(sizes.sum())) - starts]


def _count(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 40:
        raise ValueError(f"bad count {value!r}")
    return value


def _signed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < 1 << 40:
        raise ValueError(f"bad value {value!r}")
    return value

