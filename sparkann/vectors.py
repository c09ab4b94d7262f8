"""Vector and id columns: type checks on the driver, numpy views in tasks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

# A vector's largest squared norm: distances and inner products between two such
# vectors stay finite in float32 (||a - b||^2 <= 4 * max(||a||, ||b||)^2).
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4
TOO_LARGE = (f"a vector's squared norm must stay below {MAX_SQUARED_NORM:.3g} for its "
             "distances to fit in float32")
_NUMERIC = (T.FloatType, T.DoubleType, T.IntegerType, T.LongType, T.ShortType, T.ByteType)
_ID_TYPES = {T.LongType: "long", T.IntegerType: "long", T.ShortType: "long", T.StringType: "string"}


def _field(df: DataFrame, name: str) -> T.StructField:
    fields = {f.name: f for f in df.schema.fields}
    if name not in fields:
        raise ValueError(
            f"column {name!r} not found; the DataFrame has columns {sorted(fields)}"
        )
    return fields[name]


def vector_column(df: DataFrame, name: str, param: str = "vectorCol") -> Column:
    """``name`` as an ``array<float>`` column, from array<numeric> or an ML vector."""
    dtype = _field(df, name).dataType
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, _NUMERIC):
        return F.col(name).cast("array<float>")
    if isinstance(dtype, T.UserDefinedType) and dtype.simpleString() == "vector":
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(F.col(name), "float32")
    raise TypeError(
        f"{param}={name!r} has type {dtype.simpleString()}; expected array<float>, "
        "array<double> or a pyspark.ml.linalg vector"
    )


def id_type(df: DataFrame, name: str) -> str:
    """``"long"`` or ``"string"``: the id type stored with the index."""
    dtype = _field(df, name).dataType
    for spark_type, kind in _ID_TYPES.items():
        if isinstance(dtype, spark_type):
            return kind
    raise TypeError(
        f"idCol={name!r} has type {dtype.simpleString()}; expected a long, int or string column"
    )


def to_matrix(arrays: pa.Array, dim: int | None = None, what: str = "vector") -> np.ndarray:
    """A list<float> Arrow column as a (n, d) float32 matrix, zero-copy where possible."""
    if isinstance(arrays, pa.ChunkedArray):
        arrays = arrays.combine_chunks()
    n = len(arrays)
    if arrays.null_count:
        raise ValueError(f"{what} holds {arrays.null_count} null vector(s)")
    lengths = np.diff(np.asarray(arrays.offsets))
    width = dim if dim is not None else (int(lengths[0]) if n else 0)
    if n and (lengths != width).any():
        bad = int(lengths[lengths != width][0])
        raise ValueError(f"{what} has dimension {bad}, expected {width}")
    flat = arrays.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(n, width)


def list_array(matrix: np.ndarray) -> pa.Array:
    """A (n, d) matrix as an Arrow list<float> column."""
    n, dim = matrix.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))


def checked_queries(arrays: pa.Array, dim: int, column: str, ids: pa.Array | None = None,
                    id_col: str = "") -> np.ndarray:
    """Query vectors as a (n, dim) matrix, checked inside a task: nulls, dimension,
    NaN, infinity and values too large for float32 distances (squared norm above
    ``MAX_SQUARED_NORM``) fail with the column (and, when known, the row's id) named."""
    if isinstance(arrays, pa.ChunkedArray):
        arrays = arrays.combine_chunks()
    where = lambda row: (f" (row with {id_col}={ids[row].as_py()!r})"  # noqa: E731
                         if ids is not None else "")
    if arrays.null_count:
        row = int(np.flatnonzero(np.asarray(arrays.is_null()))[0])
        raise ValueError(f"query column {column!r} holds a null vector{where(row)}")
    lengths = np.diff(np.asarray(arrays.offsets))
    if len(lengths) and (lengths != dim).any():
        row = int(np.flatnonzero(lengths != dim)[0])
        raise ValueError(f"query vectors in column {column!r} have dimension "
                         f"{int(lengths[row])}{where(row)}, but the index has dimension {dim}")
    vectors = to_matrix(arrays, dim, f"query column {column!r}")
    squared = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    fits = squared <= MAX_SQUARED_NORM  # False for NaN and infinity too
    if not fits.all():
        row = int(np.flatnonzero(~fits)[0])
        values = vectors[row]
        if np.isfinite(values).all():
            bad = float(values[np.argmax(np.abs(values))])
            raise ValueError(f"query column {column!r} holds a value too large ({bad:.6g})"
                             f"{where(row)}: {TOO_LARGE}")
        bad = float(values[~np.isfinite(values)][0])
        raise ValueError(f"query column {column!r} holds a non-finite value ({bad}){where(row)}")
    return vectors
