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
import math
import struct
from dataclasses import dataclass

import hnswlib
import numpy as np

from .base import (
    LOADED_ROW_BYTES,
    SUBSET_SCAN_ROWS,
    SUBSET_SCAN_SHARE,
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
_MAX_LEVEL = 64
_NO_ENTRY = (1 << 32) - 1  # hnswlib's entry point of an empty graph (tableint -1)
_MAX_IDS = (1 << 32) - 1  # internal ids are uint32, the last one is the sentinel
_MAX_INT = (1 << 63) - 1
_MAX_C_INT = (1 << 31) - 1
_DELETE_MARK_BYTE = 2  # hnswlib keeps a row's deletion mark in its level-0 link header
# hnswlib allocates 65,536 label locks (a 40-byte std::mutex each) per graph.
_LABEL_LOCK_BYTES = 65_536 * 40
# A loaded row's memory beyond its stored bytes: hnswlib's label map entry, its
# per-row lock, its link-list pointer and visited-list slot, and the caller's id and
# hidden mark (measured: about 80 bytes).
_LOADED_ROW_EXTRA = 71 + LOADED_ROW_BYTES


DEFAULT_EF = 64  # efSearch of an uncalibrated index (at least k)


@dataclass(frozen=True)
class HNSWBuildParams(TypeParams):
    """Graph settings of HNSW partitions."""

    m: int = param("hnswM")
    ef_construction: int = param("efConstruction")


@dataclass(frozen=True)
class HNSWKnobs(SearchKnobs):
    """The beam width of an HNSW search."""

    ef_search: int = DEFAULT_EF

    def settings(self):
        return {"efSearch": self.ef_search}


class HNSWSearch(PartitionIndex):
    """Build params, search knobs and calibration ladder every HNSW type shares."""

    Params = HNSWBuildParams
    Knobs = HNSWKnobs
    search_params = ("efSearch",)
    EF_LADDER = (16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256, 384, 512)

    @classmethod
    def search_ladder(cls, k, params):
        return [{"efSearch": ef} for ef in sorted({max(k, e) for e in cls.EF_LADDER})]

    @classmethod
    def probe_cost(cls, setting, rows, dim):
        return float(setting["efSearch"]) * (1.0 + np.log2(np.maximum(rows, 2)) / 16.0)

    @classmethod
    def fixed_search_defaults(cls, params, k):
        return {"efSearch": max(DEFAULT_EF, k)}

    @classmethod
    def search_knobs(cls, setting, threads=1):
        return HNSWKnobs(threads=threads, ef_search=int(setting.get("efSearch") or DEFAULT_EF))

    @classmethod
    def model_knobs(cls, values, k, user_set, threads):
        ef = int(values.get("efSearch") or DEFAULT_EF)
        if ef < k and "efSearch" in user_set:
            raise ValueError(f"efSearch={ef} must be >= k={k}")
        return HNSWKnobs(threads=threads, ef_search=max(ef, k))

    @classmethod
    def stored_row_bytes(cls, params, dim):
        return 4 * dim + 8 * (HNSWBuildParams.of(params).m + 1) + 16


class HNSWIndex(HNSWSearch):
    """An hnswlib graph over a partition's prepared vectors."""

    name = "hnsw"

    @classmethod
    def loaded_bytes_factor(cls, params, dim):
        # a stored row: its vector, 2M level-0 links and their count, its label (twice:
        # level 0 and the label lookup), its level and about one upper-level link list
        stored = 4 * dim + 8 * HNSWBuildParams.of(params).m + 32
        return 1.0 + _LOADED_ROW_EXTRA / stored

    @classmethod
    def loaded_partition_bytes(cls, params, dim):
        return _LABEL_LOCK_BYTES

    def __init__(self, graph: hnswlib.Index, context: PartitionContext):
        self.graph = graph
        self.context = context
        self.count = graph.get_current_count()
        self.hidden = np.zeros(self.count, dtype=bool)

    @classmethod
    def build(cls, vectors, context, seed, threads):
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        spec = HNSWBuildParams.of(context.params)
        graph = hnswlib.Index(space=context.metric.hnsw_space, dim=context.dim)
        graph.init_index(max_elements=len(vectors), M=spec.m,
                         ef_construction=spec.ef_construction, random_seed=seed)
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
        self.graph.set_ef(max(self.own_knobs(knobs).ef_search, width))
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
        self.graph.set_ef(max(self.own_knobs(knobs).ef_search, k))
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
        return int(self.count * state_per_row + _LABEL_LOCK_BYTES + 1024)


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
    view, (magic, version, head_len) = unpacked_header(data, _HEADER, "HNSW payload")
    if magic != MAGIC:
        raise ValueError("HNSW payload is damaged: bad magic bytes")
    if version > FORMAT_VERSION:
        raise ValueError(f"HNSW payload format {version} is newer than supported {FORMAT_VERSION}")
    if head_len > min(_MAX_HEADER_BYTES, len(view) - _HEADER.size):
        raise ValueError("HNSW payload is damaged: header length out of bounds")
    offset = _HEADER.size + head_len
    try:
        header = strict_json(bytes(view[_HEADER.size:offset]))
        scalars, counts = dict(header["scalars"]), dict(header["arrays"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"HNSW payload is damaged: unreadable header ({err})") from None
    if not all(isinstance(v, _SCALAR_TYPES) for v in scalars.values()):
        raise ValueError("HNSW payload is damaged: header holds a non-scalar field")
    state = dict(scalars)
    _check_header(state, dim, space)
    for name, dtype in _ARRAY_FIELDS.items():
        count = counts.get(name)
        if type(count) is not int or count < 0:
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
    try:
        graph.__setstate__((state,))
    except (RuntimeError, TypeError) as err:  # a backstop: every field was checked above
        raise ValueError(f"HNSW payload is damaged: hnswlib refused it ({err})") from None
    return graph


def _check_header(state: dict, want_dim: int, space: str) -> None:
    """The scalars must describe this index and allocate nothing beyond what is stored;
    every scalar hnswlib reads must be what :func:`graph_to_bytes` writes."""
    _check_layout(state)
    _check_settings(state)
    n, dim = state["cur_element_count"], state["dim"]
    if dim != want_dim:
        raise ValueError(f"HNSW payload has dimension {dim}, but the index has {want_dim}")
    if state.get("space") != space:
        raise ValueError(f"HNSW payload has space {state.get('space')!r}; the index needs "
                         f"{space!r}")
    expected = {"index_inited": True, "ep_added": n > 0, "normalize": space == "cosine",
                "allow_replace_deleted": False}
    for name, want in expected.items():
        if state.get(name) is not want:
            raise ValueError(f"HNSW payload is damaged: header field {name!r} is "
                             f"{state.get(name)!r}, not {want!r}")
    if not isinstance(state.get("has_deletions"), bool):  # either: marks are cleared at load
        raise ValueError("HNSW payload is damaged: header field 'has_deletions' is not a "
                         "boolean")


def _int_field(state: dict, name: str, low: int = 0, high: int = _MAX_INT) -> int:
    """A header integer (not a bool or float) in [low, high]."""
    value = state.get(name)
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"HNSW payload is damaged: header field {name!r} is {value!r}, not "
                         f"an integer in [{low}, {high}]")
    return value


def _check_layout(state: dict) -> None:
    """Sizes, offsets and the entry point: what hnswlib allocates and indexes by."""
    n = _int_field(state, "cur_element_count", 0, _MAX_IDS)
    dim = _int_field(state, "dim", 1, _MAX_C_INT)
    max_m = _int_field(state, "max_M", 2, _MAX_M)
    offset_data = _int_field(state, "offset_data")
    max_level = _int_field(state, "max_level", -1, _MAX_LEVEL)
    entry = _int_field(state, "enterpoint_node", 0, _NO_ENTRY)
    ok = (
        _int_field(state, "max_elements") == n
        and _int_field(state, "max_M0") == 2 * max_m
        and offset_data == 4 * (2 * max_m + 1)
        and _int_field(state, "size_links_per_element") == 4 * (max_m + 1)
        and _int_field(state, "size_data_per_element") == offset_data + 4 * dim + 8
        and _int_field(state, "label_offset") == offset_data + 4 * dim
        and _int_field(state, "offset_level0") == 0
        and ((max_level, entry) == (-1, _NO_ENTRY) if n == 0
             else max_level >= 0 and entry < n)
    )
    if not ok:
        raise ValueError("HNSW payload is damaged: inconsistent header")


def _check_settings(state: dict) -> None:
    """Build and search settings hnswlib reads (and compares with what it derives)."""
    _int_field(state, "ser_version", 1, 1)
    m = _int_field(state, "M", 2, _MAX_M)
    if m != state["max_M"]:
        raise ValueError(f"HNSW payload is damaged: M={m} but max_M={state['max_M']}")
    mult = state.get("mult")
    if type(mult) is not float or not math.isclose(mult, 1.0 / math.log(m), rel_tol=1e-9):
        raise ValueError(f"HNSW payload is damaged: header field 'mult' is {mult!r}, not "
                         f"1/ln(M) for M={m}")
    state["mult"] = 1.0 / math.log(m)  # hnswlib compares it exactly with its own
    _int_field(state, "ef_construction", m)  # hnswlib raises it to at least M
    _int_field(state, "ef")
    _int_field(state, "seed", 0, (1 << 64) - 1)
    _int_field(state, "num_threads", 0, _MAX_C_INT)


def _check_arrays(state: dict) -> None:
    """Cross-check every size, level, link and label hnswlib would otherwise trust blindly."""
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
    if n and levels[state["enterpoint_node"]] != state["max_level"]:
        raise ValueError("HNSW payload is damaged: the entry point is not on the top level")
    level0 = state["data_level0"].view(np.uint8).reshape(n, per_element)[:, :offset_data]
    _check_links(level0.copy().view(np.uint32), max_m0, n)
    # link_lists: element by element, one block per level 1..level; a level-L link must
    # lead to an element that has level L
    _check_links(state["link_lists"].view(np.uint32).reshape(-1, max_m + 1), max_m, n,
                 levels, _block_levels(levels))
    _check_labels(state, n)


def _block_levels(levels: np.ndarray) -> np.ndarray:
    """The level of each upper-level link block, in link_lists order."""
    levels = levels.astype(np.int64)
    starts = np.cumsum(levels) - levels
    return np.arange(int(levels.sum())) - np.repeat(starts, levels) + 1


def _check_links(blocks: np.ndarray, max_links: int, n: int, levels: np.ndarray | None = None,
                 block_levels: np.ndarray | None = None) -> None:
    """Each block is [count, id_1..id_max]; counts and used ids must be in range, and
    (with ``levels``) lead to elements at least as high as the block's level."""
    counts = blocks[:, 0] & 0xFFFF
    if (counts > max_links).any():
        raise ValueError("HNSW payload is damaged: graph links out of range")
    used = np.arange(max_links)[None, :] < counts[:, None]
    targets = blocks[:, 1:][used]
    if (targets >= n).any():
        raise ValueError("HNSW payload is damaged: graph links out of range")
    if levels is not None and block_levels is not None and (
            levels[targets.astype(np.intp)] < np.repeat(block_levels, counts)).any():
        raise ValueError("HNSW payload is damaged: an upper-level link leads to an element "
                         "below that level")


def _check_labels(state: dict, n: int) -> None:
    """Labels are 0..n-1, one per row: the lookup tables are a one-to-one map from each
    row's label (in data_level0) to its internal id."""
    external, internal = state["label_lookup_external"], state["label_lookup_internal"]
    if n and (external.max() >= n or internal.max() >= n):
        raise ValueError("HNSW payload is damaged: label table out of range")
    per_element, at = int(state["size_data_per_element"]), int(state["label_offset"])
    rows = state["data_level0"].view(np.uint8).reshape(n, per_element)[:, at:at + 8]
    labels = rows.copy().view(np.uint64).ravel()
    if n and labels.max() >= n:
        raise ValueError("HNSW payload is damaged: row labels out of range")
    external, internal = external.astype(np.intp), internal.astype(np.intp)
    if not (_covers(external, n) and _covers(internal, n)
            and (labels[internal] == external.astype(np.uint64)).all()):
        raise ValueError("HNSW payload is damaged: the label tables do not map each row's "
                         "label to its row one to one")


def _covers(ids: np.ndarray, n: int) -> bool:
    """Whether ``n`` ids in [0, n) hold every value once."""
    seen = np.zeros(n, dtype=bool)
    seen[ids] = True
    return bool(seen.all())


def _clear_marks(level0: np.ndarray, count: int, per_element: int) -> None:
    """Zero each row's deletion mark in place (the third byte of its link header)."""
    if count:
        rows = level0.view(np.uint8).reshape(count, per_element)
        rows[:, _DELETE_MARK_BYTE] = 0
