"""HNSW partitions (hnswlib): a graph per partition, in a pickle-free byte format.

The payload is a JSON header of hnswlib's scalar state followed by its raw
arrays. Every length, offset, label and graph link is checked before hnswlib
sees it; the header must match the index (dimension, space) and allocate no
more elements than it holds. Deletion marks are never part of a payload: they
are cleared at load and set from the partition's delete files.
"""

from __future__ import annotations

import io
import json
import struct

import hnswlib
import numpy as np

from .base import (
    SUBSET_SCAN_ROWS,
    SUBSET_SCAN_SHARE,
    PartitionContext,
    PartitionIndex,
    SearchKnobs,
    StoredPartition,
    checked_labels,
    exact_among,
    padded,
)

MAGIC = b"SANNHNSW"
FORMAT_VERSION = 1
_ARRAY_FIELDS = {
    "label_lookup_external": np.uint64,
    "label_lookup_internal": np.uint32,
    "element_levels": np.int32,
    "data_level0": np.int8,
    "link_lists": np.int8,
}
_SCALAR_TYPES = (int, float, bool, str)
_HEADER = struct.Struct("<8sIQ")  # magic, format version, json length
_MAX_HEADER_BYTES = 1 << 20
_MAX_M = 2048
_DELETE_MARK_BYTE = 2  # hnswlib keeps a row's deletion mark in its level-0 link header


class HNSWIndex(PartitionIndex):
    """An hnswlib graph over a partition's prepared vectors."""

    name = "hnsw"
    build_params = ("hnswM", "efConstruction")

    EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

    @classmethod
    def search_ladder(cls, k, params):
        return [{"efSearch": ef} for ef in sorted({max(k, e) for e in cls.EF_LADDER})]

    @classmethod
    def probe_cost(cls, setting, rows, dim):
        return float(setting["efSearch"]) * (1.0 + np.log2(np.maximum(rows, 2)) / 16.0)

    def __init__(self, graph: hnswlib.Index, context: PartitionContext):
        self.graph = graph
        self.context = context
        self.count = graph.get_current_count()
        self.hidden = np.zeros(self.count, dtype=bool)

    @classmethod
    def build(cls, vectors, context, seed, threads):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        graph = hnswlib.Index(space=context.metric.hnsw_space, dim=context.dim)
        graph.init_index(max_elements=len(vectors), M=int(context.params["hnswM"]),
                         ef_construction=int(context.params["efConstruction"]),
                         random_seed=seed)
        if len(vectors):
            graph.add_items(vectors, np.arange(len(vectors)), num_threads=threads)
        return cls(graph, context)

    @classmethod
    def load(cls, stored, context, with_vectors=False):
        graph = graph_from_bytes(stored.payload, context.dim, context.metric.hnsw_space)
        return cls(graph, context)

    def store(self):
        return StoredPartition(payload=graph_to_bytes(self.graph))

    @property
    def live(self) -> int:
        return int(self.count - self.hidden.sum())

    def hide(self, labels):
        labels = checked_labels(labels, self.count)
        for label in labels[~self.hidden[labels]].tolist():
            self.graph.mark_deleted(label)
        self.hidden[labels] = True

    def search(self, queries, k, knobs: SearchKnobs):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        width = min(k, self.live)
        if width == 0 or len(queries) == 0:
            return padded(np.empty((len(queries), 0), np.int64),
                          np.empty((len(queries), 0), np.float32), k)
        self.graph.set_ef(max(knobs.ef_search, width))
        try:
            labels, raw = self.graph.knn_query(queries, k=width, num_threads=knobs.threads)
            labels = labels.astype(np.int64)
        except RuntimeError:  # a query the graph cannot fill (deletions): one by one
            labels, raw = _search_one_by_one(self.graph, queries, width)
        return padded(labels, self.context.metric.from_hnsw(raw), k)

    def search_subset(self, query, labels, k, knobs):
        labels = checked_labels(labels, self.count)
        labels = labels[~self.hidden[labels]]
        if len(labels) <= max(SUBSET_SCAN_ROWS, SUBSET_SCAN_SHARE * self.count):
            return exact_among(self.live_vectors(labels), labels, query, k, self.context.metric)
        allowed = np.zeros(self.count, dtype=bool)
        allowed[labels] = True
        self.graph.set_ef(max(knobs.ef_search, k))
        found, raw = _search_one_by_one(self.graph, query[None], min(k, len(labels)),
                                        lambda label: bool(allowed[label]))
        return padded(found, self.context.metric.from_hnsw(raw), k)

    def add(self, vectors, threads):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return
        self.graph.resize_index(self.count + len(vectors))
        labels = np.arange(self.count, self.count + len(vectors))
        self.graph.add_items(vectors, labels, num_threads=threads)
        self.count += len(vectors)
        self.hidden = np.concatenate([self.hidden, np.zeros(len(vectors), dtype=bool)])

    def compact(self, keep, seed, threads):
        return HNSWIndex.build(self.live_vectors(keep), self.context, seed, threads)

    def live_vectors(self, labels):
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) == 0:
            return np.empty((0, self.context.dim), np.float32)
        vectors = np.asarray(self.graph.get_items(labels), dtype=np.float32)
        return vectors.reshape(len(labels), self.context.dim)

    def memory_bytes(self):
        state_per_row = self.graph.dim * 4 + 8 * (self.graph.M * 2 + 2) + 16
        return int(self.count * state_per_row + 1024)


def _search_one_by_one(graph, queries, k, filter=None):
    """Each query alone, shrinking k until the graph can fill it; the rest padded."""
    labels = np.full((len(queries), k), -1, np.int64)
    raw = np.full((len(queries), k), np.inf, np.float32)
    for row, query in enumerate(queries):
        for width in range(k, 0, -1):
            try:
                found, dist = graph.knn_query(query[None], k=width, num_threads=1,
                                              filter=filter)
            except RuntimeError:
                continue
            labels[row, :width] = found[0]
            raw[row, :width] = dist[0]
            break
    return labels, raw


def graph_to_bytes(graph: hnswlib.Index) -> bytes:
    """A JSON header of scalars, then the raw arrays; no pickle, no deletion marks."""
    state = dict(graph.__getstate__()[0])
    count = int(state["cur_element_count"])
    state["max_elements"] = count  # never allocate more than is stored
    level0 = np.array(state["data_level0"], dtype=np.int8, copy=True)
    _clear_marks(level0, count, int(state["size_data_per_element"]))
    state["data_level0"], state["has_deletions"] = level0, False
    scalars = {k: v for k, v in state.items() if k not in _ARRAY_FIELDS}
    arrays = [np.ascontiguousarray(state[name], dtype=dt) for name, dt in _ARRAY_FIELDS.items()]
    header = {"scalars": scalars, "arrays": {n: len(a) for n, a in zip(_ARRAY_FIELDS, arrays)}}
    head = json.dumps(header, sort_keys=True).encode()
    out = io.BytesIO()
    out.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(head)))
    out.write(head)
    for array in arrays:
        out.write(array.tobytes())
    return out.getvalue()


def graph_from_bytes(data, dim: int, space: str) -> hnswlib.Index:
    """Load a graph written by :func:`graph_to_bytes` for vectors of ``dim`` in hnswlib
    ``space``; every field is checked first."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise ValueError("HNSW payload is damaged: shorter than its header")
    magic, version, head_len = _HEADER.unpack(view[: _HEADER.size])
    if magic != MAGIC:
        raise ValueError("HNSW payload is damaged: bad magic bytes")
    if version > FORMAT_VERSION:
        raise ValueError(f"HNSW payload format {version} is newer than supported {FORMAT_VERSION}")
    if head_len > min(_MAX_HEADER_BYTES, len(view) - _HEADER.size):
        raise ValueError("HNSW payload is damaged: header length out of bounds")
    offset = _HEADER.size + head_len
    try:
        header = json.loads(bytes(view[_HEADER.size:offset]))
        scalars, counts = dict(header["scalars"]), dict(header["arrays"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"HNSW payload is damaged: unreadable header ({err})") from None
    if not all(isinstance(v, _SCALAR_TYPES) for v in scalars.values()):
        raise ValueError("HNSW payload is damaged: header holds a non-scalar field")
    state = dict(scalars)
    _check_header(state, dim, space)
    for name, dtype in _ARRAY_FIELDS.items():
        count = counts.get(name)
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"HNSW payload is damaged: bad length for array {name!r}")
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(view):
            raise ValueError(f"HNSW payload is damaged: array {name!r} is truncated")
        state[name] = np.frombuffer(view[offset:offset + nbytes], dtype=dtype).copy()
        offset += nbytes
    if offset != len(view):
        raise ValueError("HNSW payload is damaged: trailing bytes after the arrays")
    _check_arrays(state)
    _clear_marks(state["data_level0"], int(state["cur_element_count"]),
                 int(state["size_data_per_element"]))
    state["has_deletions"] = False
    graph = hnswlib.Index.__new__(hnswlib.Index)
    graph.__setstate__((state,))
    return graph


def _check_header(state: dict, want_dim: int, space: str) -> None:
    """The scalars must describe this index and allocate nothing beyond what is stored."""
    try:
        n = int(state["cur_element_count"])
        dim, max_m, max_m0 = int(state["dim"]), int(state["max_M"]), int(state["max_M0"])
        per_element = int(state["size_data_per_element"])
        ok = (
            int(state["max_elements"]) == n >= 0
            and 1 <= max_m <= _MAX_M and max_m0 == 2 * max_m
            and int(state["offset_data"]) == 4 * (max_m0 + 1)
            and int(state["size_links_per_element"]) == 4 * (max_m + 1)
            and per_element == int(state["offset_data"]) + 4 * dim + 8
            and int(state["label_offset"]) == int(state["offset_data"]) + 4 * dim
            and int(state["offset_level0"]) == 0
            and (n == 0 or 0 <= int(state["enterpoint_node"]) < n)
            and -1 <= int(state["max_level"]) <= 64
        )
    except (KeyError, TypeError, ValueError):
        raise ValueError("HNSW payload is damaged: missing header fields") from None
    if not ok:
        raise ValueError("HNSW payload is damaged: inconsistent header")
    if dim != want_dim:
        raise ValueError(f"HNSW payload has dimension {dim}, but the index has {want_dim}")
    if state.get("space") != space:
        raise ValueError(f"HNSW payload has space {state.get('space')!r}; the index needs "
                         f"{space!r}")


def _check_arrays(state: dict) -> None:
    """Cross-check every size and link hnswlib would otherwise trust blindly."""
    n = int(state["cur_element_count"])
    per_element, offset_data = int(state["size_data_per_element"]), int(state["offset_data"])
    max_m0, max_m = int(state["max_M0"]), int(state["max_M"])
    levels = state["element_levels"]
    expected = {
        "label_lookup_external": n,
        "label_lookup_internal": n,
        "element_levels": n,
        "data_level0": n * per_element,
        "link_lists": int(np.maximum(levels, 0).sum()) * int(state["size_links_per_element"]),
    }
    bad = [k for k, v in expected.items() if len(state[k]) != v]
    if bad or (n and (levels.min() < 0 or levels.max() > int(state["max_level"]))):
        raise ValueError(f"HNSW payload is damaged: inconsistent sizes {bad or ''}".strip())
    level0 = state["data_level0"].view(np.uint8).reshape(n, per_element)[:, :offset_data]
    _check_links(level0.copy().view(np.uint32), max_m0, n)
    _check_links(state["link_lists"].view(np.uint32).reshape(-1, max_m + 1), max_m, n)
    for name in ("label_lookup_internal", "label_lookup_external"):
        if n and state[name].max() >= n:
            raise ValueError("HNSW payload is damaged: label table out of range")
    labels = state["data_level0"].view(np.uint8).reshape(n, per_element)[
        :, int(state["label_offset"]):int(state["label_offset"]) + 8]
    if n and (labels.copy().view(np.uint64).ravel() >= n).any():
        raise ValueError("HNSW payload is damaged: row labels out of range")


def _check_links(blocks: np.ndarray, max_links: int, n: int) -> None:
    """Each block is [count, id_1..id_max]; counts and used ids must be in range."""
    counts = blocks[:, 0] & 0xFFFF
    used = np.arange(max_links)[None, :] < counts[:, None]
    if (counts > max_links).any() or (blocks[:, 1:][used] >= n).any():
        raise ValueError("HNSW payload is damaged: graph links out of range")


def _clear_marks(level0: np.ndarray, count: int, per_element: int) -> None:
    """Zero each row's deletion mark in place (the third byte of its link header)."""
    if count:
        rows = level0.view(np.uint8).reshape(count, per_element)
        rows[:, _DELETE_MARK_BYTE] = 0
