"""sparkann: distributed approximate nearest-neighbour search on Apache Spark."""

from .estimator import ANNIndex, ANNIndexModel

__version__ = "0.1.0"
__all__ = ["ANNIndex", "ANNIndexModel", "__version__"]
