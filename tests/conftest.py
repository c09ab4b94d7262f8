"""One local SparkSession for the whole run, and shared data helpers."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pytest

from sparkann import datasets, readers


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts extra JVMs or processes")


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("sparkann-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def vectors_frame(spark, vectors: np.ndarray, ids=None, id_name="id", vector_type=pa.float32()):
    """A DataFrame (id, vector) built through Arrow, not row by row."""
    ids = np.arange(len(vectors)) if ids is None else ids
    values = pa.array(np.asarray(vectors).reshape(-1), vector_type)
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    table = pa.table({id_name: pa.array(ids), "vector": pa.ListArray.from_arrays(offsets, values)})
    return spark.createDataFrame(table)


def neighbor_ids(rows, key="id", column="neighbors"):
    """Neighbour ids ordered by the query key column."""
    rows = sorted(rows, key=lambda r: r[key])
    return np.array([[n.id for n in r[column]] for r in rows])


@pytest.fixture(scope="session")
def clustered_data():
    base = datasets.clustered(6000, 32, seed=7)
    queries = datasets.clustered(200, 32, seed=7, sample_seed=99)
    return base, queries


def shared_dataset(name):
    root = readers.default_data_root()
    if root is None or not os.path.isdir(os.path.join(root, name)):
        pytest.skip(f"shared dataset {name} not present")
    return readers.load_dataset(name, root)
