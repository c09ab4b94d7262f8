"""The worker-side cache: index versions and partitions loaded in tasks.

Tasks find an index through a small :class:`IndexHandle` (root, version and the
manifest's SHA-256), never through data captured in their closures. They read
the manifest, the meta file (centroids), partition files and delete files with
pyarrow, verify every checksum against the manifest, and keep what they loaded
in a per-process LRU cache bounded by ``spark.sparkann.searchCacheBytes`` (per
Python worker; default 2 GiB). A cache is only an optimisation: a lost worker
costs a reload. Search and update share this loader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import testing
from .index import PartitionContext, PartitionIndex, index_type
from .metrics import Metric, get_metric
from .partitioning.router import CentroidRanker, Router, ShardPlan
from .storage import items, tables
from .storage.format import (
    MAX_MANIFEST_BYTES,
    MAX_META_BYTES,
    IndexFormatError,
    Manifest,
    Meta,
    sha256,
)
from .storage.fs import join, read_file
from .storage.versions import manifest_path
from .tasks import task_setting

CACHE_CONF = "spark.sparkann.searchCacheBytes"
DEFAULT_CACHE_BYTES = 2 << 30
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexHandle:
    """How a task finds one version of an index: its manifest's path and SHA-256 (the
    manifest names the meta file and its SHA-256). No index data travels with it."""

    root: str
    version: int
    manifest_sha256: str

    def manifest_uri(self) -> str:
        return manifest_path(self.root, self.version)


@dataclass
class LoadedIndex:
    """One version of an index, as a task uses it."""

    manifest: Manifest
    meta: Meta
    metric: Metric
    cls: type[PartitionIndex]
    router: Router
    cluster_of: np.ndarray = field(repr=False)

    @classmethod
    def create(cls, manifest: Manifest, meta: Meta) -> "LoadedIndex":
        plan = ShardPlan(meta.shard_counts)
        if plan.num_partitions != manifest.num_partitions:
            raise IndexFormatError(
                f"{manifest.root}: the meta file plans {plan.num_partitions} partitions, the "
                f"manifest lists {manifest.num_partitions}")
        metric = get_metric(manifest.metric)
        cluster_of = plan.cluster_of
        live = np.bincount(cluster_of, weights=manifest.partitions.live,
                           minlength=len(meta.centroids)).astype(np.int64)
        try:
            ranker = CentroidRanker(meta.centroids, metric, meta.centroid_graph)
        except ValueError as err:
            raise IndexFormatError(f"{manifest.root}: the meta file's centroid graph is "
                                   f"damaged ({err})") from None
        return cls(manifest, meta, metric, index_type(manifest.index_type),
                   Router(ranker, live, plan), cluster_of)

    def context(self, pid: int) -> PartitionContext:
        return PartitionContext(self.metric, self.manifest.dim, self.manifest.params,
                                self.meta.centroids[self.cluster_of[pid]], self.meta.shared)

    def uri(self, relative: str) -> str:
        return join(self.manifest.root, relative)


@dataclass
class LoadedPartition:
    """A partition index with its ids (label -> id)."""

    index: PartitionIndex
    ids: pa.Array

    def search(self, queries: np.ndarray, k: int, knobs) -> tuple[np.ndarray, np.ndarray]:
        """The index's search, at most as wide as the partition: (nq, min(k, rows))."""
        return self.index.search(queries, min(k, self.index.count), knobs)

    def search_subset(self, query: np.ndarray, labels: np.ndarray, k: int,
                      knobs) -> tuple[np.ndarray, np.ndarray]:
        """The index's subset search: (1, min(k, len(labels)))."""
        return self.index.search_subset(query, labels, min(k, len(labels)), knobs)

    def search_filtered(self, queries: np.ndarray, passing: np.ndarray, k: int,
                        knobs) -> tuple[np.ndarray, np.ndarray]:
        """The index's filtered search: (nq, min(k, rows))."""
        return self.index.search_filtered(queries, passing, min(k, self.index.count), knobs)


class LRUCache:
    """Loaded objects kept in the Python worker, bounded by their bytes."""

    def __init__(self):
        self.items: OrderedDict = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key, load, budget: int):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key][0]
        value, size = load()
        with self.lock:
            if key not in self.items:
                self.items[key] = (value, size)
                self.bytes += size
            while self.bytes > budget and len(self.items) > 1:
                _, (_, dropped) = self.items.popitem(last=False)
                self.bytes -= dropped
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0


CACHE = LRUCache()


def cache_budget() -> int:
    return int(task_setting(CACHE_CONF) or DEFAULT_CACHE_BYTES)


def open_index(handle: IndexHandle) -> LoadedIndex:
    """The loaded index version of ``handle``, from the cache or its files."""
    key = ("index", handle.root, handle.version, handle.manifest_sha256)
    return CACHE.get(key, lambda: _load_index(handle), cache_budget())


def _load_index(handle: IndexHandle) -> tuple[LoadedIndex, int]:
    text = read_index_file(handle.manifest_uri(), MAX_MANIFEST_BYTES)
    if sha256(text) != handle.manifest_sha256:
        raise IndexFormatError(f"{handle.root}: version {handle.version}'s manifest changed "
                               "after the search was planned")
    manifest = Manifest.from_json(handle.root, text, handle.version)
    meta_bytes = read_index_file(join(handle.root, manifest.meta_file), MAX_META_BYTES)
    loaded = LoadedIndex.create(manifest, checked_meta(manifest, meta_bytes))
    return loaded, len(text) + len(meta_bytes)


def read_index_file(uri: str, max_bytes: int) -> bytes:
    """A file the manifest names; missing or too big, the index is damaged."""
    try:
        return read_file(uri, max_bytes)
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"the index file {uri} is unreadable ({err})") from None


def checked_meta(manifest: Manifest, data: bytes) -> Meta:
    if sha256(data) != manifest.meta_sha256:
        raise IndexFormatError(f"{manifest.root}: the meta file {manifest.meta_file} is "
                               "damaged (checksum mismatch)")
    return Meta.from_bytes(data, manifest.dim)


def partition(loaded: LoadedIndex, pid: int, with_vectors: bool = False) -> LoadedPartition:
    """Partition ``pid`` of a loaded index, verified and with its deletions applied."""
    manifest = loaded.manifest
    deletes = tuple(d.sha256 for d in manifest.partitions.deletes[pid])
    key = ("partition", manifest.root, manifest.partitions.checksums[pid], deletes, with_vectors)
    return CACHE.get(key, lambda: _load_partition(loaded, pid, with_vectors), cache_budget())


def fresh_partition(loaded: LoadedIndex, pid: int, with_vectors: bool) -> LoadedPartition:
    """Partition ``pid`` read from its files, not from (nor into) the cache: for updates,
    which change the object."""
    columns = ["ids", "payload", "codebook", "sq_error", "checksum", "payload_sha256",
               "ids_sha256", "vectors_sha256"] + (["vectors"] if with_vectors else [])
    row = tables.read_partition_file(loaded.uri(loaded.manifest.partitions.files[pid]),
                                     digested(loaded.manifest, columns), pid)
    return partition_from_row(loaded, pid, row, with_vectors, deleted_labels(loaded, pid))


def _load_partition(loaded: LoadedIndex, pid: int, with_vectors: bool):
    started = time.perf_counter()
    part = fresh_partition(loaded, pid, with_vectors)
    nbytes = part.index.memory_bytes() + part.ids.nbytes
    testing.record_load("partition", pid, nbytes)
    log.info("sparkann: loaded index partition %d (%.1f MB) in %.2f s", pid, nbytes / 1e6,
             time.perf_counter() - started)
    return part, nbytes


def partition_from_row(loaded: LoadedIndex, pid: int, row: pa.Table, with_vectors: bool,
                       deleted: np.ndarray) -> LoadedPartition:
    """Verify a partition's row of the index table against the manifest and load it."""
    stored, ids = tables.stored_from_row(row)
    verify(loaded.manifest, pid, row, stored, ids, with_vectors)
    try:
        index = loaded.cls.load(stored, loaded.context(pid), with_vectors)
        if index.count != len(ids):
            raise ValueError(f"{len(ids)} ids for {index.count} rows")
        index.hide(deleted)
    except ValueError as err:
        raise IndexFormatError(f"index partition {pid}: {err}") from None
    return LoadedPartition(index, ids)


def verify(manifest: Manifest, pid: int, row: pa.Table, stored=None, ids=None,
           with_vectors: bool = False) -> None:
    """Check what was read of a partition's row against the manifest: the row's part
    digests must combine to the manifest's checksum, and each part read must match
    its digest."""
    recorded = {name: row.column(name)[0].as_py() or "" for name in
                digested(manifest, ["payload_sha256", "ids_sha256", "vectors_sha256"])}
    damaged = (row.column("checksum")[0].as_py() != manifest.partitions.checksums[pid]
               or tables.combined_checksum(recorded) != manifest.partitions.checksums[pid])
    actual = tables.digests(stored, ids) if stored is not None else {
        "ids_sha256": sha256(tables.ids_digest(ids))}
    checked = ["ids_sha256"] + (["payload_sha256"] if stored is not None else []) + (
        ["vectors_sha256"] if with_vectors else [])
    if damaged or any(actual[name] != recorded[name] for name in checked):
        raise IndexFormatError(f"index partition {pid} is damaged: its checksum does not match "
                               "the manifest")
    if len(ids) != manifest.partitions.rows[pid]:
        raise IndexFormatError(f"index partition {pid} is damaged: {len(ids)} ids, the "
                               f"manifest says {manifest.partitions.rows[pid]}")


def partition_ids(loaded: LoadedIndex, pid: int) -> pa.Array:
    """A partition's ids (label -> id), verified, without reading its payload."""
    row = tables.read_partition_file(loaded.uri(loaded.manifest.partitions.files[pid]),
                                     digested(loaded.manifest, tables.ID_COLUMNS), pid)
    ids = row.column("ids")[0].values
    verify(loaded.manifest, pid, row, None, ids)
    return ids


def digested(manifest: Manifest, columns: list[str]) -> list[str]:
    """``columns`` and, when the index stores item columns, their digest (which the
    partition checksum covers)."""
    return [*columns, items.ITEMS_SHA] if manifest.item_types else list(columns)


def partition_items(loaded: LoadedIndex, pid: int) -> tuple[pa.Array, pa.Table]:
    """A partition's ids and item columns (label order), verified against the manifest."""
    manifest = loaded.manifest
    row = tables.read_partition_file(loaded.uri(manifest.partitions.files[pid]),
                                     digested(manifest, [*tables.ID_COLUMNS, items.ITEMS]), pid)
    ids = row.column("ids")[0].values
    verify(manifest, pid, row, None, ids)
    values = items.items_table(row.column(items.ITEMS).combine_chunks(), manifest.item_types,
                               len(ids), pid)
    if items.items_digest(values) != row.column(items.ITEMS_SHA)[0].as_py():
        raise IndexFormatError(f"index partition {pid} is damaged: its item columns do not "
                               "match their checksum")
    return ids, values


def cached_items(loaded: LoadedIndex, pid: int) -> pa.Table:
    """A partition's verified item columns (label order), kept in the worker cache."""
    manifest = loaded.manifest
    key = ("items", manifest.root, manifest.partitions.checksums[pid])

    def read():
        table = partition_items(loaded, pid)[1]
        return table, table.nbytes + 64

    return CACHE.get(key, read, cache_budget())


def deleted_labels(loaded: LoadedIndex, pid: int) -> np.ndarray:
    labels = [read_deleted(loaded.uri(d.file), d.count, d.sha256, pid)
              for d in loaded.manifest.partitions.deletes[pid]]
    return np.concatenate(labels) if labels else np.empty(0, np.int64)


def read_deleted(uri: str, count: int, checksum: str, pid: int) -> np.ndarray:
    """The deleted labels in one delete file, checked against the manifest."""
    table = tables.read_delete_file(uri)
    if table.num_rows != 1:
        raise IndexFormatError(f"index partition {pid}: delete file {uri} holds "
                               f"{table.num_rows} rows, not 1")
    labels = table.column("labels")[0].values.to_numpy(zero_copy_only=False).astype(np.int64)
    if len(labels) != count or tables.labels_checksum(labels) != checksum:
        raise IndexFormatError(f"index partition {pid}: delete file {uri} does not match the "
                               "manifest")
    return labels


@dataclass
class IdMap:
    """Every id of an index version: id -> (partition, label), for subset searches."""

    index: Any  # pandas.Index over the ids of all partitions, concatenated
    partitions: np.ndarray
    labels: np.ndarray

    def locate(self, wanted: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(partition ids, labels) of every row holding one of ``wanted`` (deleted
        rows included; partition indexes skip them)."""
        positions, _ = self.index.get_indexer_non_unique(wanted.to_numpy(zero_copy_only=False))
        positions = positions[positions >= 0]
        return self.partitions[positions], self.labels[positions]


def id_map(loaded: LoadedIndex) -> IdMap:
    """The :class:`IdMap` of a loaded index (reads only the partitions' id columns)."""
    manifest = loaded.manifest
    key = ("ids", manifest.root, manifest.version, tuple(manifest.partitions.checksums))
    return CACHE.get(key, lambda: _load_id_map(loaded), cache_budget())


def _load_id_map(loaded: LoadedIndex) -> tuple[IdMap, int]:
    import pandas as pd

    manifest = loaded.manifest
    parts, pids, labels = [], [], []
    for pid, file in enumerate(manifest.partitions.files):
        if not file:
            continue
        ids = tables.read_partition_file(loaded.uri(file), ["ids"], pid).column("ids")[0].values
        parts.append(ids.to_numpy(zero_copy_only=False))
        pids.append(np.full(len(ids), pid, np.int32))
        labels.append(np.arange(len(ids), dtype=np.int64))
    if not parts:
        return IdMap(pd.Index([]), np.empty(0, np.int32), np.empty(0, np.int64)), 0
    values = np.concatenate(parts)
    mapping = IdMap(pd.Index(values), np.concatenate(pids), np.concatenate(labels))
    return mapping, int(values.nbytes * 3 + 12 * len(values))


def location_map(loaded: LoadedIndex, bucket: int):
    """The (id, partition_id) rows of one id-location bucket, as a pandas DataFrame."""
    manifest = loaded.manifest
    if manifest.locations is None:
        raise IndexFormatError(f"{manifest.root} version {manifest.version} has no id-location "
                               "table")
    if not 0 <= bucket < manifest.locations.buckets:
        raise IndexFormatError(f"{manifest.root}: id-location bucket {bucket} out of range")
    files = tuple(zip(manifest.locations.files[bucket], manifest.locations.checksums[bucket]))
    key = ("locations", manifest.root, files)
    return CACHE.get(key, lambda: _load_locations(loaded, files), cache_budget())


def _load_locations(loaded: LoadedIndex, files: tuple[tuple[str, str], ...]):
    import pandas as pd

    parts = [tables.read_locations_file(loaded.uri(f), checksum) for f, checksum in files]
    if not parts:
        return pd.DataFrame({"id": [], "partition_id": []}), 0
    frame = pa.concat_tables(parts).to_pandas()
    bad = (frame["partition_id"] < 0) | (frame["partition_id"] >= loaded.manifest.num_partitions)
    if bad.any():
        raise IndexFormatError(f"{loaded.manifest.root}: the id-location table names a "
                               "partition out of range")
    return frame, int(frame.memory_usage(deep=True).sum())
