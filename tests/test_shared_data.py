"""The readers on the shared datasets (``../shared/data``; skipped when absent)."""

from __future__ import annotations

import json
import os

import pytest
import shared_data  # benchmarks/shared_data.py, on sys.path through conftest

from sparkann import cli, readers


def _root_with(name):
    root = shared_data.default_data_root()
    if root is None or not os.path.isdir(os.path.join(root, name)):
        pytest.skip(f"shared dataset {name} not present")
    return os.path.join(root, name)


@pytest.mark.parametrize("name, shape, queries", [
    ("sift10k", (10_000, 128), 100),
    ("mnist", (60_000, 784), 10_000),
    ("fashion-mnist", (60_000, 784), 10_000),
])
def test_load_dataset(name, shape, queries):
    _root_with(name)
    data = shared_data.load_dataset(name)
    assert data["base"].shape == shape and data["base"].dtype == "float32"
    assert data["queries"].shape == (queries, shape[1])
    if name == "sift10k":
        assert data["groundtruth"].shape == (100, 100)


def test_convert_shared_files_to_parquet_for_spark(spark, tmp_path, capsys):
    sift, mnist = _root_with("sift10k"), _root_with("mnist")
    out = str(tmp_path / "sift_query.parquet")
    code = cli.main(["convert", "--input", os.path.join(sift, "siftsmall_query.fvecs"),
                     "--output", out])
    assert code == 0 and json.loads(capsys.readouterr().out) == {
        "output": out, "rows": 100, "dim": 128}
    truth = str(tmp_path / "truth.parquet")
    ground_truth = os.path.join(sift, "siftsmall_groundtruth.ivecs")
    assert readers.to_parquet(ground_truth, truth) == (100, 100)
    images = str(tmp_path / "mnist_test.parquet")
    rows, dim = readers.to_parquet(os.path.join(mnist, "t10k-images-idx3-ubyte.gz"), images)
    assert (rows, dim) == (10_000, 784)
    frame = spark.read.parquet(images)
    assert frame.schema.simpleString() == "struct<id:bigint,vector:array<float>>"
    assert frame.count() == 10_000
    first = spark.read.parquet(out).orderBy("id").first()
    expected = readers.read_fvecs(os.path.join(sift, "siftsmall_query.fvecs"), count=1)[0]
    assert first.id == 0 and first.vector == pytest.approx(expected.tolist())
