"""What an index type is: the :class:`PartitionIndex` contract. No Spark.

A partition index holds the rows of one partition, labelled ``0..count-1`` in
the order they were added; the caller keeps the external ids beside it. Rows
are hidden (deleted) by label and removed for good by :meth:`compact`. Every
distance follows :mod:`sparkann.metrics` (smaller is better); labels the index
cannot fill are ``-1`` with an infinite distance.

What is stored is a :class:`StoredPartition` of plain byte strings in
sparkann's own checked formats; :meth:`PartitionIndex.load` must validate every
field against the :class:`PartitionContext` before using it.
"""

from __future__ import annotations

import json
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Collection, Mapping, TypeVar

import numpy as np

from ..metrics import Metric

# A subset at most this large (or this share of the partition) is scanned
# exactly instead of walking a filtered structure.
SUBSET_SCAN_ROWS = 4096
SUBSET_SCAN_SHARE = 0.1
# A filtered search scans a partition's passing rows exactly up to this share of its
# live rows (or SUBSET_SCAN_ROWS), measured cheaper than walking a graph with a filter;
# past it, types with an in-graph filter use it, others over-fetch and drop the rest.
FILTER_SCAN_SHARE = 0.25
OVERFETCH = 2.0  # over-fetched candidates per expected passing neighbour
# What every loaded row costs beside its index: its 8-byte id and its hidden-row mark.
LOADED_ROW_BYTES = 9


P = TypeVar("P", bound="TypeParams")


@dataclass(frozen=True)
class TypeParams:
    """The build params of an index type, one field per param. Each field's
    ``metadata["param"]`` is the param's name (as in ``ANNIndex`` and the manifest);
    a field without a default must be stored with the index."""

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return tuple(f.metadata["param"] for f in fields(cls))

    @classmethod
    def of(cls: type[P], values: "Mapping[str, Any] | TypeParams") -> P:
        """These params from a mapping by param name (``KeyError`` naming a missing one)."""
        if isinstance(values, cls):
            return values
        if isinstance(values, TypeParams):
            raise TypeError(f"{type(values).__name__} given where {cls.__name__} is expected")
        given = {f.name: values[f.metadata["param"]] for f in fields(cls)
                 if f.metadata["param"] in values or f.default is MISSING}
        return cls(**given)

    def to_params(self) -> dict[str, Any]:
        """Param name -> value."""
        return {f.metadata["param"]: getattr(self, f.name) for f in fields(self)}


def param(name: str, **kwargs) -> Any:
    """A :class:`TypeParams` field stored under the param name ``name``."""
    return field(metadata={"param": name}, **kwargs)


@dataclass(frozen=True)
class NoParams(TypeParams):
    """The params of an index type that has none."""


@dataclass(frozen=True)
class IndexSpec:
    """What an index is built as: its type and that type's build params."""

    index_type: str
    params: TypeParams

    def to_params(self) -> dict[str, Any]:
        return {"indexType": self.index_type, **self.params.to_params()}


@dataclass(frozen=True)
class PartitionContext:
    """What every partition of an index shares."""

    metric: Metric
    dim: int
    # the index's build params: its type's TypeParams, or a mapping by param name
    params: Any
    centroid: np.ndarray | None = None  # the partition's coarse centroid
    shared: bytes = b""  # index-wide trained data (e.g. a global PQ codebook)


@dataclass(frozen=True)
class StoredPartition:
    """The stored form of a partition index."""

    payload: bytes
    codebook: bytes = b""  # per-partition trained data
    vectors: bytes | None = None  # exact vectors, when the index type keeps them apart
    sq_error: float = 0.0  # sum of squared reconstruction errors (quantizers)


@dataclass(frozen=True)
class SearchKnobs:
    """Search-time settings of a partition index: the threads it may use. Index types
    with settings of their own subclass it (see :meth:`PartitionIndex.search_knobs`)."""

    threads: int = 1

    @property
    def needs_vectors(self) -> bool:
        """Whether searching with these knobs reads the partitions' exact vectors."""
        return False

    def settings(self) -> dict[str, Any]:
        """The type's own settings by param name (threads aside)."""
        return {}


class PartitionIndex(ABC):
    """One partition's index; see the module docstring."""

    name: ClassVar[str] = ""
    # The type's build params, stored with the index and needed to build or load it.
    Params: ClassVar[type[TypeParams]] = NoParams
    # Their param names (derived from Params).
    build_params: ClassVar[tuple[str, ...]] = ()
    # The type's search knobs.
    Knobs: ClassVar[type[SearchKnobs]] = SearchKnobs
    # Search params (by name) of this type that calibration sets and a model may change.
    search_params: ClassVar[tuple[str, ...]] = ()
    # Whether distances are exact (else to quantized vectors, within a few percent).
    exact_distances: ClassVar[bool] = True
    # Whether live_vectors gives the exact vectors (else quantized reconstructions, which
    # calibration must not take as the truth).
    exact_vectors: ClassVar[bool] = True
    count: int
    hidden: np.ndarray  # marks of deleted (hidden) rows, by label
    context: PartitionContext
    # Memory of a loaded partition (the index, its ids and its hidden-row marks, not its
    # exact vectors) per stored byte (payload and codebook), measured for each type in
    # tests/test_memory_model.py. Types whose ratio depends on their params override
    # loaded_bytes_factor; fixed costs per loaded partition go in loaded_partition_bytes
    # (or the type overrides loaded_bytes).
    LOADED_BYTES_FACTOR: ClassVar[float] = 1.25

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.build_params = cls.Params.param_names()

    @classmethod
    def spec(cls, params: Mapping[str, Any] | TypeParams) -> IndexSpec:
        """The :class:`IndexSpec` of an index of this type with these build params."""
        return IndexSpec(cls.name, cls.Params.of(params))

    @classmethod
    def check_params(cls, params: Any, dim: int) -> None:
        """``ValueError`` naming a build param that does not fit vectors of ``dim``."""

    @classmethod
    def stored_row_bytes(cls, params: Any, dim: int) -> int:
        """About how many bytes a stored row takes (sizes the default shards)."""
        return 4 * dim + 16

    @classmethod
    def keeps_vectors(cls, params: Any) -> bool:
        """Whether partitions store exact vectors beside the index (updates carry them)."""
        return False

    @classmethod
    def summary_extra(cls, rows: list[int], sq_errors: list[float]) -> dict[str, Any]:
        """Type-specific entries of ``ANNIndexModel.summary()``, from the partition facts."""
        return {}

    @classmethod
    def loaded_bytes_factor(cls, params: Any, dim: int) -> float:
        """Loaded bytes per stored byte of a partition with these build params."""
        return cls.LOADED_BYTES_FACTOR

    @classmethod
    def loaded_partition_bytes(cls, params: Any, dim: int) -> int:
        """Bytes each loaded partition holds besides what grows with its stored bytes."""
        return 0

    @classmethod
    def loaded_bytes(cls, stored_bytes: int, partitions: int, params: Any,
                     dim: int) -> int:
        """Bytes ``partitions`` loaded partitions of ``stored_bytes`` stored bytes (payloads
        and codebooks) hold, exact vectors aside."""
        return int(cls.loaded_bytes_factor(params, dim) * stored_bytes
                   + partitions * cls.loaded_partition_bytes(params, dim))

    @classmethod
    def train_shared(cls, sample: np.ndarray, residuals: np.ndarray,
                     context: PartitionContext, seed: int) -> bytes:
        """Index-wide trained data from a sample (prepared vectors and their
        residuals to their nearest centroid); ``b""`` if the type has none."""
        return b""

    @classmethod
    def search_ladder(cls, k: int, params: Any) -> list[dict]:
        """Search settings calibration may choose from, cheapest first (param name ->
        value, e.g. ``{"efSearch": 64}``)."""
        return [{}]

    @classmethod
    def probe_cost(cls, setting: dict, rows: int, dim: int) -> float:
        """Relative work of searching one partition of ``rows`` rows with ``setting``."""
        return 1.0

    @classmethod
    def fixed_search_defaults(cls, params: Any, k: int) -> dict[str, Any]:
        """The type's search settings (param name -> value) of an uncalibrated index."""
        return {}

    @classmethod
    def search_knobs(cls, setting: Mapping[str, Any], threads: int = 1) -> SearchKnobs:
        """The knobs of a setting (param name -> value; missing ones take their defaults)."""
        return cls.Knobs(threads=threads)

    @classmethod
    def model_knobs(cls, values: Mapping[str, Any], k: int, user_set: Collection[str],
                    threads: int) -> SearchKnobs:
        """The knobs a model searches ``k`` neighbours with, from its param values;
        ``ValueError`` naming a value the user set that cannot serve ``k``."""
        return cls.search_knobs(values, threads)

    @classmethod
    def own_knobs(cls, knobs: SearchKnobs) -> Any:
        """``knobs`` as this type's knobs (the defaults when given another type's)."""
        return knobs if isinstance(knobs, cls.Knobs) else cls.Knobs(threads=knobs.threads)

    @classmethod
    @abstractmethod
    def build(cls, vectors: np.ndarray, context: PartitionContext, seed: int,
              threads: int) -> "PartitionIndex":
        """An index over prepared ``vectors`` (n, d), labelled ``0..n-1``; n may be 0."""

    @classmethod
    @abstractmethod
    def load(cls, stored: StoredPartition, context: PartitionContext,
             with_vectors: bool) -> "PartitionIndex":
        """Validate and load a stored partition (``ValueError`` if damaged)."""

    @abstractmethod
    def store(self) -> StoredPartition:
        """The stored form; deletions are not part of it (they are kept apart)."""

    @abstractmethod
    def hide(self, labels: np.ndarray) -> None:
        """Exclude rows from every answer (labels already hidden are fine)."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int,
               knobs: SearchKnobs) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, distances)`` of shape (nq, k), best first."""

    @abstractmethod
    def search_subset(self, query: np.ndarray, labels: np.ndarray, k: int,
                      knobs: SearchKnobs) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of one query among ``labels`` only (hidden rows excluded):
        ``(labels, distances)`` of shape (1, k)."""

    # Whether search_in_graph walks the index with a filter (else filtered searches
    # over-fetch past FILTER_SCAN_SHARE).
    in_graph_filter: ClassVar[bool] = False

    def search_filtered(self, queries: np.ndarray, passing: np.ndarray, k: int,
                        knobs: SearchKnobs) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of each query among the rows ``passing`` (a mask over labels) marks,
        hidden rows excluded: ``(labels, distances)`` of shape (nq, k), padded. The
        method follows the passing share (:meth:`filtered_method`)."""
        live = np.asarray(passing, dtype=bool)[:self.count] & ~self.hidden
        labels = np.flatnonzero(live)
        width = min(k, len(labels))
        if width == 0 or len(queries) == 0:
            return padded(np.empty((len(queries), 0), np.int64),
                          np.empty((len(queries), 0), np.float32), k)
        live_rows = int(self.count - self.hidden.sum())
        method = self.filtered_method(len(labels), live_rows)
        if method == "scan":
            found = exact_batch(self.live_vectors(labels), labels, queries, width,
                                self.context.metric)
        elif method == "graph":
            found = self.search_in_graph(queries, live, width, knobs)
        else:
            found = self._overfetched(queries, live, labels, len(labels) / live_rows, width,
                                      knobs)
        return padded(*found, k)

    def filtered_method(self, passing: int, live: int) -> str:
        """"scan" (exact, over the passing rows), "graph" (:meth:`search_in_graph`) or
        "overfetch" (search deeper, keep the passing rows)."""
        if passing <= max(SUBSET_SCAN_ROWS, FILTER_SCAN_SHARE * live):
            return "scan"
        return "graph" if self.in_graph_filter else "overfetch"

    def search_in_graph(self, queries: np.ndarray, live: np.ndarray, k: int,
                        knobs: SearchKnobs) -> tuple[np.ndarray, np.ndarray]:
        """Search skipping rows outside ``live`` inside the index (types that can)."""
        raise NotImplementedError(f"{self.name} has no in-graph filter")

    def _overfetched(self, queries, live, labels, share, k,
                     knobs) -> tuple[np.ndarray, np.ndarray]:
        """Search ``k / share x OVERFETCH`` deep and keep the passing rows; a query left
        with fewer than ``k`` of them is answered by a scan."""
        depth = int(min(self.count, math.ceil(k / share * OVERFETCH)))
        found, dists = self.search(queries, depth, knobs)
        keep = (found >= 0) & live[np.maximum(found, 0)]
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # passing first, in order
        found = np.where(np.take_along_axis(keep, order, 1),
                         np.take_along_axis(found, order, 1), -1)
        dists = np.where(found >= 0, np.take_along_axis(dists, order, 1), np.inf)
        short = np.flatnonzero((found < 0).any(axis=1))
        if len(short):
            found[short], dists[short] = exact_batch(self.live_vectors(labels), labels,
                                                     queries[short], k, self.context.metric)
        return found, dists.astype(np.float32)

    @abstractmethod
    def add(self, vectors: np.ndarray, threads: int) -> None:
        """Append prepared rows, labelled ``count..count+n-1``."""

    @abstractmethod
    def compact(self, keep: np.ndarray, seed: int, threads: int) -> "PartitionIndex":
        """A new index over the rows ``keep`` (labels, ascending), relabelled ``0..``."""

    @abstractmethod
    def live_vectors(self, labels: np.ndarray) -> np.ndarray:
        """The prepared vectors of ``labels`` (``ValueError`` if the type cannot); exact
        where :attr:`exact_vectors` says so, else reconstructions."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Approximate bytes the loaded index holds."""


def padded(labels: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (nq, j) results to (nq, k) with label -1 and an infinite distance."""
    missing = k - labels.shape[1]
    if missing <= 0:
        return labels[:, :k], dists[:, :k]
    return (np.pad(labels, ((0, 0), (0, missing)), constant_values=-1),
            np.pad(dists.astype(np.float32), ((0, 0), (0, missing)), constant_values=np.inf))


def exact_among(vectors: np.ndarray, labels: np.ndarray, query: np.ndarray, k: int,
                metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of one query among ``vectors`` (rows of ``labels``): (1, k), padded."""
    from ..exact import knn

    if len(labels) == 0:
        return padded(np.empty((1, 0), np.int64), np.empty((1, 0), np.float32), k)
    order, best = knn(vectors, query[None], k, metric)
    return padded(labels[order[0]][None], best, k)


def exact_batch(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int,
                metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each query among ``vectors`` (rows of ``labels``): (nq, k), padded."""
    from ..exact import knn

    order, best = knn(vectors, queries, k, metric)
    return padded(labels[order], best, k)


def unpacked_header(data, header: struct.Struct, what: str) -> tuple[memoryview, tuple]:
    """A payload's bytes and its fixed-size header's fields; ``ValueError`` naming
    ``what`` when it is shorter than the header."""
    view = memoryview(data)
    if len(view) < header.size:
        raise ValueError(f"{what} is damaged: shorter than its header")
    return view, header.unpack(view[:header.size])


def checked_labels(labels, count: int) -> np.ndarray:
    """Unique labels as int64, each in ``0..count-1`` (``ValueError`` otherwise)."""
    labels = np.unique(np.asarray(labels, dtype=np.int64))
    if len(labels) and (labels[0] < 0 or labels[-1] >= count):
        raise ValueError(f"row labels out of range 0..{count - 1}")
    return labels


def strict_json(raw: bytes):
    """JSON without NaN or infinities; nesting too deep for Python is a ValueError."""
    try:
        return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value
