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
