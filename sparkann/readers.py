"""Readers and writers for common ANN benchmark vector file formats.

Pure numpy (no Spark). Supported formats:

* TEXMEX ``.fvecs`` / ``.ivecs`` / ``.bvecs`` (per vector: a little-endian
  int32 dimension ``d`` followed by ``d`` float32 / int32 / uint8 values);
* MNIST ``idx`` files, plain or gzip-compressed;
* ann-benchmarks HDF5 files (needs the optional ``h5py`` dependency,
  ``pip install sparkann[hdf5]``).

``load_dataset`` reads the shared data folder layout (``fashion-mnist``,
``mnist``, ``sift10k``) into base vectors, queries and ground truth.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "DATASETS",
    "SUPPORTED_FORMATS",
    "default_data_root",
    "load_dataset",
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

#: Shared-data layout: name -> (base file, query file, ground-truth file or None).
DATASETS: dict[str, tuple[str, str, str | None]] = {
    "fashion-mnist": ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", None),
    "mnist": ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", None),
    "sift10k": (
        "siftsmall_base.fvecs",
        "siftsmall_query.fvecs",
        "siftsmall_groundtruth.ivecs",
    ),
}

_GZIP_MAGIC = b"\x1f\x8b"

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


def _read_bytes_maybe_gzip(path: str) -> bytes:
    """Return the content of ``path``, gunzipped if it starts with 1f 8b."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def _idx_view(path: PathLike) -> np.ndarray:
    """Parse an idx file into a read-only big-endian array view."""
    path = os.fspath(path)
    buf = _read_bytes_maybe_gzip(path)

    # Magic: 00 00 <type> <ndim>
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise ValueError(
            f"{path}: bad idx magic {buf[:4].hex(' ') or '(empty file)'}; "
            "expected 00 00 <type> <ndim>; not an idx file"
        )
    type_code, ndim = buf[2], buf[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unsupported idx type byte 0x{type_code:02x}; expected one of "
            + ", ".join(f"0x{t:02x}" for t in _IDX_DTYPES)
        )
    if ndim == 0:
        raise ValueError(f"{path}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise ValueError(f"{path}: idx header is truncated ({len(buf)} bytes)")

    # One big-endian int32 per dimension, then the data.
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">i4", count=ndim, offset=4))
    if any(s < 0 for s in shape):
        raise ValueError(f"{path}: negative size in idx shape {shape}")
    dtype = _IDX_DTYPES[type_code]
    n_items = math.prod(shape)
    expected = n_items * dtype.itemsize
    actual = len(buf) - header
    if actual != expected:
        raise ValueError(
            f"{path}: idx header declares shape {shape} ({expected} data bytes) "
            f"but the file holds {actual}; the file is truncated or not an idx file"
        )
    return np.frombuffer(buf, dtype=dtype, count=n_items, offset=header).reshape(shape)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an MNIST ``idx`` file, plain or gzip-compressed.

    Compression is detected from the gzip magic bytes, not the file name.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.

    Returns
    -------
    numpy.ndarray
        Writable array with the shape and element type declared in the header
        (uint8, int8, int16, int32, float32 or float64, native byte order).

    Raises
    ------
    ValueError
        On a bad magic number, unsupported type byte, or a size that does not
        match the header.
    """
    view = _idx_view(path)
    return view.astype(view.dtype.newbyteorder("="))  # copy -> writable, native


def read_idx_vectors(path: PathLike) -> np.ndarray:
    """Read an idx file as a 2-D float32 matrix, one row per item.

    Trailing dimensions are flattened, e.g. ``(n, 28, 28)`` -> ``(n, 784)``;
    a 1-D file becomes ``(n, 1)``.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(n, prod(shape[1:]))``.
    """
    view = _idx_view(path)
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
# Dispatch and datasets
# --------------------------------------------------------------------------


def _format_from_name(path: str) -> str | None:
    """Guess the format from the file name, or return None."""
    name = os.path.basename(path).lower()
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
        Passed to the reader, e.g. ``count=`` for vecs files or
        ``dataset=`` for HDF5.

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
        fmt = _format_from_name(path)
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
    from .cli import write_vectors_parquet  # pyarrow writer shared with the CLI

    vectors = read_vectors(path, fmt, **kw)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {vectors.shape}")
    write_vectors_parquet(vectors, os.fspath(output))
    return int(vectors.shape[0]), int(vectors.shape[1])


def default_data_root() -> str | None:
    """Locate the shared data folder.

    Returns
    -------
    str or None
        ``$SPARKANN_DATA`` if set; else ``<repo>/../shared/data`` (relative to
        the directory holding the ``sparkann`` package) if it exists; else
        ``None``.
    """
    env = os.environ.get("SPARKANN_DATA")
    if env:
        return env
    repo = Path(__file__).resolve().parent.parent
    candidate = (repo.parent / "shared" / "data").resolve()
    return str(candidate) if candidate.is_dir() else None


def _require_file(path: Path, name: str) -> str:
    """Return ``path`` as a string, or raise FileNotFoundError naming the dataset."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: missing file {path}")
    return str(path)


def _read_float32(path: str) -> np.ndarray:
    """Read vectors with :func:`read_vectors` and return them as float32."""
    return read_vectors(path).astype(np.float32, copy=False)


def load_dataset(name: str, root: PathLike | None = None) -> dict[str, Any]:
    """Load a dataset from the shared data folder layout.

    Parameters
    ----------
    name : str
        ``"fashion-mnist"``, ``"mnist"`` or ``"sift10k"``.
    root : str or os.PathLike, optional
        Folder holding one sub-folder per dataset; defaults to
        :func:`default_data_root`.

    Returns
    -------
    dict
        ``{"base": float32 (n, d), "queries": float32 (nq, d),
        "groundtruth": int32 (nq, k) or None, "metric": "l2"}``.

    Raises
    ------
    ValueError
        If ``name`` is unknown or the files disagree on dimensions.
    FileNotFoundError
        If the data root or a dataset file is missing.
    """
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}"
        )
    if root is None:
        root = default_data_root()
        if root is None:
            raise FileNotFoundError(
                "no data root found: pass root= or set the SPARKANN_DATA "
                "environment variable"
            )
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {folder} does not exist")

    base_file, query_file, gt_file = DATASETS[name]
    base = _read_float32(_require_file(folder / base_file, name))
    queries = _read_float32(_require_file(folder / query_file, name))
    groundtruth = None
    if gt_file is not None:
        groundtruth = read_ivecs(_require_file(folder / gt_file, name))

    # Sanity checks across files.
    if base.shape[1] != queries.shape[1]:
        raise ValueError(
            f"dataset {name!r}: base dim {base.shape[1]} "
            f"!= query dim {queries.shape[1]}"
        )
    if groundtruth is not None and groundtruth.shape[0] != queries.shape[0]:
        raise ValueError(
            f"dataset {name!r}: {groundtruth.shape[0]} ground-truth rows "
            f"for {queries.shape[0]} queries"
        )
    return {
        "base": base,
        "queries": queries,
        "groundtruth": groundtruth,
        "metric": "l2",
    }
