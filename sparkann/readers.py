"""Readers and writers for common ANN benchmark vector file formats.

Pure numpy (no Spark). Supported formats:

* TEXMEX ``.fvecs`` / ``.ivecs`` / ``.bvecs`` (per vector: a little-endian
  int32 dimension ``d`` followed by ``d`` float32 / int32 / uint8 values);
* MNIST ``idx`` files, plain or gzip-compressed;
* ann-benchmarks HDF5 files (needs the optional ``h5py`` dependency,
  ``pip install sparkann[hdf5]``).

The readers do not trust sizes declared in a file: a header must agree with
the data that follows before anything of the declared size is allocated, and
an idx file's data is read up to its declared size only (a gzip "bomb" is
refused without being inflated).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from typing import Any, Callable

import numpy as np

from .vectorio import write_vectors_parquet

__all__ = [
    "IDX_MAX_BYTES",
    "SUPPORTED_FORMATS",
    "guess_format",
    "read_bvecs",
    "read_fvecs",
    "read_hdf5",
    "read_idx",
    "read_idx_vectors",
    "read_ivecs",
    "read_vectors",
    "to_parquet",
    "write_fvecs",
    "write_ivecs",
]

PathLike = str | os.PathLike[str]

#: Formats accepted by :func:`read_vectors`.
SUPPORTED_FORMATS: tuple[str, ...] = ("fvecs", "ivecs", "bvecs", "idx", "hdf5")

#: Default limit on the data an idx file may declare (8 GiB); see :func:`read_idx`.
IDX_MAX_BYTES = 2**33

_GZIP_MAGIC = b"\x1f\x8b"
# deflate expands at most about 1032:1, so a gzip file of n bytes holds at most this x n
_GZIP_MAX_RATIO = 1032
_READ_CHUNK = 16 << 20

# idx type byte -> big-endian element dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------
# TEXMEX .fvecs / .ivecs / .bvecs
# --------------------------------------------------------------------------


def _read_vecs(path: PathLike, dtype: str, kind: str, count: int | None) -> np.ndarray:
    """Read a TEXMEX vecs file whose values have little-endian ``dtype``.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    dtype : str
        Little-endian numpy dtype of the values (``"<f4"``, ``"<i4"``, ``"u1"``).
    kind : str
        Format name used in error messages (``"fvecs"``, ...).
    count : int or None
        Read at most this many vectors; ``None`` reads all of them.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(n, d)`` in native byte order.
    """
    path = os.fspath(path)
    value_dtype = np.dtype(dtype)
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0 or None, got {count}")
    size = os.path.getsize(path)
    if size == 0:
        # An empty file holds zero vectors of unknown dimension.
        return np.empty((0, 0), dtype=value_dtype.newbyteorder("="))
    if size < 4:
        raise ValueError(
            f"{path}: {size} bytes is too short for a header; "
            f"the file is truncated or not a {kind} file"
        )

    # The first int32 gives the dimension; every record has the same size.
    d = int(np.fromfile(path, dtype="<i4", count=1)[0])
    if d <= 0:
        raise ValueError(
            f"{path}: invalid vector dimension {d} in the first record; "
            f"not a {kind} file"
        )
    row_bytes = 4 + d * value_dtype.itemsize
    if row_bytes > size:  # bound the declared dimension by the file before allocating
        raise ValueError(
            f"{path}: the first record declares dimension {d} ({row_bytes} bytes per "
            f"record) but the file holds only {size} bytes; the file is truncated or "
            f"not a {kind} file"
        )
    if size % row_bytes != 0:
        raise ValueError(
            f"{path}: file size {size} is not a multiple of the record size "
            f"{row_bytes} bytes (d={d}); the file is truncated or not a {kind} file"
        )
    n = size // row_bytes if count is None else min(count, size // row_bytes)

    # Read the records as raw bytes, one row per vector, then split the columns.
    raw = np.fromfile(path, dtype=np.uint8, count=n * row_bytes).reshape(n, row_bytes)
    dims = np.ascontiguousarray(raw[:, :4]).view("<i4").ravel()
    bad = np.flatnonzero(dims != d)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: vector {i} has dimension {int(dims[i])}, expected {d}; "
            f"the file is corrupt or not a {kind} file"
        )
    values = np.ascontiguousarray(raw[:, 4:]).view(value_dtype)
    return values.astype(value_dtype.newbyteorder("="), copy=False)


def read_fvecs(path: PathLike, count: int | None = None) -> np.ndarray:
    """A TEXMEX ``.fvecs`` file as a float32 array (n, d); ``count`` reads
    only the first vectors. Raises ValueError on a truncated or inconsistent file."""
    return _read_vecs(path, "<f4", "fvecs", count)


def read_ivecs(path: PathLike, count: int | None = None) -> np.ndarray:
    """A TEXMEX ``.ivecs`` file (e.g. ground-truth ids) as an int32 array (n, d); ``count``
    reads only the first vectors. Raises ValueError on a truncated or inconsistent file."""
    return _read_vecs(path, "<i4", "ivecs", count)


def read_bvecs(path: PathLike, count: int | None = None) -> np.ndarray:
    """A TEXMEX ``.bvecs`` file (e.g. SIFT1B) as a uint8 array (n, d); ``count`` reads
    only the first vectors. Raises ValueError on a truncated or inconsistent file."""
    return _read_vecs(path, "u1", "bvecs", count)


def _write_vecs(path: PathLike, values: np.ndarray, dtype: str) -> None:
    """Write a 2-D array, already converted to ``dtype``, as TEXMEX records."""
    n, d = values.shape
    values = np.ascontiguousarray(values, dtype=dtype)
    # One byte row per record: int32 dimension, then the raw value bytes.
    out = np.empty((n, 4 + values.itemsize * d), dtype=np.uint8)
    out[:, :4] = np.array([d], dtype="<i4").view(np.uint8)
    out[:, 4:] = values.view(np.uint8).reshape(n, -1)
    out.tofile(os.fspath(path))


def _check_2d(array: Any, kind: str) -> np.ndarray:
    """Return ``array`` as a 2-D numpy array with ``d > 0``, else raise."""
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"{kind} data must be 2-D (n, d), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{kind} data must have dimension d > 0")
    return arr


def write_fvecs(path: PathLike, array: Any) -> None:
    """Write a 2-D array as a TEXMEX ``.fvecs`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (overwritten).
    array : array_like
        Array of shape ``(n, d)`` with ``d > 0``; values are cast to float32.

    Raises
    ------
    ValueError
        If ``array`` is not 2-D or has ``d == 0``.
    """
    arr = _check_2d(array, "fvecs")
    _write_vecs(path, arr.astype("<f4", copy=False), "<f4")


def write_ivecs(path: PathLike, array: Any) -> None:
    """Write a 2-D integer array as a TEXMEX ``.ivecs`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (overwritten).
    array : array_like
        Integer array of shape ``(n, d)`` with ``d > 0`` and values that fit
        in int32.

    Raises
    ------
    TypeError
        If ``array`` is not of an integer (or boolean) dtype.
    ValueError
        If ``array`` is not 2-D, has ``d == 0`` or holds values outside int32.
    """
    arr = _check_2d(array, "ivecs")
    if arr.dtype.kind not in "biu":
        raise TypeError(f"ivecs data must be integers, got dtype {arr.dtype}")
    values = arr.astype("<i4")
    if not np.array_equal(values, arr):
        raise ValueError("ivecs data holds values outside the int32 range")
    _write_vecs(path, values, "<i4")


# --------------------------------------------------------------------------
# MNIST idx
# --------------------------------------------------------------------------


def _idx_header(stream, path: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Read and check an idx header (``00 00 <type> <ndim>`` and ndim big-endian int32)."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{path}: bad idx magic {magic.hex(' ') or '(empty file)'}; "
            "expected 00 00 <type> <ndim>; not an idx file"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unsupported idx type byte 0x{type_code:02x}; expected one of "
            + ", ".join(f"0x{t:02x}" for t in _IDX_DTYPES)
        )
    if ndim == 0:
        raise ValueError(f"{path}: idx header declares 0 dimensions")
    dims = _read_exactly(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: idx header is truncated ({4 + len(dims)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(dims, dtype=">i4"))
    if any(s < 0 for s in shape):
        raise ValueError(f"{path}: negative size in idx shape {shape}")
    return _IDX_DTYPES[type_code], shape


def _read_exactly(stream, size: int) -> bytes:
    """Up to ``size`` bytes of ``stream``: fewer only where the stream ends."""
    parts, remaining = [], size
    while remaining > 0:
        part = stream.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _read_into(stream, buffer: bytearray) -> int:
    """Fill ``buffer`` from ``stream`` in chunks; the number of bytes read."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled : filled + _READ_CHUNK])
        if not count:
            break
        filled += count
    return filled


def _idx_view(path: PathLike, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Parse an idx file, plain or gzip-compressed, into a big-endian array.

    The header is read first and the declared size bounded (by ``max_bytes``
    and by what the file could hold); then exactly the declared number of
    bytes is read, plus one to make sure nothing follows.
    """
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            dtype, shape = _idx_header(stream, path)
            header = 4 + 4 * len(shape)
            n_items = math.prod(shape)
            expected = n_items * dtype.itemsize
            described = f"idx header declares shape {shape} ({expected} data bytes)"
            if expected > max_bytes:
                raise ValueError(
                    f"{path}: {described}, more than the limit of {max_bytes} bytes "
                    "(max_bytes=); refusing to read it"
                )
            if not compressed and header + expected != file_size:
                problem = "is truncated" if header + expected > file_size else "has extra data"
                raise ValueError(
                    f"{path}: {described} but the file holds {file_size - header}; "
                    f"the file {problem} or is not an idx file"
                )
            if compressed and header + expected > file_size * _GZIP_MAX_RATIO:
                raise ValueError(
                    f"{path}: {described}, more than a {file_size}-byte gzip file can "
                    "hold; the file is truncated or not an idx file"
                )
            data = bytearray(expected)
            actual = _read_into(stream, data)
            if actual < expected:
                raise ValueError(
                    f"{path}: {described} but the data ends after {actual}; "
                    "the file is truncated or not an idx file"
                )
            if stream.read(1):
                raise ValueError(
                    f"{path}: {described} but more data follows; "
                    "the file is corrupt or not an idx file"
                )
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
        finally:
            if compressed:
                stream.close()
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # writable: data is a bytearray


def read_idx(path: PathLike, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read an MNIST ``idx`` file, plain or gzip-compressed.

    Compression is detected from the gzip magic bytes, not the file name. The
    header is checked before any data is read, and then exactly the declared
    amount of data is read (streamed through gzip for compressed files), so a
    file that declares or holds more than it should is refused without being
    read whole.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    max_bytes : int, optional
        Refuse files whose header declares more data bytes than this
        (default: :data:`IDX_MAX_BYTES`, 8 GiB).

    Returns
    -------
    numpy.ndarray
        Writable array with the shape and element type declared in the header
        (uint8, int8, int16, int32, float32 or float64, native byte order).

    Raises
    ------
    ValueError
        On a bad magic number, unsupported type byte, a declared size above
        ``max_bytes`` or more than the file can hold, data shorter or longer
        than the header declares, or a corrupt gzip stream.
    """
    view = _idx_view(path, max_bytes)
    return view.astype(view.dtype.newbyteorder("="), copy=False)  # owned, writable, native


def read_idx_vectors(path: PathLike, max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Read an idx file as a 2-D float32 matrix, one row per item.

    Trailing dimensions are flattened, e.g. ``(n, 28, 28)`` -> ``(n, 784)``;
    a 1-D file becomes ``(n, 1)``.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    max_bytes : int, optional
        As for :func:`read_idx`.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(n, prod(shape[1:]))``.

    Raises
    ------
    ValueError
        As for :func:`read_idx`.
    """
    view = _idx_view(path, max_bytes)
    n = view.shape[0]
    return view.reshape(n, math.prod(view.shape[1:])).astype(np.float32)


# --------------------------------------------------------------------------
# HDF5 (ann-benchmarks)
# --------------------------------------------------------------------------


def read_hdf5(path: PathLike, dataset: str) -> np.ndarray:
    """Read one dataset of an ann-benchmarks HDF5 file.

    Parameters
    ----------
    path : str or os.PathLike
        HDF5 file, e.g. ``fashion-mnist-784-euclidean.hdf5``.
    dataset : str
        Dataset name: usually ``"train"``, ``"test"``, ``"neighbors"`` or
        ``"distances"``.

    Returns
    -------
    numpy.ndarray
        The dataset's contents with its stored dtype.

    Raises
    ------
    ImportError
        If ``h5py`` is not installed.
    KeyError
        If the file has no such dataset.
    """
    try:
        import h5py  # optional dependency
    except ImportError as exc:
        raise ImportError(
            "reading HDF5 files needs h5py; install it with "
            "`pip install sparkann[hdf5]` (or `pip install h5py`)"
        ) from exc

    path = os.fspath(path)
    with h5py.File(path, "r") as f:
        if dataset not in f:
            raise KeyError(
                f"{path}: no dataset {dataset!r}; available: {sorted(f.keys())}"
            )
        return np.asarray(f[dataset][()])


# --------------------------------------------------------------------------
# Dispatch and Parquet conversion
# --------------------------------------------------------------------------


def guess_format(path: PathLike) -> str | None:
    """The vector format :func:`read_vectors` infers from a file name, or None.

    ``.fvecs`` / ``.ivecs`` / ``.bvecs``, ``.hdf5`` / ``.h5``, and for idx
    ``-ubyte`` or ``.idx`` / ``.idx<n>``, optionally followed by ``.gz``.
    """
    name = os.path.basename(os.fspath(path)).lower()
    for ext in ("fvecs", "ivecs", "bvecs"):
        if name.endswith("." + ext):
            return ext
    if name.endswith((".hdf5", ".h5")):
        return "hdf5"
    # idx: "...-ubyte", ".idx", ".idx3", "...idx3-ubyte", optionally ".gz"
    stem = name.removesuffix(".gz")
    if stem.endswith("-ubyte") or re.search(r"\.idx\d*$", stem):
        return "idx"
    return None


def read_vectors(path: PathLike, fmt: str | None = None, **kw: Any) -> np.ndarray:
    """Read vectors from a file in any supported format.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    fmt : str, optional
        One of ``"fvecs"``, ``"ivecs"``, ``"bvecs"``, ``"idx"``, ``"hdf5"``.
        When ``None`` the format is taken from the extension (``.fvecs``,
        ``.ivecs``, ``.bvecs``, ``-ubyte`` / ``.idx*`` optionally with
        ``.gz``, ``.hdf5`` / ``.h5``).
    **kw
        Passed to the reader, e.g. ``count=`` for vecs files,
        ``max_bytes=`` for idx files or ``dataset=`` for HDF5.

    Returns
    -------
    numpy.ndarray
        A 2-D array; idx files are flattened to float32 with
        :func:`read_idx_vectors`.

    Raises
    ------
    ValueError
        If the format is unknown or cannot be guessed from the file name.
    """
    path = os.fspath(path)
    supported = ", ".join(SUPPORTED_FORMATS)
    if fmt is None:
        fmt = guess_format(path)
        if fmt is None:
            raise ValueError(
                f"{path}: cannot infer the vector format from the file name; "
                f"pass fmt= (supported formats: {supported})"
            )
    readers: dict[str, Callable[..., np.ndarray]] = {
        "fvecs": read_fvecs,
        "ivecs": read_ivecs,
        "bvecs": read_bvecs,
        "idx": read_idx_vectors,
        "hdf5": read_hdf5,
    }
    reader = readers.get(fmt.lower())
    if reader is None:
        raise ValueError(f"unknown format {fmt!r}; supported formats: {supported}")
    return reader(path, **kw)


def to_parquet(path: PathLike, output: PathLike, fmt: str | None = None,
               **kw: Any) -> tuple[int, int]:
    """Convert a vector file to one Parquet file with columns ``id`` (long, the row
    number) and ``vector`` (array<float>), ready for ``spark.read.parquet``.

    The API behind ``sparkann convert``; ``fmt`` and ``**kw`` are as for
    :func:`read_vectors` (e.g. ``dataset="test"`` for HDF5). Returns
    ``(rows, dim)``. An existing ``output`` file is replaced.
    """
    vectors = read_vectors(path, fmt, **kw)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
    write_vectors_parquet(vectors, os.fspath(output))
    return int(vectors.shape[0]), int(vectors.shape[1])
