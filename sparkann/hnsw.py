"""Per-partition HNSW graphs: build, search and a pickle-free byte format.

Pure numpy + hnswlib; no Spark. Vectors are float32 rows; graph labels are the
row positions ``0..n-1`` (the caller keeps the external ids beside the payload).

Distances returned by :func:`search` follow the package convention (smaller is
better): Euclidean for ``l2``, negative inner product for ``ip`` and
``1 - cosine similarity`` for ``cosine`` (vectors are expected L2-normalised by
the caller for cosine).
"""

from __future__ import annotations

import io
import json
import struct

import hnswlib
import numpy as np

MAGIC = b"SANNHNSW"
FORMAT_VERSION = 1
_HNSW_SPACE = {"l2": "l2", "ip": "ip", "cosine": "ip"}
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


def build(
    vectors: np.ndarray,
    metric: str,
    M: int = 16,
    ef_construction: int = 200,
    seed: int = 0,
    num_threads: int = 1,
) -> hnswlib.Index:
    """Build an HNSW graph over ``vectors`` (n, d) labelled ``0..n-1``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("cannot build an HNSW graph over zero vectors")
    index = hnswlib.Index(space=_HNSW_SPACE[metric], dim=int(dim))
    index.init_index(max_elements=n, ef_construction=ef_construction, M=M, random_seed=seed)
    index.add_items(vectors, np.arange(n), num_threads=num_threads)
    return index


def search(
    index: hnswlib.Index,
    queries: np.ndarray,
    k: int,
    ef: int,
    metric: str,
    num_threads: int = 1,
    filter=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, distances)`` of shape (nq, min(k, n)), best first.

    Rows the graph cannot fill (possible with a filter) hold label -1 and an
    infinite distance.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    count = index.get_current_count()
    k = min(k, count)
    if k == 0 or len(queries) == 0:
        return (np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32))
    index.set_ef(max(ef, k))
    try:
        labels, raw = index.knn_query(queries, k=k, num_threads=num_threads, filter=filter)
        labels = labels.astype(np.int64)
    except RuntimeError:
        # The graph could not return k results for some query (tiny or filtered
        # graph): answer query by query and pad what is missing.
        labels, raw = _search_padded(index, queries, k, num_threads, filter)
    return labels, to_distance(raw, metric)


def _search_padded(index, queries, k, num_threads, filter):
    labels = np.full((len(queries), k), -1, np.int64)
    raw = np.full((len(queries), k), np.inf, np.float32)
    for row, query in enumerate(queries):
        for kk in range(k, 0, -1):
            try:
                found, dist = index.knn_query(query[None], k=kk, num_threads=1, filter=filter)
            except RuntimeError:
                continue
            labels[row, :kk] = found[0]
            raw[row, :kk] = dist[0]
            break
    return labels, raw


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """Convert hnswlib's raw scores to the package's distance convention."""
    raw = np.asarray(raw, dtype=np.float32)
    if metric == "l2":
        return np.sqrt(np.maximum(raw, 0.0))
    if metric == "ip":
        return raw - 1.0  # hnswlib gives 1 - <q, x>
    return raw  # cosine on normalised vectors: 1 - <q, x>


def vectors_of(index: hnswlib.Index) -> np.ndarray:
    """The stored vectors in label order (n, d) float32."""
    count = index.get_current_count()
    if count == 0:
        return np.empty((0, index.dim), np.float32)
    return np.asarray(index.get_items(np.arange(count)), dtype=np.float32)


def to_bytes(index: hnswlib.Index) -> bytes:
    """Serialise a graph: a JSON header of scalars, then raw arrays. No pickle."""
    state = index.__getstate__()[0]
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


def from_bytes(data: bytes | memoryview) -> hnswlib.Index:
    """Load a graph written by :func:`to_bytes`; every length is checked first."""
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
        header = json.loads(bytes(view[_HEADER.size : offset]))
        scalars, counts = dict(header["scalars"]), dict(header["arrays"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"HNSW payload is damaged: unreadable header ({err})") from None
    state = _checked_scalars(scalars)
    for name, dtype in _ARRAY_FIELDS.items():
        count = counts.get(name)
        nbytes = _checked_count(count, name) * np.dtype(dtype).itemsize
        if offset + nbytes > len(view):
            raise ValueError(f"HNSW payload is damaged: array {name!r} is truncated")
        state[name] = np.frombuffer(view[offset : offset + nbytes], dtype=dtype).copy()
        offset += nbytes
    if offset != len(view):
        raise ValueError("HNSW payload is damaged: trailing bytes after the arrays")
    _check_consistent(state)
    index = hnswlib.Index.__new__(hnswlib.Index)
    index.__setstate__((state,))
    return index


def _checked_scalars(scalars: dict) -> dict:
    if not all(isinstance(v, _SCALAR_TYPES) for v in scalars.values()):
        raise ValueError("HNSW payload is damaged: header holds a non-scalar field")
    return scalars


def _checked_count(count, name: str) -> int:
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"HNSW payload is damaged: bad length for array {name!r}")
    return count


def _check_consistent(state: dict) -> None:
    """Cross-check every size and link hnswlib would otherwise trust blindly."""
    try:
        n = int(state["cur_element_count"])
        per_element = int(state["size_data_per_element"])
        per_links = int(state["size_links_per_element"])
        max_m0, max_m = int(state["max_M0"]), int(state["max_M"])
        offset_data = int(state["offset_data"])
        ok = (
            int(state["max_elements"]) >= n >= 0
            and int(state["dim"]) > 0
            and offset_data == 4 * (max_m0 + 1)
            and per_links == 4 * (max_m + 1)
            and per_element >= offset_data + 4 * int(state["dim"]) + 8
            and int(state["offset_level0"]) == 0
            and (n == 0 or 0 <= int(state["enterpoint_node"]) < n)
        )
    except (KeyError, TypeError, ValueError):
        raise ValueError("HNSW payload is damaged: missing header fields") from None
    levels = state["element_levels"]
    expected = {
        "label_lookup_external": n,
        "label_lookup_internal": n,
        "element_levels": n,
        "data_level0": n * per_element,
        "link_lists": int(np.maximum(levels, 0).sum()) * per_links,
    }
    bad = [k for k, v in expected.items() if len(state[k]) != v]
    if bad or not ok or (n and (levels.min() < 0 or levels.max() > int(state["max_level"]))):
        raise ValueError(f"HNSW payload is damaged: inconsistent sizes {bad or ''}".strip())
    level0 = state["data_level0"].view(np.uint8).reshape(n, per_element)[:, :offset_data]
    _check_links(level0.copy().view(np.uint32), max_m0, n)
    _check_links(state["link_lists"].view(np.uint32).reshape(-1, max_m + 1), max_m, n)
    if n and state["label_lookup_internal"].max() >= n:
        raise ValueError("HNSW payload is damaged: label table out of range")


def _check_links(blocks: np.ndarray, max_links: int, n: int) -> None:
    """Each block is [count, id_1..id_max]; counts and used ids must be in range."""
    counts = blocks[:, 0] & 0xFFFF
    used = np.arange(max_links)[None, :] < counts[:, None]
    if (counts > max_links).any() or (blocks[:, 1:][used] >= n).any():
        raise ValueError("HNSW payload is damaged: graph links out of range")
