"""Index types: the :class:`PartitionIndex` contract and the registry of its types.

Build, search, update and the estimator find an index type only through
:func:`index_type`; a new type is one module with a :class:`PartitionIndex`
subclass and one entry in :data:`REGISTRY`.
"""

from __future__ import annotations

from .base import (
    IndexSpec,
    PartitionContext,
    PartitionIndex,
    SearchKnobs,
    StoredPartition,
    TypeParams,
)
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .hnsw_sq import HNSWSQIndex
from .pq import PQIndex

REGISTRY: dict[str, type[PartitionIndex]] = {
    cls.name: cls for cls in (HNSWIndex, HNSWSQIndex, PQIndex, FlatIndex)}
DEFAULT_INDEX_TYPE = HNSWIndex.name


def index_type(name: str) -> type[PartitionIndex]:
    """The index class registered as ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"indexType={name!r} is not supported; choose one of "
                         f"{sorted(REGISTRY)}") from None


def search_param_names() -> tuple[str, ...]:
    """The search params of every registered type (each calibrated per index)."""
    return tuple(dict.fromkeys(name for cls in REGISTRY.values() for name in cls.search_params))


def build_param_names() -> tuple[str, ...]:
    """The build params of every registered type."""
    return tuple(dict.fromkeys(name for cls in REGISTRY.values() for name in cls.build_params))


__all__ = ["DEFAULT_INDEX_TYPE", "REGISTRY", "IndexSpec", "PartitionContext", "PartitionIndex",
           "SearchKnobs", "StoredPartition", "TypeParams", "build_param_names", "index_type",
           "search_param_names"]
