"""Lists of fixed-width values packed as binary: one value per list, its values' bytes.

Spark moves a binary value as one block, where it moves an array element by element,
so the partition-side search packs its query vectors and candidate lists this way
between its stages. Pure numpy + pyarrow.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def packed_rows(matrix: np.ndarray) -> pa.Array:
    """A (n, d) matrix as a binary column: each row's bytes."""
    n, dim = matrix.shape
    data = np.ascontiguousarray(matrix)
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(dim * data.itemsize)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                  pa.py_buffer(data.tobytes())])


def unpacked_rows(packed: pa.Array, dim: int, dtype=np.float32) -> np.ndarray:
    """The (n, dim) matrix of a column of :func:`packed_rows` (no nulls)."""
    return _values(packed, np.dtype(dtype)).reshape(len(packed), dim)


def packed_lists(lists: pa.Array) -> pa.Array:
    """A list column of fixed-width values as a binary column (nulls kept); a list
    column of other values (strings) as it is."""
    value_type = lists.type.value_type
    if not pa.types.is_primitive(value_type):
        return lists
    width = value_type.bit_width // 8
    offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = lists.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    byte_offsets = ((offsets - offsets[0]) * width).astype(np.int32)
    packed = pa.Array.from_buffers(pa.binary(), len(lists), [
        None, pa.py_buffer(byte_offsets), pa.py_buffer(np.ascontiguousarray(values).tobytes())])
    if lists.null_count:
        packed = pc.if_else(lists.is_valid(), packed, pa.scalar(None, pa.binary()))
    return packed


def unpacked_lists(packed: pa.Array, value_type: pa.DataType) -> pa.Array:
    """The list<value_type> column of a column of :func:`packed_lists`; a list column
    as it is."""
    if not (pa.types.is_binary(packed.type) or pa.types.is_large_binary(packed.type)):
        return packed
    dtype = np.dtype(value_type.to_pandas_dtype())
    offsets = _byte_offsets(packed)
    values = _values(packed, dtype)
    list_offsets = pa.array((offsets - offsets[0]) // dtype.itemsize, pa.int32())
    mask = packed.is_null() if packed.null_count else None
    return pa.ListArray.from_arrays(list_offsets, pa.array(values, value_type), mask=mask)


def _byte_offsets(packed: pa.Array) -> np.ndarray:
    wide = pa.types.is_large_binary(packed.type)
    buffer = packed.buffers()[1]
    if buffer is None:
        return np.zeros(len(packed) + 1, np.int64)
    offsets = np.frombuffer(buffer, np.int64 if wide else np.int32)
    return offsets[packed.offset:packed.offset + len(packed) + 1].astype(np.int64)


def _values(packed: pa.Array, dtype: np.dtype) -> np.ndarray:
    """The values of all the lists of a packed column, in order."""
    offsets = _byte_offsets(packed)
    data = packed.buffers()[2]
    if data is None or offsets[-1] == offsets[0]:
        return np.empty(0, dtype)
    return np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]].view(dtype)
