"""Vacuum: remove old versions, and the runs no kept version names.

Only what a :class:`~sparkann.storage.transaction.Transaction` writes is ever
removed: run directories and meta files named by
:func:`~sparkann.storage.versions.new_run`, none that a kept version's manifest
names (:func:`~sparkann.storage.transaction.referenced_files`), and none younger
than the retention period.
"""

from __future__ import annotations

import logging
import math
import re
import time

from .format import IndexFormatError
from .fs import Store, join, store_for
from .transaction import referenced_files
from .versions import (
    MANIFESTS,
    RUN_DIRS,
    VERSION_FILE,
    is_run_name,
    listed_versions,
    manifest_path,
    read_manifest,
)

DEFAULT_RETENTION_HOURS = 168.0  # what vacuum leaves for readers and running writers
PART_FILE = re.compile(r"part-[0-9]+-[0-9a-f-]+[-.]c[0-9]+(\.[a-z0-9]+)*\.parquet")  # Spark's
log = logging.getLogger(__name__)


def vacuum(spark, root: str, retain_versions: int,
           retention_hours: float = DEFAULT_RETENTION_HOURS) -> dict:
    """Delete versions older than the newest ``retain_versions`` and every run that a
    writer of the index made under ``data/``, ``deletes/``, ``locations/`` and
    ``meta/`` (named by :func:`new_run`) that no retained version needs; anything
    else there is never touched.

    Like Delta's ``VACUUM RETAIN n HOURS``, nothing younger than ``retention_hours``
    goes: a version stays while it was the newest within that period (a job or a
    stream may still read it), and a run stays while its newest file is younger
    (a write may still be running; ``fit`` publishes without a base version) or
    younger than the newest manifest."""
    if retain_versions < 1:
        raise ValueError(f"retainVersions={retain_versions} is out of range: must be >= 1")
    if isinstance(retention_hours, bool) or not isinstance(retention_hours, (int, float)) \
            or not 0 <= retention_hours < math.inf:
        raise ValueError(f"retentionHours={retention_hours!r} is out of range: must be a "
                         "number >= 0")
    store = store_for(spark, root)
    root = store.qualify(root)
    versions = listed_versions(store, root)
    if not versions:
        raise IndexFormatError(f"no sparkann index at {root}")
    now = time.time()
    horizon = now - retention_hours * 3600
    published = {int(m.group(1)): e.mtime for e in store.list(join(root, MANIFESTS))
                 if (m := VERSION_FILE.match(e.name))}
    kept = [v for i, v in enumerate(versions) if i >= len(versions) - retain_versions
            or published.get(versions[i + 1], now) > horizon]
    dropped = [v for v in versions if v not in kept]
    needed: set[str] = set()
    for version in kept:
        needed |= referenced_files(read_manifest(store, root, version)[0])
    cutoff = min(published.get(kept[-1], now), horizon)
    removed: list[str] = []
    for kind in RUN_DIRS:
        removed += _vacuum_runs(store, root, kind, needed, cutoff)
    for entry in store.list(join(root, "meta")):
        path = f"meta/{entry.name}"
        if is_run_name("meta", entry.name) and path not in needed and entry.mtime < cutoff:
            store.delete(join(root, path))
            removed.append(path)
    for version in dropped:
        store.delete(manifest_path(root, version))
    log.info("sparkann: vacuumed %s: kept versions %s, removed %d versions and %d paths",
             root, kept, len(dropped), len(removed))
    return {"keptVersions": kept, "removedVersions": dropped, "removedPaths": sorted(removed),
            "retentionHours": retention_hours}


def _vacuum_runs(store: Store, root: str, kind: str, needed: set[str],
                 cutoff: float) -> list[str]:
    """Unreferenced run directories of one kind, and in the rest, unreferenced partition
    directories and part files (with their checksum sidecars): a file of several
    partitions' rows stays while a kept version names it for one of them."""
    removed = []
    for run in store.list(join(root, kind)):
        if not is_run_name(kind, run.name):  # not written by sparkann: never touched
            continue
        prefix = f"{kind}/{run.name}/"
        wanted = {f for f in needed if f.startswith(prefix)}
        if not wanted:
            if newest_mtime(store, join(root, prefix), run.mtime) < cutoff:
                store.delete(join(root, prefix))
                removed.append(prefix.rstrip("/"))
            continue
        for part in store.list(join(root, prefix)):
            path = prefix + part.name
            if part.is_dir and not any(f.startswith(path + "/") for f in wanted) \
                    and newest_mtime(store, join(root, path), part.mtime) < cutoff:
                store.delete(join(root, path))
                removed.append(path)
            elif not part.is_dir and PART_FILE.fullmatch(part.name) and path not in wanted \
                    and part.mtime < cutoff:
                store.delete(join(root, path))
                removed.append(path)
                sidecar = f"{prefix}.{part.name}.crc"  # the local file system's checksum
                if store.exists(join(root, sidecar)):
                    store.delete(join(root, sidecar))
    return removed


def newest_mtime(store: Store, path: str, own: float) -> float:
    """The newest modification time of the files under a directory (a directory's own
    time changes when something inside it is deleted, so it cannot tell age)."""
    times = []
    for entry in store.list(path):
        inner = join(path, entry.name)
        times.append(newest_mtime(store, inner, entry.mtime) if entry.is_dir else entry.mtime)
    return max(times) if times else own
