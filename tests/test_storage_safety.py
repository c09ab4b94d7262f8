"""What the index's storage must never do: delete a user's files, break a committed
version while cleaning up, or pull files from under a reader or a running write.

Real files under a local index root and the shared local SparkSession.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
from conftest import vectors_frame

from sparkann import ANNIndex, ANNIndexModel, datasets

DIM = 8
OLD = time.time() - 30 * 24 * 3600  # a month ago: older than any retention period


@pytest.fixture(scope="module")
def items(spark):
    vectors = datasets.clustered(400, DIM, seed=5)
    return vectors_frame(spark, vectors.astype(np.float32), np.arange(400, dtype=np.int64))


def build(items, path) -> ANNIndexModel:
    return ANNIndex(indexPath=str(path), numPartitions=2, targetRecall=0,
                    efConstruction=20).fit(items)


def write_file(path, data: bytes = b"user data", mtime: float = OLD) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def age_tree(root, mtime: float = OLD) -> None:
    """Make every file and directory under ``root`` look ``mtime`` old."""
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            os.utime(os.path.join(directory, name), (mtime, mtime))


USER_FILES = ["data/2024/x.parquet", "data/a.csv", "meta/notes.txt", "locations/keep/b.bin",
              "deletes/old.parquet"]


def test_fit_refuses_a_directory_that_is_not_an_index(items, tmp_path):
    for name in USER_FILES[:2]:
        write_file(tmp_path / name)
    with pytest.raises(ValueError, match="indexPath=.* is a non-empty directory that is not a "
                                         "sparkann index .*data/2024"):
        build(items, tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) \
        == sorted(USER_FILES[:2])


def test_fit_accepts_an_empty_directory_and_an_existing_index(items, tmp_path):
    (tmp_path / "empty").mkdir()
    assert build(items, tmp_path / "empty").manifest.version == 1
    assert build(items, tmp_path / "empty").manifest.version == 2


def test_vacuum_removes_only_what_the_index_wrote(items, tmp_path):
    """User files put under data/, meta/, locations/ and deletes/ of an index survive a
    vacuum, however old; an old run directory no version names is removed."""
    model = build(items, tmp_path)
    for name in USER_FILES:
        write_file(tmp_path / name)
    stale = f"data/{uuid.uuid4().hex}"
    write_file(tmp_path / stale / "partition_id=0" / "part-0.parquet")
    age_tree(tmp_path / stale)
    report = model.vacuum()
    assert report["removedPaths"] == [stale]
    for name in USER_FILES:
        assert (tmp_path / name).read_bytes() == b"user data", name
    assert not (tmp_path / stale).exists()
    assert ANNIndexModel.load(str(tmp_path)).transform(
        items.limit(3)).count() == 3


def test_vacuum_removes_a_part_file_no_version_names_from_a_named_run(items, tmp_path):
    """A data run a version names keeps the files it names; an old part file of that
    run no version names (the rows of partitions rewritten since) goes with its
    checksum sidecar; a file of the user's there stays."""
    model = build(items, tmp_path)
    named = sorted({f for f in model.manifest.partitions.files if f})
    run = tmp_path / os.path.dirname(named[0])
    unnamed = "part-00009-0c3d8f1e-6a3e-4f7b-9f52-3b8e1b7c9a11-c000.snappy.parquet"
    for name in (unnamed, f".{unnamed}.crc", "user-notes.parquet"):
        write_file(run / name)
        os.utime(run / name, (OLD, OLD))
    report = model.vacuum(retentionHours=0)
    relative = os.path.relpath(run / unnamed, tmp_path)
    assert report["removedPaths"] == [relative]
    assert not (run / unnamed).exists() and not (run / f".{unnamed}.crc").exists()
    assert (run / "user-notes.parquet").read_bytes() == b"user data"
    assert all((tmp_path / f).is_file() for f in named)
    assert ANNIndexModel.load(str(tmp_path)).transform(items.limit(3)).count() == 3


# ------------------------------------------------------ a commit that raised


@pytest.fixture
def commit_fault(spark):
    from sparkann.testing import COMMIT_FAULT_CONF

    def inject(points: str) -> None:
        spark.conf.set(COMMIT_FAULT_CONF, points)

    yield inject
    spark.conf.unset(COMMIT_FAULT_CONF)


def version_files_exist(model: ANNIndexModel) -> bool:
    from sparkann.storage.transaction import referenced_files

    root = model.manifest.root
    return all(os.path.isfile(os.path.join(root, f)) for f in referenced_files(model.manifest))


def test_a_commit_that_raised_after_it_succeeded_keeps_the_version(items, tmp_path,
                                                                     commit_fault, spark):
    """create_new raises after the manifest was created (a lost response): the update
    returns the committed version, whose files are all still there."""
    model = build(items, tmp_path)
    extra = vectors_frame(spark, datasets.clustered(20, DIM, seed=9).astype(np.float32),
                          np.arange(1000, 1020, dtype=np.int64))
    commit_fault("after")
    added = model.add(extra)
    assert added.manifest.version == 2
    newest = ANNIndexModel.load(str(tmp_path))
    assert newest.manifest.version == 2 and newest.summary()["numVectors"] == 420
    assert version_files_exist(newest)
    assert newest.transform(extra.limit(2)).count() == 2


def test_a_commit_of_unknown_state_deletes_nothing(items, tmp_path, commit_fault):
    """The commit raised and its outcome cannot be read back: a clear error, and no
    file of the (committed) version is removed."""
    from sparkann.storage import CommitStateUnknownError

    model = build(items, tmp_path)
    commit_fault("after,check")
    with pytest.raises(CommitStateUnknownError, match="version 2 .* cannot be told"):
        model.delete([1, 2])
    newest = ANNIndexModel.load(str(tmp_path))
    assert newest.manifest.version == 2 and newest.summary()["numVectors"] == 398
    assert version_files_exist(newest)


def test_a_commit_that_certainly_failed_removes_what_it_wrote(items, tmp_path, commit_fault):
    model = build(items, tmp_path)
    before = sorted(p.name for p in (tmp_path / "deletes").glob("*"))
    commit_fault("before")
    with pytest.raises(OSError, match="injected failure before"):
        model.delete([1, 2])
    assert ANNIndexModel.load(str(tmp_path)).manifest.version == 1
    assert sorted(p.name for p in (tmp_path / "deletes").glob("*")) == before


# ------------------------------------------------------------- id locations


def test_a_damaged_id_location_file_is_refused(items, tmp_path):
    """Every id-location file has a checksum in the manifest: one rewritten with other
    (well-formed) partition ids fails the delete that reads it, naming the file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    model = build(items, tmp_path)
    for files in model.manifest.locations.files:
        for name in files:
            path = str(tmp_path / name)
            table = pq.read_table(path)
            moved = pc.subtract(pc.subtract(1, table.column("partition_id")), 0)
            pq.write_table(table.set_column(table.schema.get_field_index("partition_id"),
                                            "partition_id", pc.abs(moved)), path)
    with pytest.raises(Exception, match="id-location file .* checksum does not match"):
        model.delete(list(range(40)))
    assert ANNIndexModel.load(str(tmp_path)).manifest.version == 1


# ------------------------------------------------------------- retention


def test_vacuum_keeps_versions_that_were_newest_within_the_retention_period(items, tmp_path):
    """By default (168 hours) a version replaced a moment ago stays loadable, with its
    files: a job or a stream may still read it. retentionHours=0 removes it."""
    v1 = build(items, tmp_path)
    v2 = v1.delete([1, 2])
    report = v2.vacuum()
    assert report["keptVersions"] == [1, 2] and report["removedVersions"] == []
    assert report["removedPaths"] == []
    old = ANNIndexModel.load(str(tmp_path), version=1)
    assert version_files_exist(old) and old.transform(items.limit(2)).count() == 2
    report = v2.vacuum(retentionHours=0)
    assert report["keptVersions"] == [2] and report["removedVersions"] == [1]
    assert version_files_exist(ANNIndexModel.load(str(tmp_path)))


def test_vacuum_leaves_runs_younger_than_the_retention_period(items, tmp_path):
    """A run written an hour ago that no version names (a fit still running, started
    before the newest version was published) survives the default vacuum; with a
    retention period shorter than its age it is removed."""
    model = build(items, tmp_path)
    running = f"data/{uuid.uuid4().hex}"
    write_file(tmp_path / running / "partition_id=0" / "part-0.parquet",
               mtime=time.time() - 3600)
    newer = model.delete([5])  # the newest manifest is younger than the run
    assert newer.vacuum()["removedPaths"] == []
    assert (tmp_path / running).is_dir()
    assert newer.vacuum(retentionHours=0.5)["removedPaths"] == [running]


@pytest.mark.parametrize("hours", [-1, float("nan"), float("inf"), "1", True])
def test_vacuum_refuses_a_bad_retention_period(items, tmp_path_factory, hours):
    model = ANNIndexModel.load(str(_retention_index(items, tmp_path_factory)))
    with pytest.raises(ValueError, match=f"retentionHours={hours!r} is out of range"):
        model.vacuum(retentionHours=hours)


_INDEXES: dict = {}


def _retention_index(items, tmp_path_factory):
    if "retention" not in _INDEXES:
        path = tmp_path_factory.mktemp("retention")
        build(items, path)
        _INDEXES["retention"] = path
    return _INDEXES["retention"]
