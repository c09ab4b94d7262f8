"""Item columns: input columns stored with the index beside each vector.

A partition's row of the index table holds them in one ``items`` struct of arrays,
each array aligned with the partition's ``ids`` (label order), and their digest in
``items_sha256``, which the partition's checksum covers. Only atomic Spark types are
stored; their Arrow forms are fixed here. Pure pyarrow + numpy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .format import ITEM_TYPE_NAMES, MAX_ITEM_COLUMNS, IndexFormatError, framed_sha256, ids_digest

ITEMS, ITEMS_SHA = "items", "items_sha256"
# Spark type (simpleString) -> the Arrow type of its values in a stored partition
ITEM_TYPES = dict(zip(ITEM_TYPE_NAMES, (
    pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.float32(), pa.float64(),
    pa.string(), pa.date32())))


def item_types(schema, names: list[str], reserved: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, Spark type) of each item column of a Spark ``schema``; ``ValueError``
    naming the column for a missing, reserved or unsupported one."""
    if len(names) > MAX_ITEM_COLUMNS:
        raise ValueError(f"itemCols names {len(names)} columns; at most {MAX_ITEM_COLUMNS}")
    found = []
    for name in names:
        if name in reserved:
            raise ValueError(f"itemCols: column {name!r} clashes with a column the index uses "
                             f"({', '.join(dict.fromkeys(reserved))})")
        if name not in schema.names:
            raise ValueError(f"itemCols: column {name!r} is not in the input; it has "
                             f"{schema.names}")
        kind = schema[name].dataType.simpleString()
        if kind not in ITEM_TYPES:
            raise ValueError(f"itemCols: column {name!r} has type {kind}; item columns may be "
                             f"{', '.join(ITEM_TYPES)} (cast it, for example to string)")
        found.append((name, kind))
    return found


def struct_ddl(types: list[tuple[str, str]]) -> str:
    """The Spark DDL of the ``items`` column of an index table."""
    fields = ", ".join(f"`{name}`: array<{kind}>" for name, kind in types)
    return f"struct<{fields}>"


def arrow_struct(types: list[tuple[str, str]]) -> pa.DataType:
    return pa.struct([(name, pa.list_(ITEM_TYPES[kind])) for name, kind in types])


def stored_items(table: pa.Table, types: list[tuple[str, str]]) -> pa.Array:
    """One ``items`` value (a struct of arrays) holding ``table``'s item columns."""
    offsets = pa.array([0, table.num_rows], pa.int32())
    lists = [pa.ListArray.from_arrays(offsets, column_of(table, name, kind))
             for name, kind in types]
    return pa.StructArray.from_arrays(lists, [name for name, _ in types])


def column_of(table: pa.Table, name: str, kind: str) -> pa.Array:
    column = table.column(name)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.cast(ITEM_TYPES[kind])


def items_table(value: pa.Array, types: list[tuple[str, str]], rows: int,
                pid: int) -> pa.Table:
    """The item columns of a partition from its stored ``items`` value (one row), each
    checked to have ``rows`` values of its declared type."""
    expected = arrow_struct(types)
    if value.type != expected:
        raise IndexFormatError(f"index partition {pid}: its item columns are {value.type}, "
                               f"the manifest says {expected}")
    columns = {}
    for name, _ in types:
        field = value.field(name)
        if len(field) != 1 or not field.is_valid()[0].as_py():
            raise IndexFormatError(f"index partition {pid}: item column {name!r} is damaged")
        values = field.values.slice(field.offsets[0].as_py(),
                                    field.offsets[1].as_py() - field.offsets[0].as_py())
        if len(values) != rows:
            raise IndexFormatError(f"index partition {pid}: item column {name!r} holds "
                                   f"{len(values)} values for {rows} ids")
        columns[name] = values
    return pa.table(columns) if columns else pa.table({})


def items_digest(table: pa.Table) -> str:
    """SHA-256 over each item column's name, type, validity and values."""
    parts = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        parts += [name.encode(), str(column.type).encode(),
                  np.asarray(column.is_valid(), np.uint8).tobytes(), _value_bytes(column)]
    return framed_sha256(*parts)


def _value_bytes(column: pa.Array) -> bytes:
    if pa.types.is_string(column.type):
        return ids_digest(pc.fill_null(column, ""))
    if pa.types.is_boolean(column.type):
        return np.asarray(pc.fill_null(column, False), np.uint8).tobytes()
    if pa.types.is_date32(column.type):
        column = column.cast(pa.int32())
    values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes()
