"""Versions of an index: load, and publish with optimistic concurrency.

Layout under an index root (any URI Spark can write)::

    manifests/v00000007.json                         one file per committed version
    manifests/_latest                                hint: the newest version number
    meta/<run>.bin                                   centroids, shards, centroid graph
    data/<run>/part-*.parquet                        partition indexes (Spark's writer;
                                                     a row group per partition)
    deletes/<run>/partition_id=N/part-*.parquet      deleted row labels (Spark's writer)
    locations/<run>/bucket=B/part-*.parquet          id -> partition (Spark's writer)

A version exists once its manifest file exists, and the manifest is written
last, after everything it names: an interrupted write leaves no visible
version. An update names the version it started from; it publishes only if
that is still the newest version, by creating the next manifest file with
:meth:`Store.create_new`, so of two racing writers exactly one wins and the
other gets :class:`ConcurrentUpdateError`, on every store whose create is atomic
(local, HDFS, S3 with boto3; see :mod:`sparkann.storage.fs`).
"""

from __future__ import annotations

import logging
import re
import uuid

from .. import testing
from .format import MAX_MANIFEST_BYTES, IndexFormatError, Manifest, sha256
from .fs import Store, join, store_for

MANIFESTS = "manifests"
LATEST = "_latest"
RUN_DIRS = ("data", "deletes", "locations")
LAYOUT = (MANIFESTS, "meta", *RUN_DIRS, "metadata", "staging")  # what a root may hold
VERSION_FILE = re.compile(r"^v(\d{8})\.json$")
_OLD_FORMAT_DIR = re.compile(r"^v\d{8}$")
_RUN_NAME = re.compile(r"^[0-9a-f]{32}$")  # a run directory made by new_run
_META_NAME = re.compile(r"^[0-9a-f]{32}\.bin(\.[0-9a-f]{32}\.tmp)?$")  # and its temporaries

log = logging.getLogger(__name__)


class ConcurrentUpdateError(RuntimeError):
    """Another writer published a version since this one's base version."""


class CommitStateUnknownError(RuntimeError):
    """Creating a version's manifest raised, and whether it was created cannot be told.
    Nothing the write made is removed: the version may exist."""


def manifest_path(root: str, version: int) -> str:
    return join(root, MANIFESTS, f"v{version:08d}.json")


def new_run(kind: str) -> str:
    """A fresh directory (or meta file stem) under the root for one write."""
    return f"{kind}/{uuid.uuid4().hex}"


def is_run_name(kind: str, name: str) -> bool:
    """Whether ``name`` under ``kind/`` is one a writer of an index creates."""
    return bool((_META_NAME if kind == "meta" else _RUN_NAME).match(name))


def foreign_entries(store: Store, root: str) -> list[str]:
    """Entries under ``root`` (relative paths) that no sparkann writer creates."""
    found = []
    for entry in store.list(root):
        if entry.name not in LAYOUT:
            found.append(entry.name)
        elif entry.name in (*RUN_DIRS, "meta"):
            found += [f"{entry.name}/{e.name}" for e in store.list(join(root, entry.name))
                      if not is_run_name(entry.name, e.name)]
    return sorted(found)


def check_index_root(spark, root: str) -> None:
    """Refuse to build into a directory that holds anything but a sparkann index (or the
    leftovers of an interrupted write of one): vacuum must never meet a user's files."""
    store = store_for(spark, root)
    if not store.list(root):
        return
    foreign = foreign_entries(store, root)
    if foreign and latest_version(store, root) == 0:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"indexPath={root!r} is a non-empty directory that is not a sparkann "
                         f"index (it holds {shown}); choose a new or empty directory, or an "
                         "existing index")


def listed_versions(store: Store, root: str) -> list[int]:
    entries = store.list(join(root, MANIFESTS))
    if any(e.is_dir and _OLD_FORMAT_DIR.match(e.name) for e in entries):
        raise IndexFormatError(f"{root} holds an index in sparkann's index format 1; "
                               "rebuild it with this version of sparkann")
    return sorted(int(m.group(1)) for e in entries if (m := VERSION_FILE.match(e.name)))


def latest_version(store: Store, root: str) -> int:
    """The newest committed version (0 if none): the hint, then a probe forward."""
    try:
        hinted = int(store.read(join(root, MANIFESTS, LATEST), 64).decode().strip())
    except Exception:  # missing or damaged hint: list the versions once
        versions = listed_versions(store, root)
        return versions[-1] if versions else 0
    version = max(hinted, 0)
    while store.exists(manifest_path(root, version + 1)):
        version += 1
    if version and not store.exists(manifest_path(root, version)):
        versions = listed_versions(store, root)  # a vacuumed or bogus hint
        return versions[-1] if versions else 0
    return version


def read_manifest(store: Store, root: str, version: int) -> tuple[Manifest, str]:
    """A committed manifest and the SHA-256 of its bytes."""
    try:
        data = store.read(manifest_path(root, version), MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as err:
        raise IndexFormatError(f"{root} has no readable version {version} ({err})") from None
    except Exception as err:  # a JVM-side FileNotFoundException on classic Spark
        if "FileNotFound" in type(err).__name__ or "FileNotFound" in str(err):
            raise IndexFormatError(f"{root} has no committed version {version}") from None
        raise
    return Manifest.from_json(root, data, version), sha256(data)


def load(spark, root: str, version: int | None = None) -> tuple[Manifest, str]:
    """The newest committed manifest under ``root`` (or ``version``) and its SHA-256."""
    store = store_for(spark, root)
    root = store.qualify(root)
    if not store.exists(root):
        raise IndexFormatError(f"no sparkann index at {root}: the path does not exist")
    latest = latest_version(store, root)
    if latest == 0:
        raise IndexFormatError(f"no sparkann index at {root}: the directory holds no committed "
                               "version (not an index, or an interrupted first write)")
    wanted = latest if version is None else version
    if not 1 <= wanted <= latest or not store.exists(manifest_path(root, wanted)):
        raise IndexFormatError(f"{root} has no committed version {wanted} (the newest is "
                               f"{latest}; old versions may have been vacuumed)")
    return read_manifest(store, root, wanted)


def check_current(spark, manifest: Manifest) -> None:
    """Fail early (before any work) when ``manifest`` is no longer the newest version."""
    latest = latest_version(store_for(spark, manifest.root), manifest.root)
    if latest != manifest.version:
        raise ConcurrentUpdateError(
            f"{manifest.root} is at version {latest}, but this model holds version "
            f"{manifest.version}: another writer published in between. Version {latest} is "
            "kept; load the index again and repeat the change")


def publish(spark, manifest: Manifest, base_version: int | None) -> tuple[Manifest, str]:
    """Commit ``manifest`` as the version after ``base_version`` (None: after the newest).

    Raises :class:`ConcurrentUpdateError` when the newest version is no longer
    ``base_version``, or another writer takes the version number first.
    """
    store = store_for(spark, manifest.root)
    latest = latest_version(store, manifest.root)
    if base_version is not None and latest != base_version:
        raise ConcurrentUpdateError(
            f"{manifest.root} is at version {latest}, but this change was made from version "
            f"{base_version}: another writer published in between. Version {latest} is kept; "
            "load the index again and repeat the change")
    version = latest + 1
    committed = manifest.with_(version=version, base_version=latest)
    text = committed.to_json().encode()
    if not _commit(spark, store, manifest.root, version, text):
        raise ConcurrentUpdateError(
            f"another writer published version {version} of {manifest.root} first, on top of "
            f"version {latest} this change was made from; version {version} is kept. Load the "
            "index again and repeat the change")
    try:
        store.write(join(manifest.root, MANIFESTS, LATEST), str(version).encode())
    except Exception as err:  # only a hint: readers probe forward
        log.warning("could not update the latest-version hint of %s: %s", manifest.root, err)
    log.info("sparkann: published %s version %d", manifest.root, version)
    return committed, sha256(text)


def _commit(spark, store: Store, root: str, version: int, text: bytes) -> bool:
    """Create the manifest file; False if another writer holds the name. When creating
    it raises, its outcome is read back: our bytes there mean it was committed."""
    path = manifest_path(root, version)
    try:
        testing.commit_fault(spark, "before")
        created = store.create_new(path, text)
        testing.commit_fault(spark, "after")
        return created
    except Exception as err:
        state = _commit_state(spark, store, path, text)
        if state == "unknown":
            raise CommitStateUnknownError(
                f"publishing version {version} of {root} raised ({err}), and whether it was "
                "committed cannot be told; nothing was removed: load the index to see if "
                f"version {version} exists") from err
        if state == "absent":
            raise
        log.warning("sparkann: publishing %s raised (%s), but the file holds %s", path, err,
                    "this version: it was committed" if state == "ours" else "another writer's")
        return state == "ours"


def _commit_state(spark, store: Store, path: str, text: bytes) -> str:
    """What the manifest file holds: "ours", "theirs" (another writer's), "absent" or
    "unknown" (it could not be read)."""
    try:
        testing.commit_fault(spark, "check")
        if not store.exists(path):
            return "absent"
        return "ours" if sha256(store.read(path, MAX_MANIFEST_BYTES)) == sha256(text) \
            else "theirs"
    except Exception as err:
        log.warning("sparkann: could not read back %s: %s", path, err)
        return "unknown"
