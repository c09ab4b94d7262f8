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
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from ..metrics import Metric

# A subset at most this large (or this share of the partition) is scanned
# exactly instead of walking a filtered structure.
SUBSET_SCAN_ROWS = 4096
SUBSET_SCAN_SHARE = 0.1
# What every loaded row costs beside its index: its 8-byte id and its hidden-row mark.
LOADED_ROW_BYTES = 9


@dataclass(frozen=True)
class PartitionContext:
    """What every partition of an index shares."""

    metric: Metric
    dim: int
    params: Mapping[str, Any]  # the index's build params, as stored in its manifest
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
    """Search-time settings a partition index may use."""

    ef_search: int = 64
    rerank_k: int = 0
    threads: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


class PartitionIndex(ABC):
    """One partition's index; see the module docstring."""

    name: ClassVar[str] = ""
    # Params of this index type stored with the index and needed to build or load it.
    build_params: ClassVar[tuple[str, ...]] = ()
    # Whether distances are exact (else to quantized vectors, within a few percent).
    exact_distances: ClassVar[bool] = True
    # Whether live_vectors gives the exact vectors (else quantized reconstructions, which
    # calibration must not take as the truth).
    exact_vectors: ClassVar[bool] = True
    count: int
    # Memory of a loaded partition (the index, its ids and its hidden-row marks, not its
    # exact vectors) per stored byte (payload and codebook), measured for each type in
    # tests/test_memory_model.py. Types whose ratio depends on their params override
    # loaded_bytes_factor; fixed costs per loaded partition go in loaded_partition_bytes
    # (or the type overrides loaded_bytes).
    LOADED_BYTES_FACTOR: ClassVar[float] = 1.25

    @classmethod
    def loaded_bytes_factor(cls, params: Mapping[str, Any], dim: int) -> float:
        """Loaded bytes per stored byte of a partition with these build params."""
        return cls.LOADED_BYTES_FACTOR

    @classmethod
    def loaded_partition_bytes(cls, params: Mapping[str, Any], dim: int) -> int:
        """Bytes each loaded partition holds besides what grows with its stored bytes."""
        return 0

    @classmethod
    def loaded_bytes(cls, stored_bytes: int, partitions: int, params: Mapping[str, Any],
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
    def search_ladder(cls, k: int, params: Mapping[str, Any]) -> list[dict]:
        """Search settings calibration may choose from, cheapest first (param name ->
        value, e.g. ``{"efSearch": 64}``)."""
        return [{}]

    @classmethod
    def probe_cost(cls, setting: dict, rows: int, dim: int) -> float:
        """Relative work of searching one partition of ``rows`` rows with ``setting``."""
        return 1.0

    @classmethod
    def knobs(cls, setting: dict, threads: int = 1) -> SearchKnobs:
        """The :class:`SearchKnobs` of a setting."""
        return SearchKnobs(ef_search=int(setting.get("efSearch", 64)),
                           rerank_k=int(setting.get("rerankK", 0)), threads=threads)

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
