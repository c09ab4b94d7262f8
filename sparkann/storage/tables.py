"""Tables written by Spark's writers: partition indexes, deletes, id locations.

Each partition of the index table is one row (its ids, payload, codebook,
optional exact vectors and a SHA-256 over all of them). A writer task stores its
rows in files of up to :data:`ROWS_PER_FILE` rows, each row a Parquet row group of
its own, so a reader reads one partition's bytes and a build of thousands of small
partitions writes tens of files, not thousands (index format 6; before it, each
partition had a ``partition_id=N`` directory of its own, which still reads). The
manifest names each partition's file; a file may still hold rows of partitions
rewritten since, which readers skip. The driver learns what was written by reading
back only the small columns (never a payload) and the file each row is in.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .. import testing
from ..index import StoredPartition
from ..tasks import cluster_cores
from . import items
from .format import IndexFormatError, framed_sha256, ids_digest, sha256
from .fs import arrow_fs, is_local, join, local_path, read_file

INDEX_COLUMNS = ["partition_id", "pid", "num_rows", "ids", "payload", "codebook", "vectors",
                 "payload_sha256", "ids_sha256", "vectors_sha256", "payload_bytes", "checksum",
                 "sq_error", "calibration", "task_seconds"]
# What verifying a partition's ids alone reads.
ID_COLUMNS = ["ids", "payload_sha256", "ids_sha256", "vectors_sha256", "checksum"]
INDEX_FACTS = ["partition_id", "num_rows", "payload_bytes", "checksum", "sq_error"]
TASK_SECONDS = "task_seconds"  # [building the index, searching the held-out sample]
DELETE_COLUMNS = ["partition_id", "pid", "labels", "count", "checksum"]
DELETE_SCHEMA = "partition_id int, pid int, labels array<int>, count long, checksum string"
LOCATION_COLUMNS = ["bucket", "id", "partition_id"]
MAX_PARTITION_FILE_BYTES = 4 << 30
ROWS_PER_FILE = 64  # partition rows a writer task puts in one file before the next
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


@contextmanager
def few_listing_tasks(spark) -> Iterator[None]:
    """Spark lists many paths in a job of one task per path (up to 10,000): as many
    tasks as partitions when a table of small partitions is read back. Inside the
    block such a listing runs in about one task per core instead."""
    before = spark.conf.get(LISTING_PARALLELISM, None)
    spark.conf.set(LISTING_PARALLELISM, str(cluster_cores(spark)))
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(LISTING_PARALLELISM)
        else:
            spark.conf.set(LISTING_PARALLELISM, before)


def stored_columns(item_types) -> list[str]:
    """The index table's columns (with the item columns when the index has some)."""
    return INDEX_COLUMNS + ([items.ITEMS, items.ITEMS_SHA] if item_types else [])


def index_schema(id_type: str, item_types: list | None = None) -> str:
    """The index table's Spark schema (``item_types``: (name, Spark type) of the item
    columns stored beside the ids, see :mod:`.items`)."""
    stored_items = (f", {items.ITEMS} {items.struct_ddl(item_types)}, {items.ITEMS_SHA} string"
                    if item_types else "")
    return (f"partition_id int, pid int, num_rows long, ids array<{id_type}>, payload binary, "
            "codebook binary, vectors binary, payload_sha256 string, ids_sha256 string, "
            "vectors_sha256 string, payload_bytes long, checksum string, "
            "sq_error double, calibration binary, task_seconds array<double>" + stored_items)


def digests(stored: StoredPartition, ids: pa.Array) -> dict[str, str]:
    """SHA-256 of each part of a partition: payload (with codebook), ids, exact vectors."""
    return {"payload_sha256": framed_sha256(stored.payload, stored.codebook),
            "ids_sha256": sha256(ids_digest(ids)),
            "vectors_sha256": "" if stored.vectors is None else sha256(stored.vectors)}


def combined_checksum(parts: dict[str, str]) -> str:
    """The checksum the manifest records: over the parts' digests (the item columns'
    when the index stores some), so each part can be verified without reading the
    others."""
    names = ["payload_sha256", "ids_sha256", "vectors_sha256"]
    if parts.get(items.ITEMS_SHA):
        names.append(items.ITEMS_SHA)
    return sha256("|".join(parts[k] for k in names).encode())


def partition_row(pid: int, ids: pa.Array, stored: StoredPartition,
                  calibration: bytes | None = None,
                  seconds: tuple[float, float] | None = None,
                  item_values: pa.Table | None = None,
                  item_types: list | None = None) -> pa.Table:
    """One row of the index table (``calibration``: the fit's held-out searches;
    ``seconds``: the task's time building the index and searching that sample;
    ``item_values``: the rows' item columns, in label order, of ``item_types``)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    parts = digests(stored, ids)
    stored_items = {}
    if item_types:
        if item_values is None or item_values.num_rows != len(ids):
            raise ValueError(f"partition {pid}: item columns for {len(ids)} ids are missing")
        value = items.stored_items(item_values, item_types)
        parts[items.ITEMS_SHA] = items.items_digest(
            items.items_table(value, item_types, len(ids), pid))
        stored_items = {items.ITEMS: value,
                        items.ITEMS_SHA: pa.array([parts[items.ITEMS_SHA]], pa.string())}
    return pa.table({
        "partition_id": pa.array([pid], pa.int32()),
        "pid": pa.array([pid], pa.int32()),  # what readers find the row by
        "num_rows": pa.array([len(ids)], pa.int64()),
        "ids": pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids),
        "payload": pa.array([stored.payload], pa.binary()),
        "codebook": pa.array([stored.codebook], pa.binary()),
        "vectors": pa.array([stored.vectors], pa.binary()),
        **{name: pa.array([parts[name]], pa.string())
           for name in ("payload_sha256", "ids_sha256", "vectors_sha256")},
        "payload_bytes": pa.array([len(stored.payload) + len(stored.codebook)], pa.int64()),
        "checksum": pa.array([combined_checksum(parts)], pa.string()),
        "sq_error": pa.array([stored.sq_error], pa.float64()),
        "calibration": pa.array([calibration], pa.binary()),
        "task_seconds": pa.array([None if seconds is None else list(seconds)],
                                 pa.list_(pa.float64())),
        **stored_items,
    })


def stored_from_row(row: pa.Table) -> tuple[StoredPartition, pa.Array]:
    """The stored partition and its ids from one row of the index table."""
    value = {name: row.column(name)[0].as_py() if name in row.column_names else None
             for name in ("payload", "codebook", "vectors", "sq_error")}
    stored = StoredPartition(payload=value["payload"] or b"", codebook=value["codebook"] or b"",
                             vectors=value["vectors"], sq_error=float(value["sq_error"] or 0.0))
    return stored, row.column("ids")[0].values


def write_table(frame: DataFrame, path: str, by: str) -> None:
    """Store rows partitioned by ``by`` with Spark's writer (fails if ``path`` exists)."""
    frame.write.mode("error").partitionBy(by).parquet(path)  # Connect: not "errorifexists"


def write_partition_rows(frame: DataFrame, path: str) -> None:
    """Store index-table rows with Spark's writer (fails if ``path`` exists): files of
    up to :data:`ROWS_PER_FILE` rows of a task, a row group per row. Spark opens a file
    per directory of a ``partitionBy`` write, about 8 ms each."""
    (frame.write.mode("error").option("maxRecordsPerFile", ROWS_PER_FILE)
     .option("parquet.block.row.count.limit", 1).parquet(path))


def named_rows(spark, root: str, files: list[str]) -> DataFrame:
    """The index-table rows that ``files`` (each partition's file, relative to ``root``;
    "" for none) name, read by Spark: each named file once, and of it only the rows of
    the partitions that name it (a shared file keeps the rows of partitions rewritten
    since). Only the file path and ``pid`` (one row per partition) reach Python."""
    named = {(f, pid) for pid, f in enumerate(files) if f}
    with few_listing_tasks(spark):  # the listing runs when the frame is made
        frame = spark.read.parquet(*sorted({join(root, f) for f, _ in named}))

    def is_named(uri: str, pid: int) -> bool:
        return (relative_file(root, uri), pid) in named

    named_udf = F.udf(is_named, "boolean", useArrow=True)
    return frame.where(named_udf(F.col("_metadata.file_path"), F.col("pid")))


def written(spark, root: str, run: str, columns: list[str], distinct: bool = False) -> list:
    """The small ``columns`` of every row written under ``root/run``, with its file
    (relative to ``root``) as ``file``; no payload is read. ``distinct`` collapses
    identical (columns, file) pairs in Spark first, for tables of many small rows."""
    from pyspark.errors import AnalysisException

    try:
        with few_listing_tasks(spark):
            frame = spark.read.parquet(join(root, run))
            picked = frame.select(*columns, F.col("_metadata.file_path").alias("uri"))
            rows = (picked.distinct() if distinct else picked).collect()
    except AnalysisException as err:  # the writer wrote no file: nothing to report
        if "UNABLE_TO_INFER_SCHEMA" in str(err) or "PATH_NOT_FOUND" in str(err):
            return []
        raise
    return [(row, relative_file(root, row["uri"])) for row in rows]


def relative_file(root: str, uri: str) -> str:
    """``uri`` (as Spark lists it) relative to the index root."""
    if is_local(root):
        base, path = local_path(root), local_path(uri)
    else:
        base, path = _uri_path(root), _uri_path(uri)
    prefix = base.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise IndexFormatError(f"{uri} lies outside the index root {root}")
    return path[len(prefix):]


def _uri_path(uri: str) -> str:
    parsed = urlparse(uri)
    return f"{parsed.scheme}://{parsed.netloc}{re.sub('/+', '/', parsed.path)}"


def checked(table: pa.Table) -> pa.Table:
    """A table read from an untrusted file, fully validated by Arrow (offsets in range,
    strings valid UTF-8) before any value of it is used."""
    table.validate(full=True)
    return table


def read_partition_file(uri: str, columns: list[str], pid: int) -> pa.Table:
    """A partition's one row of the index table, read in a task with pyarrow: only the
    row groups whose ``pid`` statistics may hold it (a file holds rows of several
    partitions), and of them the one row whose ``pid`` is ``pid``."""
    filesystem, path = arrow_fs(uri)
    size = filesystem.get_file_info(path).size
    if size is None:
        raise IndexFormatError(f"index partition {pid}: its file {uri} is missing")
    if size > MAX_PARTITION_FILE_BYTES:
        raise IndexFormatError(f"index partition {pid}: its file holds {size} bytes, "
                               f"more than {MAX_PARTITION_FILE_BYTES}")
    wanted = list(dict.fromkeys([*columns, "pid"]))
    try:
        with filesystem.open_input_file(path) as source:
            parquet = pq.ParquetFile(source)
            groups = row_groups_of(parquet.metadata, pid)
            table = checked(parquet.read_row_groups(groups, columns=wanted) if groups
                            else parquet.schema_arrow.empty_table().select(wanted))
        if not pa.types.is_integer(table.schema.field("pid").type):
            raise KeyError("its pid column is not of integers")
        table = table.filter(pc.equal(table.column("pid"), pid))
    except (OSError, pa.ArrowException, KeyError) as err:
        raise IndexFormatError(f"index partition {pid}: its file {uri} is damaged ({err})") \
            from None
    if table.num_rows != 1:
        raise IndexFormatError(f"index partition {pid} is damaged: its file holds "
                               f"{table.num_rows} rows of it, not 1")
    return table.select(columns)


def row_groups_of(metadata: pq.FileMetaData, pid: int) -> list[int]:
    """The row groups of a partition file whose ``pid`` column may hold ``pid`` (all
    of them where statistics are missing; the rows themselves are checked after)."""
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if "pid" not in names:
        raise KeyError("the file has no pid column")
    column = names.index("pid")
    groups = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        bounds = (stats.min, stats.max) if stats is not None and stats.has_min_max else None
        if not (bounds and all(isinstance(b, int) for b in bounds)) \
                or bounds[0] <= pid <= bounds[1]:
            groups.append(group)
    return groups


def read_delete_file(uri: str) -> pa.Table:
    """A delete file: one row per partition it covers (labels, count, checksum)."""
    filesystem, path = arrow_fs(uri)
    try:
        return checked(pq.read_table(path, columns=["labels", "count", "checksum"],
                                     filesystem=filesystem))
    except (OSError, pa.ArrowException) as err:
        raise IndexFormatError(f"delete file {uri} is unreadable ({err})") from None


def labels_checksum(labels: np.ndarray) -> str:
    return sha256(np.sort(np.asarray(labels, dtype="<i4")).tobytes())


def read_locations_file(uri: str, checksum: str) -> pa.Table:
    """An id-location file, whose bytes must have the manifest's ``checksum``."""
    try:
        data = read_file(uri, MAX_PARTITION_FILE_BYTES)
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"id-location file {uri} is unreadable ({err})") from None
    if sha256(data) != checksum:
        raise IndexFormatError(f"id-location file {uri} is damaged: its checksum does not "
                               "match the manifest")
    try:
        return checked(pq.read_table(pa.BufferReader(data), columns=["id", "partition_id"]))
    except (OSError, pa.ArrowException) as err:
        raise IndexFormatError(f"id-location file {uri} is unreadable ({err})") from None


def file_checksums(spark, root: str, files: list[str]) -> dict[str, str]:
    """SHA-256 of the bytes of each file (relative to ``root``), computed by Spark tasks:
    only the digests reach the driver."""
    if not files:
        return {}
    with few_listing_tasks(spark):
        frame = spark.read.format("binaryFile").load([join(root, f) for f in files])
        rows = frame.select("path", F.sha2("content", 256).alias("sha256")).collect()
    return {relative_file(root, row["path"]): row["sha256"] for row in rows}


def id_buckets(ids: pa.Array, buckets: int) -> np.ndarray:
    """The id-location bucket of each id: a stable hash (SplitMix64 of a long id,
    BLAKE2b of a string id) modulo ``buckets``; the same in every process."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if buckets == 1:
        return np.zeros(len(ids), np.int32)
    if pa.types.is_integer(ids.type):
        x = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=np.int64).view(np.uint64)
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
        return (x % np.uint64(buckets)).astype(np.int32)
    digests = [int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "little")
               for s in ids.to_pylist()]
    return (np.asarray(digests, dtype=np.uint64) % np.uint64(buckets)).astype(np.int32)


def bucket_fn(buckets: int, fault: str | None = None):
    """(id, partition_id) rows with their id-location bucket (``fault``: the test-fault
    stage its tasks report to, see :mod:`sparkann.testing`)."""

    def with_bucket(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if fault:
            testing.inject(fault)
        for batch in batches:
            ids = batch.column("id")
            yield pa.RecordBatch.from_arrays(
                [pa.array(id_buckets(ids, buckets), pa.int32()), ids,
                 batch.column("partition_id")], ["bucket", "id", "partition_id"])

    return with_bucket


def delete_rows_fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(partition_id, labels) rows as delete-file rows: counted and checksummed."""
    testing.inject("deletes")
    for batch in batches:
        labels = batch.column("labels")
        counts, sums = [], []
        for row in range(batch.num_rows):
            values = labels[row].values.to_numpy(zero_copy_only=False)
            counts.append(len(values))
            sums.append(labels_checksum(values))
        yield pa.RecordBatch.from_arrays(
            [batch.column("partition_id"), batch.column("partition_id"), labels,
             pa.array(counts, pa.int64()), pa.array(sums, pa.string())],
            ["partition_id", "pid", "labels", "count", "checksum"])
