"""numpy vectors as Arrow tables and Parquet files (columns ``id`` long, ``vector`` array<float>).

Shared by :func:`sparkann.readers.to_parquet` and the ``sparkann convert`` and
``sparkann demo`` commands. Needs only numpy and pyarrow (no Spark).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ROW_GROUP_BYTES", "vectors_table", "write_vectors_parquet"]

#: Target size of one Parquet row group written by :func:`write_vectors_parquet`.
ROW_GROUP_BYTES = 64 << 20


def vectors_table(vectors: np.ndarray, first_id: int = 0):
    """A pyarrow table with ``id`` (int64 row numbers) and ``vector`` (list<float32>).

    Parameters
    ----------
    vectors : numpy.ndarray
        Array of shape ``(n, d)``; cast to float32.
    first_id : int, optional
        Id of the first row.

    Returns
    -------
    pyarrow.Table
        Built from the flat buffer and offsets, without per-row Python objects.
    """
    import pyarrow as pa

    n, d = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    ids = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
    return pa.table({"id": ids, "vector": pa.ListArray.from_arrays(offsets, values)})


def write_vectors_parquet(vectors: np.ndarray, path: str,
                          row_group_bytes: int | None = None) -> None:
    """Write ``vectors`` to one Parquet file, ids being the row numbers.

    Parameters
    ----------
    vectors : numpy.ndarray
        Array of shape ``(n, d)``.
    path : str
        Destination file (replaced if it exists).
    row_group_bytes : int, optional
        Approximate size of a row group (default: :data:`ROW_GROUP_BYTES`, 64 MiB).
    """
    import pyarrow.parquet as pq

    group_bytes = ROW_GROUP_BYTES if row_group_bytes is None else row_group_bytes
    rows_per_group = max(1, group_bytes // (4 * max(1, vectors.shape[1])))
    schema = vectors_table(vectors[:0]).schema
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(vectors), rows_per_group):
            writer.write_table(vectors_table(vectors[start : start + rows_per_group], start))
