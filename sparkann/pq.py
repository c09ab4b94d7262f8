"""Product quantization (PQ) with asymmetric distance computation (ADC).

A vector of dimension ``d = m * dsub`` is cut into ``m`` contiguous
sub-vectors. Each sub-vector is replaced by the index of its nearest codeword
in a per-subspace codebook of ``ksub = 2 ** nbits`` k-means centroids, so a
vector is stored as ``m`` small integer codes. Queries are compared with
encoded vectors through per-query lookup tables (ADC): the distance to an
encoded vector is a sum of ``m`` table look-ups, without decoding it.

IVFADC residuals are the caller's job: subtract each vector's coarse (IVF)
centroid before :func:`train_codebook` and :func:`encode`. For ``"l2"`` build
the tables from ``query - centroid``; for ``"ip"`` build them from the raw
query and add ``-query @ centroid`` to the resulting distances.

This module is pure numpy (plus scikit-learn's ``KMeans`` for training).
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from .exact import top_k

__all__ = [
    "PQCodebook",
    "adc_distances",
    "adc_tables",
    "adc_topk",
    "codebook_from_bytes",
    "codebook_to_bytes",
    "decode",
    "encode",
    "pack_codes",
    "reconstruction_rmse",
    "train_codebook",
    "unpack_codes",
]

Metric = Literal["l2", "ip"]

_VALID_NBITS = (4, 8)
_VALID_KSUB = tuple(1 << b for b in _VALID_NBITS)
_CHUNK_ROWS = 16_384  # vectors per block when encoding / measuring error
_TEMP_ELEMS = 1 << 22  # max elements of a temporary in adc_distances
_TOPK_ELEMS = 1 << 24  # max query x code distances held at once by adc_topk
_MAGIC = b"SPQ1"
_HEADER = struct.Struct("<4sIII")  # magic, m, ksub, dsub (little-endian)


@dataclass(frozen=True, eq=False)
class PQCodebook:
    """Per-subspace codewords of a product quantizer.

    Parameters
    ----------
    codewords : np.ndarray
        Array of shape ``(m, ksub, dsub)``; stored as a read-only float32 copy.
        ``ksub`` must be 16 or 256 (``nbits`` 4 or 8).
    """

    codewords: np.ndarray

    def __post_init__(self) -> None:
        cw = np.array(self.codewords, dtype=np.float32)  # private copy
        if cw.ndim != 3 or 0 in cw.shape:
            raise ValueError(
                f"codewords must have shape (m, ksub, dsub) with non-zero sizes, "
                f"got {cw.shape}"
            )
        if cw.shape[1] not in _VALID_KSUB:
            raise ValueError(
                f"codewords ksub (axis 1) must be one of {_VALID_KSUB}, got {cw.shape[1]}"
            )
        if not np.isfinite(cw).all():
            raise ValueError("codewords contain NaN or infinite values")
        cw.setflags(write=False)
        object.__setattr__(self, "codewords", cw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PQCodebook):
            return NotImplemented
        return bool(np.array_equal(self.codewords, other.codewords))

    @property
    def m(self) -> int:
        """Number of subquantizers."""
        return self.codewords.shape[0]

    @property
    def ksub(self) -> int:
        """Number of codewords per subquantizer."""
        return self.codewords.shape[1]

    @property
    def dsub(self) -> int:
        """Dimension of each sub-vector."""
        return self.codewords.shape[2]

    @property
    def dim(self) -> int:
        """Full vector dimension, ``m * dsub``."""
        return self.m * self.dsub

    @property
    def nbits(self) -> int:
        """Bits per code, ``log2(ksub)``."""
        return self.ksub.bit_length() - 1


# ---------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_nbits(nbits: object) -> int:
    if isinstance(nbits, bool) or nbits not in _VALID_NBITS:
        raise ValueError(f"nbits must be one of {_VALID_NBITS}, got {nbits!r}")
    return int(nbits)  # type: ignore[call-overload]


def _as_matrix(name: str, x: ArrayLike, dim: int | None = None) -> np.ndarray:
    """Validate a finite real 2-D array and return it as float32."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {arr.shape}")
    if not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got {arr.shape[1]}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values (after float32 cast)")
    return arr


def _check_codes(codes: ArrayLike, m: int | None, ksub: int) -> np.ndarray:
    """Validate an integer code matrix of shape (n, m) with values in [0, ksub)."""
    c = np.asarray(codes)
    if c.ndim != 2 or (m is not None and c.shape[1] != m):
        want = f"(n, {m})" if m is not None else "(n, m)"
        raise ValueError(f"codes must have shape {want}, got {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {c.dtype}")
    if c.size and (c.min() < 0 or c.max() >= ksub):
        raise ValueError(
            f"codes must lie in [0, {ksub}), got range [{c.min()}, {c.max()}]"
        )
    return c


def _check_tables(tables: ArrayLike) -> np.ndarray:
    t = np.asarray(tables, dtype=np.float32)
    if t.ndim != 3 or t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"tables must have shape (nq, m, ksub), got {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("tables contain NaN or infinite values")
    return t


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ------------------------------------------------------------------ training


def _subspace_seed(seed: int, j: int) -> int:
    """Independent, reproducible KMeans random_state for subspace ``j``."""
    return int(np.random.SeedSequence([seed, j]).generate_state(1)[0])


def _train_subspace(
    sub: np.ndarray, ksub: int, random_state: int, max_iter: int
) -> np.ndarray:
    if len(sub) <= ksub:
        # Too few points for k-means: the points themselves are an exact codebook;
        # repeat them cyclically to fill all ksub slots.
        return np.resize(sub, (ksub, sub.shape[1]))
    km = KMeans(n_clusters=ksub, n_init=1, max_iter=max_iter, random_state=random_state)
    with warnings.catch_warnings():  # constant subspaces (e.g. blank image borders) are fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        return km.fit(sub).cluster_centers_.astype(np.float32)


def train_codebook(
    vectors: ArrayLike,
    m: int,
    nbits: int = 8,
    seed: int = 0,
    max_iter: int = 25,
    sample_size: int | None = None,
) -> PQCodebook:
    """Train a product quantizer with one k-means per subspace.

    Parameters
    ----------
    vectors : array_like
        Training vectors of shape ``(n, d)`` (residuals for IVFADC).
    m : int
        Number of subquantizers; must divide ``d``.
    nbits : {4, 8}
        Bits per code, giving ``ksub = 2 ** nbits`` codewords per subspace.
    seed : int
        Seed for sampling and for each subspace's k-means initialisation.
    max_iter : int
        Maximum Lloyd iterations per subspace.
    sample_size : int, optional
        Train on a seeded random sample of this many vectors (all if None).

    Returns
    -------
    PQCodebook

    Raises
    ------
    ValueError
        On empty, non-2-D or non-finite input, or invalid parameters.
    TypeError
        If an integer parameter is not an integer.

    Notes
    -----
    k-means runs single-threaded so results are bit-identical for a given seed.
    Subspaces with at most ``ksub`` points use the points as codewords.
    """
    x = _as_matrix("vectors", vectors)
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"vectors must be non-empty, got shape {x.shape}")
    _check_int("m", m, 1)
    if d % m:
        divisors = [k for k in range(1, d + 1) if d % k == 0]
        raise ValueError(f"m={m} must divide the dimension d={d}; valid m: {divisors}")
    nbits = _check_nbits(nbits)
    seed = _check_int("seed", seed, 0)
    max_iter = _check_int("max_iter", max_iter, 1)
    if sample_size is not None and _check_int("sample_size", sample_size, 1) < n:
        rows = np.random.default_rng(seed).choice(n, size=sample_size, replace=False)
        x = x[np.sort(rows)]

    ksub, dsub = 1 << nbits, d // m
    subspaces = x.reshape(len(x), m, dsub)
    with threadpool_limits(limits=1):  # fixed reduction order => deterministic
        codewords = [
            _train_subspace(subspaces[:, j], ksub, _subspace_seed(seed, j), max_iter)
            for j in range(m)
        ]
    return PQCodebook(np.stack(codewords))


# --------------------------------------------------------- encode / decode


def encode(codebook: PQCodebook, vectors: ArrayLike) -> np.ndarray:
    """Encode vectors as the index of the nearest codeword in each subspace.

    Parameters
    ----------
    codebook : PQCodebook
    vectors : array_like
        Vectors of shape ``(n, codebook.dim)``.

    Returns
    -------
    np.ndarray
        uint8 codes of shape ``(n, m)`` (one byte per code, also for 4 bits).
    """
    x = _as_matrix("vectors", vectors, codebook.dim)
    cw = codebook.codewords
    sq_norms = np.einsum("mkd,mkd->mk", cw, cw)
    codes = np.empty((len(x), codebook.m), dtype=np.uint8)
    for rows in _chunks(len(x), _CHUNK_ROWS):
        block = x[rows].reshape(-1, codebook.m, codebook.dsub)
        for j in range(codebook.m):
            # argmin ||x - c||^2 == argmin (||c||^2 - 2 x.c); ties -> lowest index
            scores = sq_norms[j] - 2.0 * (block[:, j] @ cw[j].T)
            codes[rows, j] = scores.argmin(axis=1)
    return codes


def decode(codebook: PQCodebook, codes: ArrayLike) -> np.ndarray:
    """Reconstruct vectors from their codes.

    Parameters
    ----------
    codebook : PQCodebook
    codes : array_like
        Integer codes of shape ``(n, m)``.

    Returns
    -------
    np.ndarray
        float32 array of shape ``(n, dim)``.
    """
    c = _check_codes(codes, codebook.m, codebook.ksub)
    return codebook.codewords[np.arange(codebook.m), c].reshape(len(c), codebook.dim)


def reconstruction_rmse(
    codebook: PQCodebook, vectors: ArrayLike, codes: ArrayLike | None = None
) -> float:
    """Root-mean-square reconstruction error.

    Defined as ``sqrt(mean_i ||x_i - decode(code_i)||^2)``: the RMS over vectors
    of the L2 norm of the reconstruction error (not averaged over dimensions).

    Parameters
    ----------
    codebook : PQCodebook
    vectors : array_like
        Original vectors of shape ``(n, dim)``, ``n >= 1``.
    codes : array_like, optional
        Codes of ``vectors``; computed with :func:`encode` if omitted.

    Returns
    -------
    float
    """
    x = _as_matrix("vectors", vectors, codebook.dim)
    if len(x) == 0:
        raise ValueError("vectors must be non-empty")
    c = (
        encode(codebook, x)
        if codes is None
        else _check_codes(codes, codebook.m, codebook.ksub)
    )
    if len(c) != len(x):
        raise ValueError(f"codes has {len(c)} rows but vectors has {len(x)}")
    total = 0.0
    for rows in _chunks(len(x), _CHUNK_ROWS):
        err = x[rows].astype(np.float64) - decode(codebook, c[rows])
        total += float(np.einsum("ij,ij->", err, err))
    return math.sqrt(total / len(x))


# ------------------------------------------------------------------ packing


def _packed_width(m: int, nbits: int) -> int:
    return (m * nbits + 7) // 8


def pack_codes(codes: ArrayLike, nbits: int) -> np.ndarray:
    """Pack codes for storage: two 4-bit codes per byte, 8-bit codes unchanged.

    Parameters
    ----------
    codes : array_like
        Integer codes of shape ``(n, m)`` with values below ``2 ** nbits``.
    nbits : {4, 8}

    Returns
    -------
    np.ndarray
        uint8 array of shape ``(n, ceil(m * nbits / 8))``. For 4 bits code
        ``2i`` is the low nibble of byte ``i``; an odd ``m`` is padded with 0.
    """
    nbits = _check_nbits(nbits)
    c = _check_codes(codes, None, 1 << nbits).astype(np.uint8)
    if nbits == 8:
        return c
    if c.shape[1] % 2:
        c = np.pad(c, ((0, 0), (0, 1)))
    return c[:, 0::2] | (c[:, 1::2] << 4)


def unpack_codes(packed: ArrayLike | bytes, m: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`, validating sizes of untrusted input.

    Parameters
    ----------
    packed : array_like or bytes
        uint8 array of shape ``(n, ceil(m * nbits / 8))``, or a flat buffer
        whose length is a multiple of that row width.
    m : int
        Number of codes per vector.
    nbits : {4, 8}

    Returns
    -------
    np.ndarray
        uint8 codes of shape ``(n, m)``.
    """
    nbits = _check_nbits(nbits)
    m = _check_int("m", m, 1)
    width = _packed_width(m, nbits)
    if isinstance(packed, (bytes, bytearray, memoryview)):
        p = np.frombuffer(packed, dtype=np.uint8)
    else:
        p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise ValueError(f"packed must have dtype uint8, got {p.dtype}")
    if p.ndim == 1:
        if p.size % width:
            raise ValueError(
                f"packed length {p.size} is not a multiple of {width} bytes per "
                f"vector (m={m}, nbits={nbits})"
            )
        p = p.reshape(-1, width)
    if p.ndim != 2 or p.shape[1] != width:
        raise ValueError(
            f"packed must have shape (n, {width}) for m={m}, nbits={nbits}, got {p.shape}"
        )
    if nbits == 8:
        return p.copy()
    codes = np.empty((len(p), 2 * width), dtype=np.uint8)
    codes[:, 0::2] = p & 0x0F
    codes[:, 1::2] = p >> 4
    return np.ascontiguousarray(codes[:, :m])


# ---------------------------------------------------------------------- ADC


def adc_tables(
    codebook: PQCodebook, queries: ArrayLike, metric: Metric = "l2"
) -> np.ndarray:
    """Per-query distance lookup tables.

    Parameters
    ----------
    codebook : PQCodebook
    queries : array_like
        Queries of shape ``(nq, dim)``.
    metric : {"l2", "ip"}
        ``"l2"``: squared L2 distance from each query sub-vector to each
        codeword. ``"ip"``: negative inner products (smaller is better).

    Returns
    -------
    np.ndarray
        float32 tables of shape ``(nq, m, ksub)``.
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    q = _as_matrix("queries", queries, codebook.dim).astype(np.float64)
    q = q.reshape(len(q), codebook.m, codebook.dsub).transpose(1, 0, 2)  # (m, nq, dsub)
    cw = codebook.codewords.astype(np.float64)  # float64 avoids cancellation
    dots = q @ cw.transpose(0, 2, 1)  # (m, nq, ksub)
    if metric == "ip":
        tables = -dots
    else:
        tables = (q * q).sum(-1)[..., None] - 2.0 * dots + (cw * cw).sum(-1)[:, None, :]
        np.maximum(tables, 0.0, out=tables)
    return np.ascontiguousarray(tables.transpose(1, 0, 2), dtype=np.float32)


def adc_distances(tables: ArrayLike, codes: ArrayLike) -> np.ndarray:
    """Approximate distances ``sum_j tables[q, j, codes[i, j]]``.

    Parameters
    ----------
    tables : array_like
        Lookup tables of shape ``(nq, m, ksub)`` from :func:`adc_tables`.
    codes : array_like
        Integer codes of shape ``(n, m)`` (unpacked).

    Returns
    -------
    np.ndarray
        float32 distances of shape ``(nq, n)``.
    """
    t = _check_tables(tables)
    nq, m, ksub = t.shape
    c = _check_codes(codes, m, ksub)
    out = np.zeros((nq, len(c)), dtype=np.float32)
    for rows in _chunks(len(c), max(1, _TEMP_ELEMS // max(nq, 1))):
        block, acc = c[rows], out[:, rows]  # acc is a view into out
        for j in range(m):
            acc += np.take(t[:, j], block[:, j], axis=1)
    return out


def adc_topk(
    tables: ArrayLike, codes: ArrayLike, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest encoded vectors per query under ADC.

    Parameters
    ----------
    tables : array_like
        Lookup tables of shape ``(nq, m, ksub)``.
    codes : array_like
        Integer codes of shape ``(n, m)``.
    k : int
        Number of neighbours (``>= 1``); capped at ``n``.

    Returns
    -------
    indices : np.ndarray
        Row indices into ``codes``, shape ``(nq, min(k, n))``, best first,
        ties broken by lower index.
    distances : np.ndarray
        Matching float32 ADC distances.
    """
    k = _check_int("k", k, 1)
    t = _check_tables(tables)
    c = _check_codes(codes, t.shape[1], t.shape[2])
    width = min(k, len(c))
    indices = np.empty((len(t), width), np.int64)
    distances = np.empty((len(t), width), np.float32)
    for rows in _chunks(len(t), max(1, _TOPK_ELEMS // max(len(c), 1))):
        indices[rows], distances[rows] = top_k(adc_distances(t[rows], c), k)
    return indices, distances


# ------------------------------------------------------------ serialization


def codebook_to_bytes(codebook: PQCodebook) -> bytes:
    """Serialize as ``b"SPQ1"``, uint32 LE m, ksub, dsub, then float32 LE codewords."""
    header = _HEADER.pack(_MAGIC, codebook.m, codebook.ksub, codebook.dsub)
    return header + codebook.codewords.astype("<f4").tobytes()


def codebook_from_bytes(data: bytes | bytearray | memoryview) -> PQCodebook:
    """Parse the output of :func:`codebook_to_bytes`, checking every size.

    Raises
    ------
    ValueError
        If the data is truncated, has trailing bytes, a bad header or
        non-finite codewords.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) < _HEADER.size:
        raise ValueError(
            f"PQ codebook data is damaged: only {len(buf)} bytes, header needs {_HEADER.size}"
        )
    magic, m, ksub, dsub = _HEADER.unpack_from(buf)
    if magic != _MAGIC:
        raise ValueError(f"PQ codebook data is damaged: magic {magic!r} != {_MAGIC!r}")
    if m == 0 or dsub == 0 or ksub not in _VALID_KSUB:
        raise ValueError(
            f"PQ codebook data is damaged: bad header m={m}, ksub={ksub}, dsub={dsub}"
        )
    expected = _HEADER.size + 4 * m * ksub * dsub
    if len(buf) != expected:
        raise ValueError(
            f"PQ codebook data is damaged: expected {expected} bytes for "
            f"m={m}, ksub={ksub}, dsub={dsub}, got {len(buf)}"
        )
    cw = np.frombuffer(buf, dtype="<f4", offset=_HEADER.size).reshape(m, ksub, dsub)
    try:
        return PQCodebook(cw)
    except ValueError as exc:
        raise ValueError(f"PQ codebook data is damaged: {exc}") from exc
