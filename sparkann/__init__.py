"""sparkann: distributed approximate nearest-neighbour search on Apache Spark."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .estimator import ANNIndex, ANNIndexModel

__version__ = "0.1.0"
__all__ = ["ANNIndex", "ANNIndexModel", "__version__"]


def __getattr__(name: str):
    # The estimator is imported on first use: Spark's Python workers import only the
    # modules their task functions need, not the estimator and what it imports.
    if name in ("ANNIndex", "ANNIndexModel"):
        from . import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'sparkann' has no attribute {name!r}")
