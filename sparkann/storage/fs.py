"""File access for index metadata, on the driver and in tasks.

Partition data, delete files and id locations are written by Spark's writers;
the small files that make a version (the manifest, and the meta file with the
centroids) are written by the driver through a :class:`Store`:

* :class:`LocalStore` for local paths (and shared mounts: NFS, FUSE);
* :class:`HadoopStore` for every other URI on classic Spark (Hadoop FileSystem);
* :class:`ArrowStore` for other URIs on Spark Connect (pyarrow file systems).

Publishing a version relies on :meth:`Store.create_new`: it makes a complete
file appear under a name only if no file has that name yet. That is atomic on
local and NFS file systems (a hard link), on HDFS (rename), and on ``s3://`` and
``s3a://`` roots when boto3 is installed (a conditional PUT, ``If-None-Match: *``;
:mod:`sparkann.storage.s3`). On other object stores (and S3 without boto3) it is
a check followed by a write, so concurrent writers there must be serialised by
the caller (see the README's Guarantees).

Tasks read index files with :func:`read_file` through pyarrow.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from typing import Callable

import pyarrow.fs as pafs

from .store import Entry, Store

_LOCAL_SCHEMES = ("file",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")



def is_local(path: str) -> bool:
    match = _SCHEME.match(path)
    return match is None or match.group(1).lower() in _LOCAL_SCHEMES


def local_path(path: str) -> str:
    """A ``file:`` URI or plain path as an absolute local path."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif path.startswith("file:"):
        path = path[len("file:"):]
    return os.path.abspath(path)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts if p]])


def arrow_uri(uri: str) -> str:
    """The URI pyarrow understands for a Spark path."""
    if is_local(uri):
        return local_path(uri)
    return re.sub(r"^s3[an]://", "s3://", uri)


def arrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and path of a Spark path."""
    target = arrow_uri(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), target
    return pafs.FileSystem.from_uri(target)


def read_file(uri: str, max_bytes: int) -> bytes:
    """A whole file, read in a task (or on the driver) through pyarrow, at most
    ``max_bytes`` long (``ValueError`` if it is longer)."""
    filesystem, path = arrow_fs(uri)
    with filesystem.open_input_file(path) as handle:
        size = handle.size()
        if size > max_bytes:
            raise ValueError(f"{uri} holds {size} bytes, more than the {max_bytes} expected")
        return handle.read()


class LocalStore(Store):
    def read(self, path, max_bytes):
        return read_file(path, max_bytes)

    def write(self, path, data):
        target = local_path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temp = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)

    def create_new(self, path, data):
        target = local_path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temp = f"{target}.{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, target)  # atomic, and fails if the name is taken
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def exists(self, path):
        return os.path.exists(local_path(path))

    def list(self, path):
        target = local_path(path)
        if not os.path.isdir(target):
            return []
        with os.scandir(target) as entries:
            return [Entry(e.name, e.is_dir(), e.stat().st_mtime) for e in entries]

    def delete(self, path):
        target = local_path(path)
        if os.path.isdir(target) and not os.path.islink(target):
            import shutil

            shutil.rmtree(target, ignore_errors=False)
        elif os.path.lexists(target):
            os.unlink(target)

    def qualify(self, path):
        return local_path(path)


class HadoopStore(Store):
    """Hadoop FileSystem through the JVM of a classic session."""

    def __init__(self, spark):
        self._jvm = spark.sparkContext._jvm
        self._conf = spark._jsparkSession.sessionState().newHadoopConf()

    def _fs(self, path: str):
        hpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return hpath.getFileSystem(self._conf), hpath

    def read(self, path, max_bytes):
        fs, hpath = self._fs(path)
        size = fs.getFileStatus(hpath).getLen()
        if size > max_bytes:
            raise ValueError(f"{path} holds {size} bytes, more than the {max_bytes} expected")
        stream = fs.open(hpath)
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def _write_stream(self, fs, hpath, data: bytes, overwrite: bool) -> None:
        stream = fs.create(hpath, overwrite)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def write(self, path, data):
        fs, hpath = self._fs(path)
        temp = self._jvm.org.apache.hadoop.fs.Path(f"{path}.{uuid.uuid4().hex}.tmp")
        self._write_stream(fs, temp, data, False)
        fs.delete(hpath, False)
        if not fs.rename(temp, hpath):
            fs.delete(temp, False)
            raise OSError(f"could not write {path}")

    def create_new(self, path, data):
        fs, hpath = self._fs(path)
        temp = self._jvm.org.apache.hadoop.fs.Path(f"{path}.{uuid.uuid4().hex}.tmp")
        self._write_stream(fs, temp, data, False)
        try:
            return bool(not fs.exists(hpath) and fs.rename(temp, hpath))
        finally:
            fs.delete(temp, False)

    def exists(self, path):
        fs, hpath = self._fs(path)
        return bool(fs.exists(hpath))

    def list(self, path):
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return []
        return [Entry(s.getPath().getName(), bool(s.isDirectory()), s.getModificationTime() / 1e3)
                for s in fs.listStatus(hpath)]

    def delete(self, path):
        fs, hpath = self._fs(path)
        fs.delete(hpath, True)

    def qualify(self, path):
        fs, hpath = self._fs(path)
        return str(fs.makeQualified(hpath).toString())


class ArrowStore(Store):
    """pyarrow file systems (S3, GCS, HDFS, ABFS) for Spark Connect clients."""

    def _fs(self, path: str):
        return pafs.FileSystem.from_uri(arrow_uri(path))

    def read(self, path, max_bytes):
        return read_file(path, max_bytes)

    def write(self, path, data):
        fs, target = self._fs(path)
        with fs.open_output_stream(target) as out:
            out.write(data)

    def create_new(self, path, data):
        if self.exists(path):  # not atomic: see the module docstring
            return False
        self.write(path, data)
        return True

    def exists(self, path):
        fs, target = self._fs(path)
        return fs.get_file_info(target).type != pafs.FileType.NotFound

    def list(self, path):
        fs, target = self._fs(path)
        if fs.get_file_info(target).type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(target))
        return [Entry(i.base_name, i.type == pafs.FileType.Directory,
                      i.mtime.timestamp() if i.mtime else 0.0) for i in infos]

    def delete(self, path):
        fs, target = self._fs(path)
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif info.type == pafs.FileType.File:
            fs.delete_file(target)


def store_for(spark, path: str) -> Store:
    """The store for an index root: local paths locally, else Hadoop or pyarrow; on
    S3 with boto3, creates are conditional PUTs."""
    if is_local(path):
        return LocalStore()
    store: Store
    settings: Callable[[str], str | None]
    if getattr(spark, "_jsparkSession", None) is not None:
        store = hadoop = HadoopStore(spark)
        settings = hadoop._conf.get
    else:
        store = ArrowStore()
        settings = _connect_settings(spark)
    match = _SCHEME.match(path)
    scheme = match.group(1).lower() if match else ""
    from .s3 import S3_SCHEMES, ConditionalS3Store, boto3_available

    if scheme not in S3_SCHEMES:
        return store
    if not boto3_available():
        _warn_once(f"{scheme}:// without boto3: publishing a version checks that its manifest "
                   "does not exist and then writes it, which is not safe under concurrent "
                   "writers; install boto3 for conditional creates")
        return store
    return ConditionalS3Store(store, settings)


def _connect_settings(spark) -> Callable[[str], str | None]:
    """Hadoop settings as a Spark Connect client sees them (``spark.hadoop.*``)."""
    def get(name: str) -> str | None:
        if spark is None:
            return None
        try:
            return spark.conf.get(f"spark.hadoop.{name}", None)
        except Exception:
            return None
    return get


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger(__name__).warning("sparkann: %s", message)
