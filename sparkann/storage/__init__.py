"""The index on storage: formats, file access, Spark-written tables and versions."""

from .format import IndexFormatError, Manifest, Meta
from .versions import CommitStateUnknownError, ConcurrentUpdateError

__all__ = ["CommitStateUnknownError", "ConcurrentUpdateError", "IndexFormatError", "Manifest",
           "Meta"]
