"""Filtered search: a predicate over the stored item columns (``filter``) and equality
of item columns with query columns (``matchCols``).

On the driver, one Spark job counts each partition's passing rows (per match key) with
:func:`sparkann.filters.passing`, the evaluation the search tasks run too, so the plan
knows where passing rows are and how many (:func:`item_filter`). In the tasks, each
partition evaluates the predicate once per worker into a mask over its labels
(:func:`passing_mask`); a query is routed only to clusters holding rows that pass
(:meth:`Router.route_among`), with more probes when few rows pass
(:func:`filtered_probes`), and each partition searches its passing rows with
:meth:`PartitionIndex.search_filtered` (scan, in-graph filter or over-fetch by share).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import filters
from ..exact import knn
from ..loader import CACHE, LoadedIndex, cache_budget, cached_items, deleted_labels, partition
from ..storage.format import Manifest

INTEGRAL = ("tinyint", "smallint", "int", "bigint")  # match keys compare as bigint
# At most this many passing rows in all (for one query's match key): every cluster
# holding one is probed, and each scans its few passing rows, so the answer is exact.
FILTER_SCAN_ROWS = 20_000
SCAN_ROWS_CONF = "spark.sparkann.filterScanRows"  # overrides FILTER_SCAN_ROWS
WIDE_SHARE = 0.25  # a filter passing at least this share routes like a plain search
NO_GROUP = -1  # a query whose match key is null or held by no item: no neighbours
# The driver keeps the counts of recent filters by (index version, filter): a version's
# files never change, so neither do its counts for one filter. Small entries only
# (matchCols on a column of many values counts a row per key and partition).
COUNTED: dict = {}
COUNTED_LOCK = threading.Lock()
COUNTED_ENTRIES = 16
COUNTED_MAX_ROWS = 100_000


@dataclass(frozen=True)
class ItemFilter:
    """A search's filter: the predicate, the matched columns and where rows pass.

    Passing rows are counted per group (one group without ``matchCols``, else one per
    match key held by a passing row) and partition, as a compressed sparse table:
    group ``g``'s partitions are ``pids[offsets[g]:offsets[g + 1]]``.
    """

    text: str  # the predicate ("" = every row passes)
    item_types: tuple  # the index's (name, Spark type) item columns
    match_items: tuple[str, ...]  # item columns that must equal ...
    match_queries: tuple[str, ...]  # ... these query columns
    num_partitions: int
    offsets: np.ndarray = field(repr=False)
    pids: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    scan_rows: int = FILTER_SCAN_ROWS  # see filtered_probes
    keys: tuple = ()  # the match key of each group
    groups: dict = field(repr=False, default_factory=dict)  # match key -> group number

    @property
    def matched(self) -> bool:
        return bool(self.match_items)

    def key_type(self, item: str) -> str:
        """The Spark type a query's key column is cast to (integers compare as bigint)."""
        kind = dict(self.item_types)[item]
        return "bigint" if kind in INTEGRAL else kind

    def scans(self, group: int) -> bool:
        """Whether few enough rows of ``group`` pass to scan them all."""
        span = slice(self.offsets[group], self.offsets[group + 1])
        return int(self.counts[span].sum()) <= self.scan_rows

    def partition_counts(self, group: int) -> np.ndarray:
        """Passing rows of ``group`` in each partition."""
        dense = np.zeros(self.num_partitions, np.int64)
        span = slice(self.offsets[group], self.offsets[group + 1])
        dense[self.pids[span]] = self.counts[span]
        return dense

    def groups_of(self, keys: pa.Array | None, n: int) -> np.ndarray:
        """The group number of each query row from its match-key struct column."""
        if not self.matched:
            return np.zeros(n, np.int64)
        assert keys is not None
        fields = [keys.field(i).to_pylist() for i in range(len(self.match_items))]
        return np.array([self.groups.get(key, NO_GROUP) if None not in key else NO_GROUP
                         for key in zip(*fields)], np.int64).reshape(n)


def filtered_probes(num_probes: int, epsilon: float, passing: int, live: int,
                    clusters: int, scan_rows: int = FILTER_SCAN_ROWS) -> tuple[int, float]:
    """(probes, probeEpsilon) when ``passing`` of ``live`` rows pass, held by ``clusters``
    clusters: all of them when at most ``scan_rows`` pass; the search's own when at least
    :data:`WIDE_SHARE` pass; else more probes as the share falls (a query's k nearest
    passing rows lie as far out as its k / share nearest), without the epsilon pruning,
    which measures distances from the nearest centroid, not the nearest passing rows."""
    if passing <= scan_rows:
        return clusters, 0.0
    share = passing / max(live, 1)
    if share >= WIDE_SHARE:
        return num_probes, epsilon
    return int(min(clusters, math.ceil(num_probes * share ** -0.25))), 0.0


def counted_groups(manifest: Manifest, text: str, match: list[tuple[str, str]],
                   counted: pa.Table, scan_rows: int = FILTER_SCAN_ROWS) -> ItemFilter:
    """The plan's :class:`ItemFilter` from the counting job's rows (partition_id, count
    and the match columns)."""
    match_items = tuple(item for item, _ in match)
    keys = (list(zip(*[counted.column(c).to_pylist() for c in match_items])) if match
            else [()] * counted.num_rows)
    groups: dict = {} if match else {(): 0}  # without matchCols, one group even when empty
    number = np.array([groups.setdefault(key, len(groups)) for key in keys], np.int64)
    order = np.argsort(number, kind="stable")
    pids = np.asarray(counted.column("partition_id").to_numpy(), np.int64)[order]
    counts = np.asarray(counted.column("count").to_numpy(), np.int64)[order]
    offsets = np.searchsorted(number[order], np.arange(len(groups) + 1)).astype(np.int64)
    return ItemFilter(text, tuple(manifest.item_types), match_items,
                      tuple(query for _, query in match), manifest.num_partitions,
                      offsets, pids, counts, scan_rows, tuple(groups), groups)


def count_passing(index: LoadedIndex, pid: int, text: str,
                  match_items: tuple[str, ...]) -> pa.RecordBatch:
    """A partition's passing live rows: (partition_id, count[, match columns]), one
    row per match key (keys with a null left out)."""
    values, mask = passing_items(index, pid, text)
    table = values.filter(pa.array(mask))
    if match_items:
        counted = table.select(list(match_items)).drop_null().group_by(
            list(match_items)).aggregate([([], "count_all")])
        counted = counted.rename_columns([*match_items, "count"])
    else:
        counted = pa.table({"count": pa.array([table.num_rows], pa.int64())})
    counted = counted.append_column("partition_id",
                                    pa.array(np.full(counted.num_rows, pid), pa.int32()))
    counted = counted.select(["partition_id", "count", *match_items])
    return pa.RecordBatch.from_arrays([c.combine_chunks() for c in counted.columns],
                                      schema=counted.schema)


# ------------------------------------------------------------------- tasks


def passing_items(index: LoadedIndex, pid: int, text: str) -> tuple[pa.Table, np.ndarray]:
    """A partition's item columns, and which labels pass ``text`` and are not deleted."""
    values = cached_items(index, pid)
    mask = filters.passing(values, text, index.manifest.item_types) if text else \
        np.ones(values.num_rows, dtype=bool)
    mask[deleted_labels(index, pid)] = False
    return values, mask


def passing_mask(index: LoadedIndex, spec: ItemFilter, pid: int, group: int) -> np.ndarray:
    """Which labels of partition ``pid`` pass the filter and match ``group``'s key,
    evaluated once per worker (the worker cache)."""
    count, held = partition_passing(index, spec, pid)
    mask = np.zeros(count, dtype=bool)
    mask[held.get(spec.keys[group] if spec.matched else (), [])] = True
    return mask


def partition_passing(index: LoadedIndex, spec: ItemFilter, pid: int) -> tuple[int, dict]:
    """(rows, {match key: passing labels}) of a partition (key () without matchCols)."""
    manifest = index.manifest
    key = ("filter", manifest.root, manifest.partitions.checksums[pid],
           tuple(d.sha256 for d in manifest.partitions.deletes[pid]), spec.text,
           spec.match_items)
    return CACHE.get(key, lambda: _passing(index, spec, pid), cache_budget())


def _passing(index: LoadedIndex, spec: ItemFilter, pid: int) -> tuple[tuple[int, dict], int]:
    values, mask = passing_items(index, pid, spec.text)
    if not spec.matched:
        labels = np.flatnonzero(mask)
        return (len(mask), {(): labels}), labels.nbytes + 64
    labelled = values.select(list(spec.match_items)).append_column(
        "__label", pa.array(np.arange(len(mask)), pa.int64())).filter(pa.array(mask))
    grouped = labelled.drop_null().group_by(list(spec.match_items)).aggregate(
        [("__label", "list")])
    keys = zip(*[grouped.column(c).to_pylist() for c in spec.match_items])
    held = {key: np.asarray(labels, np.int64)
            for key, labels in zip(keys, grouped.column("__label_list").to_pylist())}
    return (len(mask), held), 8 * labelled.num_rows + 100 * len(held) + 64


def query_groups(spec: ItemFilter | None, keys: pa.Array, n: int) -> np.ndarray:
    """Each query row's match group (0 for all without matchCols; NO_GROUP: none)."""
    return spec.groups_of(keys, n) if spec is not None else np.zeros(n, np.int64)


def routed(index: LoadedIndex, spec: ItemFilter | None, vectors: np.ndarray,
           groups: np.ndarray, num_probes: int, k: int,
           epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(query positions, partition ids) to search, with or without a filter."""
    if spec is None:
        return index.router.route(vectors, num_probes, k, epsilon)
    return route_filtered(index, spec, vectors, groups, num_probes, k, epsilon)


def passing_rows(index: LoadedIndex, spec: ItemFilter, group: int,
                 with_vectors: bool) -> tuple[np.ndarray, pa.Array]:
    """(vectors, ids) of every passing row of ``group`` when it :meth:`~ItemFilter.scans`,
    gathered once per worker from the partitions holding them."""
    manifest = index.manifest
    key = ("passing rows", manifest.root, manifest.version, spec.text, spec.match_items,
           spec.keys[group] if spec.matched else (), with_vectors)

    def gather():
        counts = spec.partition_counts(group)
        vectors = [np.empty((0, manifest.dim), np.float32)]
        ids = [pa.array([], pa.int64() if manifest.id_type == "long" else pa.string())]
        for pid in np.flatnonzero(counts):
            part = partition(index, int(pid), with_vectors)
            labels = np.flatnonzero(passing_mask(index, spec, int(pid), group))
            vectors.append(part.index.live_vectors(labels))
            ids.append(part.ids.take(pa.array(labels)))
        rows = np.concatenate(vectors)
        return (rows, pa.concat_arrays(ids)), rows.nbytes + 16 * len(rows) + 64

    return CACHE.get(key, gather, cache_budget())


def scan_passing(index: LoadedIndex, spec: ItemFilter, group: int, vectors: np.ndarray,
                 rows: np.ndarray, k: int, with_vectors: bool, candidates) -> None:
    """Exact top ``k`` of query ``rows`` among all of ``group``'s passing rows, in one
    batched scan (for filters that pass few rows in all)."""
    base, ids = passing_rows(index, spec, group, with_vectors)
    if len(base):
        order, dists = knn(base, vectors[rows], k, index.metric)
        candidates.add(rows, order, dists, ids)


def route_filtered(index: LoadedIndex, spec: ItemFilter, vectors: np.ndarray,
                   groups: np.ndarray, num_probes: int, k: int,
                   epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(query positions, partition ids) to search: per group, only partitions holding
    its passing rows, probed as :func:`filtered_probes` says."""
    router = index.router
    clusters = len(router.sizes)
    live = int(router.sizes.sum())
    rows_out, pids_out = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for group in np.unique(groups[groups >= 0]):
        mine = np.flatnonzero(groups == group)
        counts = spec.partition_counts(int(group))
        per_cluster = np.bincount(index.cluster_of, weights=counts,
                                  minlength=clusters).astype(np.int64)
        probes, slack = filtered_probes(num_probes, epsilon, int(counts.sum()), live,
                                        int((per_cluster > 0).sum()), spec.scan_rows)
        rows, pids = router.route_among(vectors[mine], probes, k, slack, per_cluster)
        keep = counts[pids] > 0  # a cluster's shards without passing rows
        rows_out.append(mine[rows[keep]])
        pids_out.append(pids[keep])
    return np.concatenate(rows_out), np.concatenate(pids_out)


# ------------------------------------------------------------------ driver


def item_filter(spark, manifest: Manifest, handle, text: str,
                match: list[tuple[str, str]]) -> ItemFilter:
    """Count each partition's passing rows (per match key) in one Spark job, or take
    the counts of an earlier search of the same index version with the same filter."""
    scan_rows = int(spark.conf.get(SCAN_ROWS_CONF, None) or FILTER_SCAN_ROWS)
    key = (handle.root, handle.version, handle.manifest_sha256, text, tuple(match))
    with COUNTED_LOCK:
        counted = COUNTED.get(key)
    if counted is None:
        counted = _counted(spark, manifest, handle, text, match)
        if counted.num_rows <= COUNTED_MAX_ROWS:
            with COUNTED_LOCK:
                COUNTED[key] = counted
                while len(COUNTED) > COUNTED_ENTRIES:
                    COUNTED.pop(next(iter(COUNTED)))  # the oldest
    return counted_groups(manifest, text, match, counted, scan_rows)


def _counted(spark, manifest: Manifest, handle, text: str,
             match: list[tuple[str, str]]) -> pa.Table:
    """The counting job's rows (partition_id, count, match columns): a few tasks per
    core, each counting its partitions from the worker cache's item columns."""
    from ..stored import per_stored_partition
    from ..tasks import cluster_cores

    match_items = tuple(item for item, _ in match)
    types = dict(manifest.item_types)
    schema = "partition_id int, count long" + "".join(
        f", `{name}` {types[name]}" for name in match_items)
    return per_stored_partition(spark, manifest, handle,
                                lambda index, pid: count_passing(index, pid, text, match_items),
                                schema, max_tasks=4 * cluster_cores(spark)).toArrow()


def check_filter(schema, manifest: Manifest, text: str, match: list[tuple[str, str]],
                 reads: str) -> None:
    """Driver checks (no Spark job): the index stores the item columns, the predicate
    compiles over them, and each matched query column exists with a comparable type."""
    if not manifest.item_types:
        raise ValueError("filter and matchCols need item columns stored with the index; fit "
                         "it with ANNIndex(itemCols=[...])")
    if reads == "join":
        raise ValueError("filter and matchCols need tasks that read the index files; "
                         "spark.sparkann.payloadReads is 'join' for " + manifest.root)
    if text:
        filters.compiled(text, manifest.item_types)
    types = dict(manifest.item_types)
    for item, query in match:
        if item not in types:
            raise ValueError(f"matchCols: {item!r} is not an item column of the index; it "
                             f"stores {sorted(types)}")
        if types[item] in ("float", "double"):
            raise ValueError(f"matchCols: item column {item!r} is {types[item]}; match on "
                             "integer, string, boolean or date columns")
        if query not in schema.names:
            raise ValueError(f"matchCols: query column {query!r} (for item column {item!r}) "
                             f"not found; the queries have {schema.names}")
        kind = schema[query].dataType.simpleString()
        if not (kind == types[item] or (kind in INTEGRAL and types[item] in INTEGRAL)):
            raise ValueError(f"matchCols: query column {query!r} is {kind}, item column "
                             f"{item!r} is {types[item]}; cast one to the other's type")

