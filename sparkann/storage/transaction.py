"""One change of an index: write new files, then commit the version that names them.

Every write -- fit, add, delete, compact, rebalance, calibrate, save, a copy to
another root -- is a :class:`Transaction`::

    with Transaction(spark, root, base) as txn:       # base: None for a first fit
        txn.write_meta(...)                           # meta/<run>.bin
        txn.write_partitions(table)                   # data/<run>/part-*.parquet
        txn.write_deletes(labels)                     # deletes/<run>/partition_id=N/
        txn.write_locations("replace" | "append")     # locations/<run>/bucket=B/
        manifest, digest = txn.commit("add", search_defaults, calibration)

Each ``write_*`` puts its files in a run directory of its own and records in the
transaction what the next version's manifest names (partition facts, delete
files, id-location files, the meta file). ``commit`` publishes that manifest on
top of the base version (:func:`~sparkann.storage.versions.publish`). When the
block ends without a commit, the runs this transaction wrote are removed --
never anything else, and nothing at all when the commit may have happened
(:class:`CommitStateUnknownError`, or an interrupt while committing).

A writer that loses the race for the next version gets
:class:`ConcurrentUpdateError`; it is not rebased onto the winner's version.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import tables
from .format import OPERATIONS, DeleteFile, Locations, Manifest, Partitions, sha256
from .fs import join, store_for
from .versions import CommitStateUnknownError, new_run, publish

log = logging.getLogger(__name__)
LOCATION_BUCKET_ROWS = 1 << 20  # ids per bucket of the id-location table
# Test-only: a fixed number of id-location buckets, so small indexes have several.
LOCATION_BUCKETS_CONF = "spark.sparkann.test.locationBuckets"
LOCATION_MODES = ("replace", "append")


class Transaction:
    """The files of one new version of the index under ``root``, and its commit.

    ``base``: the version the change is made from, which must still be the newest
    when it commits (None: commit after whatever is newest, as a fit does).
    ``start``: the version whose files the new one begins with (default ``base``;
    a copy begins with its source's facts and rewrites every file).
    """

    def __init__(self, spark, root: str, base: Manifest | None = None,
                 start: Manifest | None = None):
        start = start or base
        self.spark, self.root, self.store = spark, root, store_for(spark, root)
        self.base_version = None if base is None else base.version
        self.start = start
        self.partitions = start.partitions if start else Partitions.empty(0)
        self.locations: Locations | None = start.locations if start else None
        self.meta_file = start.meta_file if start else ""
        self.meta_sha256 = start.meta_sha256 if start else ""
        self.written: list[str] = []  # run directories and files, relative to the root
        self.rewritten: dict[int, str] = {}  # partition -> the file written for it here
        self.read_back_values: dict[int, Any] = {}  # see write_partitions
        self.state = "open"  # open, committing, committed, failed, unknown

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if self.state in ("open", "failed"):
            self.discard()

    def discard(self) -> None:
        """Remove everything this transaction wrote (best effort); it cannot commit after."""
        if self.state not in ("open", "failed"):
            raise RuntimeError(f"a transaction in state {self.state!r} keeps its files")
        self.state = "failed"
        for path in reversed(self.written):
            try:
                self.store.delete(join(self.root, path))
            except Exception:  # an error in flight matters more
                log.warning("could not remove the partial output %s", join(self.root, path))
        self.written.clear()

    def _new(self, kind: str, suffix: str = "") -> str:
        """A fresh run name, recorded before anything is written to it."""
        if self.state != "open":
            raise RuntimeError(f"a transaction in state {self.state!r} writes nothing more")
        path = new_run(kind) + suffix
        self.written.append(path)
        return path

    # -------------------------------------------------------------- writes

    def write_meta(self, data: bytes) -> str:
        """Write the meta file (centroids, shards, shared data); returns its path."""
        path = self._new("meta", ".bin")
        self.store.write(join(self.root, path), data)
        self.meta_file, self.meta_sha256 = path, sha256(data)
        return path

    def write_partitions(self, table: DataFrame, num_partitions: int | None = None,
                         clear_deletes: bool = False, seconds: dict | None = None,
                         read_back: str | None = None) -> str:
        """Store index-table rows (one per partition) and take their facts.

        ``num_partitions`` given: the rows are a whole new set of partitions (a
        build); the others are empty. Otherwise each row replaces its partition,
        which keeps its delete files unless ``clear_deletes``. ``seconds`` receives
        the build tasks' own time. ``read_back`` names one more small column whose
        non-null values are read with the facts, into ``read_back_values`` (by
        partition). Returns the run directory."""
        run = self._new("data")
        tables.write_partition_rows(table, join(self.root, run))
        count = num_partitions if num_partitions is not None else len(self.partitions)
        facts = self._partition_facts(run, count, seconds, read_back)
        if num_partitions is not None:
            self.partitions = Partitions.empty(num_partitions)
        if clear_deletes:
            facts = {pid: {**values, "deletes": []} for pid, values in facts.items()}
        self.partitions = self.partitions.with_partitions(facts)
        self.rewritten.update({pid: values["files"] for pid, values in facts.items()})
        return run

    def _partition_facts(self, run: str, count: int, seconds: dict | None,
                         read_back: str | None = None) -> dict:
        found = tables.written(self.spark, self.root, run, tables.INDEX_FACTS + [
            tables.TASK_SECONDS, *([read_back] if read_back else [])])
        self.read_back_values = {row["partition_id"]: row[read_back] for row, _ in found
                                 if read_back and row[read_back] is not None}
        facts: dict[int, dict] = {}
        for row, file in found:
            pid = row["partition_id"]
            if pid in facts or not 0 <= pid < count:
                raise RuntimeError(f"the index table holds partition {pid} more than once or "
                                   f"out of range 0..{count - 1}; the written output is "
                                   "damaged")
            facts[pid] = {"files": file, "rows": int(row["num_rows"]),
                          "payload_bytes": int(row["payload_bytes"]),
                          "checksums": row["checksum"],
                          "sq_errors": float(row["sq_error"] or 0.0)}
            if seconds is not None and row[tables.TASK_SECONDS]:
                add_task_seconds(seconds, *row[tables.TASK_SECONDS])
        return facts

    def write_deletes(self, labels: DataFrame, replace_all: bool = False) -> int:
        """Store delete files from (partition_id, labels array<int>) rows, one row per
        partition; each is added to its partition's delete files (``replace_all``:
        every partition's delete files become the one written here, or none).
        Returns how many partitions got a delete file."""
        run = self._new("deletes")
        rows = labels.mapInArrow(tables.delete_rows_fn, tables.DELETE_SCHEMA)
        tables.write_table(rows, join(self.root, run), "partition_id")
        found = tables.written(self.spark, self.root, run, ["partition_id", "count", "checksum"])
        added: dict[int, DeleteFile] = {}
        for row, file in found:
            pid = row["partition_id"]
            if pid in added or not 0 <= pid < len(self.partitions):
                raise RuntimeError(f"the delete files hold partition {pid} more than once or "
                                   f"out of range; the written output is damaged")
            added[pid] = DeleteFile(file, int(row["count"]), row["checksum"])
        kept = self.partitions.deletes
        changes = {pid: {"deletes": ([] if replace_all else kept[pid])
                         + ([added[pid]] if pid in added else [])}
                   for pid in (range(len(self.partitions)) if replace_all else added)}
        self.partitions = self.partitions.with_partitions(changes)
        return len(added)

    def write_locations(self, mode: str, buckets: int | None = None) -> None:
        """Store the id-location table (bucket, id, partition_id), read from the id
        columns of the partition files (never from a second pass over any input).

        ``"replace"``: a whole new table of every partition's ids, in ``buckets``
        buckets (default: about one per million rows). ``"append"``: the ids this
        transaction's partitions hold past their rows in the start version (an add
        keeps a partition's old rows first), as new files of the existing table."""
        if mode not in LOCATION_MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(LOCATION_MODES)}")
        if mode == "replace":
            count = buckets or location_buckets(self.spark, sum(self.partitions.rows))
            self.locations = self._located(count, self.partitions.files, None, None)
            return
        if not self.rewritten:
            return
        count = self.locations.buckets if self.locations else 1
        old_rows = self.start.partitions.rows if self.start else []
        first_new = {pid: old_rows[pid] if pid < len(old_rows) else 0
                     for pid in self.rewritten}
        rewritten = [f if pid in self.rewritten else ""
                     for pid, f in enumerate(self.partitions.files)]
        self.locations = self._located(count, rewritten, first_new, self.locations)

    def _located(self, buckets: int, files: list[str], first_new: dict | None,
                 known: Locations | None) -> Locations:
        """Write the locations of the ids in ``files`` (each partition's file, "" for
        none) and return the table they join."""
        run = self._new("locations")
        ids = tables.named_rows(self.spark, self.root, files).select(
            F.posexplode("ids").alias("position", "id"), F.col("pid").alias("partition_id"))
        if first_new is not None:
            starts = self.spark.createDataFrame(sorted(first_new.items()),
                                                "partition_id int, start int")
            ids = ids.join(F.broadcast(starts), "partition_id").where(
                F.col("position") >= F.col("start"))
        id_type = ids.schema["id"].dataType.simpleString()
        located = ids.select("id", "partition_id").mapInArrow(
            tables.bucket_fn(buckets, "locations"), f"bucket int, id {id_type}, partition_id int")
        tables.write_table(located.repartitionById(buckets, "bucket"), join(self.root, run),
                           "bucket")
        by_bucket = ([list(f) for f in known.files] if known
                     else [[] for _ in range(buckets)])
        for row, file in tables.written(self.spark, self.root, run, ["bucket"], distinct=True):
            if file not in by_bucket[row["bucket"]]:
                by_bucket[row["bucket"]].append(file)
        sums = {} if known is None else {f: c for fs, cs in zip(known.files, known.checksums)
                                         for f, c in zip(fs, cs)}
        sums.update(tables.file_checksums(self.spark, self.root,
                                          [f for fs in by_bucket for f in fs if f not in sums]))
        return Locations(buckets, by_bucket, [[sums[f] for f in fs] for fs in by_bucket])

    # -------------------------------------------------------------- commit

    def manifest(self, header: Manifest | None = None) -> Manifest:
        """The new version as it stands (unnumbered): ``header``'s fields (default: the
        start version's) with the files this transaction names."""
        header = header or self.start
        if header is None:
            raise RuntimeError("a transaction without a start version needs a header")
        return replace(header, root=self.root, version=0, partitions=self.partitions,
                       locations=self.locations, meta_file=self.meta_file,
                       meta_sha256=self.meta_sha256)

    def commit(self, operation: str, search_defaults: dict | None = None,
               calibration: dict | None = None,
               header: Manifest | None = None) -> tuple[Manifest, str]:
        """Publish the new version on top of the base version; returns it and the
        SHA-256 of its manifest. ``search_defaults`` become the stored search params
        (never over one the user set); ``calibration`` replaces the report (None
        keeps the start version's)."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation={operation!r} must be one of {', '.join(OPERATIONS)}")
        if self.state != "open":
            raise RuntimeError(f"a transaction in state {self.state!r} cannot commit")
        manifest = with_search_defaults(self.manifest(header), search_defaults or {})
        manifest = replace(manifest, operation=operation,
                           calibration=manifest.calibration if calibration is None
                           else calibration)
        self._check_files(manifest)
        self.state = "committing"  # an interrupt from here on may leave it committed
        try:
            committed = publish(self.spark, manifest, self.base_version)
        except CommitStateUnknownError:
            self.state = "unknown"
            raise
        except Exception:
            self.state = "failed"
            raise
        self.state = "committed"
        return committed

    def _check_files(self, manifest: Manifest) -> None:
        """Every file the new version names was written here, or belongs to the start
        version under the same root."""
        own = tuple(path if path.endswith(".bin") else path + "/" for path in self.written)
        inherited = (referenced_files(self.start)
                     if self.start is not None and self.start.root == self.root else set())
        stray = sorted(f for f in referenced_files(manifest) - inherited
                       if f and not f.startswith(own))
        if stray:
            raise RuntimeError(f"the new version of {self.root} would name files this change "
                               f"did not write, for example {stray[0]}")


def add_task_seconds(seconds: dict, build: float, search: float) -> None:
    """Sum the build tasks' own time into the stage timings."""
    for name, value in (("task seconds: build partitions", build),
                        ("task seconds: calibration searches", search)):
        seconds[name] = round(seconds.get(name, 0.0) + value, 3)


def with_search_defaults(manifest: Manifest, values: dict) -> Manifest:
    """The manifest with search defaults stored, never over a value the user set."""
    kept = {name: value for name, value in values.items() if name not in manifest.user_set}
    return replace(manifest, search_defaults={**manifest.search_defaults, **kept})


def location_buckets(spark, num_rows: int) -> int:
    forced = spark.conf.get(LOCATION_BUCKETS_CONF, None)
    if forced:
        return max(1, int(forced))
    return max(1, math.ceil(num_rows / LOCATION_BUCKET_ROWS))


def referenced_files(manifest: Manifest) -> set[str]:
    """Every file (relative to the root) a version needs."""
    files = {manifest.meta_file, *manifest.partitions.files}
    files.update(d.file for ds in manifest.partitions.deletes for d in ds)
    if manifest.locations is not None:
        files.update(f for fs in manifest.locations.files for f in fs)
    return files
