"""Every write goes through one Transaction: a write of any kind that fails, at any of
its steps, leaves no file or directory of its own behind and never touches another
version's files; every version records the operation that made it.

Real Spark (local mode), real files; failures are injected through the library's own
test settings (a task's first attempt raises; publishing raises before the commit).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from conftest import vectors_frame

from sparkann import ANNIndex, ANNIndexModel, datasets
from sparkann.storage import IndexFormatError, Manifest
from sparkann.storage import transaction as transaction_module
from sparkann.storage.format import OPERATIONS
from sparkann.storage.transaction import Transaction, referenced_files
from sparkann.storage.versions import LAYOUT
from sparkann.testing import COMMIT_FAULT_CONF, FAIL_FIRST_ATTEMPT_CONF

DIM = 8


@pytest.fixture(scope="module")
def items(spark):
    vectors = datasets.clustered(400, DIM, seed=5)
    return vectors_frame(spark, vectors.astype(np.float32), np.arange(400, dtype=np.int64))


@pytest.fixture(scope="module")
def extra(spark):
    vectors = datasets.clustered(30, DIM, seed=9)
    return vectors_frame(spark, vectors.astype(np.float32), np.arange(1000, 1030, dtype=np.int64))


def fit(items, path) -> ANNIndexModel:
    return ANNIndex(indexPath=str(path), numPartitions=2, targetRecall=0,
                    efConstruction=20).fit(items)


@pytest.fixture(scope="module")
def index(items, tmp_path_factory):
    """Version 1 by fit, version 2 by a delete (so compact has work)."""
    return fit(items, tmp_path_factory.mktemp("txn") / "index").delete([1, 2, 3])


@pytest.fixture(scope="module")
def other(items, tmp_path_factory):
    """Another index, which a failed copy onto it must leave as it was."""
    return fit(items, tmp_path_factory.mktemp("txn") / "other")


def snapshot(root) -> dict:
    """Every file (with a digest of its bytes) and directory under ``root``, but the
    top-level directories of the layout (``deletes/``), which a write creates when the
    root has none, and leaves: another writer may be creating its runs in them."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            if directory != str(root) or name not in LAYOUT:
                found[os.path.relpath(os.path.join(directory, name), root) + "/"] = None
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return found


@pytest.fixture
def faults(spark):
    def inject(task: str = "", commit: str = "") -> None:
        spark.conf.set(FAIL_FIRST_ATTEMPT_CONF, task)
        spark.conf.set(COMMIT_FAULT_CONF, commit)

    yield inject
    spark.conf.unset(FAIL_FIRST_ATTEMPT_CONF)
    spark.conf.unset(COMMIT_FAULT_CONF)


# Each write, and a fault at one of its steps: a task of a Spark write (partitions,
# delete files, id locations), or the commit itself after everything was written.
WRITES = {
    "fit": lambda model, items, extra, target: fit(items, model.manifest.root),
    "add": lambda model, items, extra, target: model.add(extra),
    "delete": lambda model, items, extra, target: model.delete([10, 11]),
    "compact": lambda model, items, extra, target: model.compact(0.0),
    "rebalance": lambda model, items, extra, target: model.rebalance(0.0),
    "calibrate": lambda model, items, extra, target: model.calibrate(0.9),
    "save": lambda model, items, extra, target: model.write().overwrite().save(
        model.manifest.root),
    "copy": lambda model, items, extra, target: model.write().overwrite().save(target),
}
CASES = [("fit", "build", ""), ("fit", "", "before"),
         ("add", "update", ""), ("add", "locations", ""), ("add", "", "before"),
         ("delete", "deletes", ""), ("delete", "", "before"),
         ("compact", "", "before"),
         ("rebalance", "locations", ""), ("rebalance", "", "before"),
         ("calibrate", "", "before"), ("save", "", "before"),
         ("copy", "deletes", ""), ("copy", "locations", ""), ("copy", "", "before")]


@pytest.mark.parametrize("write,task,commit", CASES,
                         ids=[f"{w}-{t or 'commit'}" for w, t, _ in CASES])
def test_a_failed_write_leaves_nothing_of_its_own_and_removes_nothing(
        index, items, extra, tmp_path, faults, write, task, commit):
    root = index.manifest.root
    target = tmp_path / "copy"
    before = snapshot(root)
    faults(task, commit)
    with pytest.raises(Exception, match="injected failure"):
        WRITES[write](index, items, extra, str(target))
    faults()
    assert snapshot(root) == before
    assert ANNIndexModel.load(root).manifest.version == index.manifest.version
    if write == "copy":  # a new root: nothing but the empty directories of the layout
        assert snapshot(target) == {}


def test_a_failed_copy_onto_another_index_leaves_it_as_it_was(index, other, faults):
    root, source = other.manifest.root, index.manifest.root
    before = snapshot(root), snapshot(source)
    faults("", "before")
    with pytest.raises(OSError, match="injected failure"):
        index.write().overwrite().save(root)
    faults()
    assert (snapshot(root), snapshot(source)) == before
    assert ANNIndexModel.load(root).manifest.version == 1


def test_every_version_records_the_operation_that_made_it(index, items, extra, tmp_path):
    model = fit(items, tmp_path / "index")
    made = [model, model.delete([5, 6])]
    made.append(made[-1].add(extra))
    made.append(made[-1].compact(0.0))
    made.append(made[-1].rebalance(0.0))
    made.append(made[-1].calibrate(0.9))
    made[-1].write().overwrite().save(str(tmp_path / "index"))
    made.append(ANNIndexModel.load(str(tmp_path / "index")))
    made[-1].write().save(str(tmp_path / "copy"))
    made.append(ANNIndexModel.load(str(tmp_path / "copy")))
    assert [m.manifest.operation for m in made] == [
        "fit", "delete", "add", "compact", "rebalance", "calibrate", "save", "copy"]
    assert [m.manifest.version for m in made] == [1, 2, 3, 4, 5, 6, 7, 1]
    for m in made:  # as read back from its manifest file, with every file it names
        loaded = ANNIndexModel.load(m.manifest.root, m.manifest.version).manifest
        assert loaded.operation == m.manifest.operation
        assert all(os.path.isfile(os.path.join(m.manifest.root, f))
                   for f in referenced_files(loaded) if f)
    assert made[-1].transform(extra.limit(3)).count() == 3


def test_an_interrupt_after_the_commit_keeps_every_file(index, spark, monkeypatch, tmp_path):
    """A commit interrupted (not failed) may have happened: nothing is removed."""
    index.write().save(str(tmp_path / "index"))
    model = ANNIndexModel.load(str(tmp_path / "index"))
    real_publish = transaction_module.publish

    def publish_then_interrupt(*args, **kwargs):
        real_publish(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(transaction_module, "publish", publish_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with Transaction(spark, model.manifest.root, model.manifest) as txn:
            meta = txn.write_meta(b"the same centroids, rewritten")
            txn.commit("calibrate")
    committed = ANNIndexModel.load(model.manifest.root).manifest
    assert committed.version == 2 and committed.meta_file == meta
    assert os.path.isfile(os.path.join(model.manifest.root, meta))


def test_an_abandoned_transaction_removes_only_what_it_wrote(index, spark):
    root = index.manifest.root
    before = snapshot(root)
    with Transaction(spark, root, index.manifest) as txn:
        meta = txn.write_meta(b"never committed")
        assert os.path.isfile(os.path.join(root, meta))
    assert snapshot(root) == before
    with pytest.raises(RuntimeError, match="state 'failed'"):
        txn.commit("add")


def test_a_version_naming_files_its_transaction_did_not_write_is_refused(index, spark,
                                                                          tmp_path):
    """A copy that forgot to rewrite a file would name the source's files under the
    target root: refused before anything is published."""
    target = str(tmp_path / "target")
    with pytest.raises(RuntimeError, match="would name files this change did not write"):
        with Transaction(spark, target, start=index.manifest) as txn:
            txn.write_meta(b"meta")
            txn.commit("copy")
    assert snapshot(target) == {}


def test_commit_refuses_an_unknown_operation(index, spark):
    with Transaction(spark, index.manifest.root, index.manifest) as txn:
        with pytest.raises(ValueError, match="operation='merge' must be one of fit, add"):
            txn.commit("merge")


def test_the_operation_field_of_a_manifest_is_checked_and_optional(index):
    doc = json.loads(index.manifest.to_json())
    assert doc["operation"] == "delete" and set(OPERATIONS) >= {"fit", "copy", "rebalance"}
    del doc["operation"]  # as written before versions recorded their operation
    root, version = index.manifest.root, index.manifest.version
    assert Manifest.from_json(root, json.dumps(doc), version).operation == ""
    doc["operation"] = "merge"
    with pytest.raises(IndexFormatError, match="operation='merge' is not one of fit"):
        Manifest.from_json(root, json.dumps(doc), version)
