"""The index on storage: formats, file access, Spark-written tables and versions."""

from .format import IndexFormatError, Manifest, Meta
from .versions import ConcurrentUpdateError

__all__ = ["ConcurrentUpdateError", "IndexFormatError", "Manifest", "Meta"]
