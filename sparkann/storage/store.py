"""The :class:`Store` contract: driver-side access to the small files of an index
(implementations in :mod:`sparkann.storage.fs` and :mod:`sparkann.storage.s3`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    mtime: float  # seconds since the epoch


class Store:
    """Driver-side access to the files under an index root."""

    def read(self, path: str, max_bytes: int) -> bytes:
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        """Write (or replace) a whole file."""
        raise NotImplementedError

    def create_new(self, path: str, data: bytes) -> bool:
        """Make a complete file appear at ``path`` unless one exists; True if it did."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def list(self, path: str) -> list[Entry]:
        """Entries directly under a directory ([] if it does not exist)."""
        raise NotImplementedError

    def delete(self, path: str) -> None:
        """Delete a file or a directory tree (nothing if it does not exist)."""
        raise NotImplementedError

    def qualify(self, path: str) -> str:
        """An absolute form of ``path`` that every executor resolves alike."""
        return path
