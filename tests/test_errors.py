"""Bad and hostile input: a clear error naming the column or parameter, nothing lost."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pytest
from conftest import vectors_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.ml.linalg import Vectors

from sparkann import ANNIndex, ANNIndexModel, datasets
from sparkann.metrics import get_metric
from sparkann.storage import IndexFormatError
from sparkann.vectors import list_array, to_matrix


@pytest.fixture(scope="module")
def base(spark):
    return vectors_frame(spark, datasets.clustered(300, 8, seed=1))


@pytest.fixture(scope="module")
def model(base):
    return ANNIndex(numPartitions=3, targetRecall=0).fit(base)


def _frame(spark, rows, schema="id long, vector array<float>"):
    return spark.createDataFrame(rows, schema)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(1, [1.0, float("nan")]), (2, [1.0, 2.0])], r"'vector' holds NaN or infinite .* id=1"),
        ([(1, [1.0, 2.0]), (2, [float("inf"), 2.0])], r"NaN or infinite .* id=2"),
        ([(1, [1.0, 2.0]), (3, [2.0, -1e20])],
         r"'vector' holds .*too large.* id=3 with the value -1e\+20 \(.*squared norm"),
        ([(1, [1.0, 2.0]), (2, None)], r"'vector' holds 1 null vector"),
        ([(1, [1.0, 2.0]), (None, [1.0, 2.0])], r"'id' holds 1 null id"),
        ([(1, [1.0, 2.0]), (2, [1.0, 2.0, 3.0])], r"differing lengths \(2 to 3\)"),
        ([], r"input DataFrame is empty"),
        ([(1, [1.0, 2.0]), (1, [3.0, 4.0])],
         r"1 duplicate id.*id=1.*dropDuplicates.*allowDuplicateIds"),
    ],
)
def test_bad_rows_are_refused_before_building(spark, rows, message, tmp_path):
    path = str(tmp_path / "index")
    with pytest.raises(ValueError, match=message):
        ANNIndex(numPartitions=1, indexPath=path).fit(_frame(spark, rows))
    assert not glob.glob(os.path.join(path, "data", "*"))  # nothing partial left


def test_duplicate_ids_can_be_allowed(spark):
    rows = [(1, [1.0, 2.0]), (1, [3.0, 4.0]), (2, [0.0, 1.0])]
    model = ANNIndex(numPartitions=1, allowDuplicateIds=True, k=3, targetRecall=0).fit(
        _frame(spark, rows))
    assert model.summary()["numVectors"] == 3


@pytest.mark.parametrize(
    "schema, rows, message",
    [
        ("id long, vector string", [(1, "1,2")], r"vectorCol='vector' has type string"),
        ("id long, vector array<string>", [(1, ["a"])], r"has type array<string>"),
        ("id long, vector struct<x: float>", [(1, (1.0,))], r"has type struct<x:float>"),
        ("id double, vector array<float>", [(1.0, [1.0])], r"idCol='id' has type double"),
    ],
)
def test_wrong_column_types(spark, schema, rows, message):
    with pytest.raises(TypeError, match=message):
        ANNIndex().fit(_frame(spark, rows, schema))


def test_missing_column_lists_the_existing_ones(base):
    with pytest.raises(ValueError, match=r"column 'emb' not found.*\['id', 'vector'\]"):
        ANNIndex(vectorCol="emb").fit(base)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"metric": "hamming"}, r"metric='hamming' is not supported"),
        ({"indexType": "ivf"}, r"indexType='ivf' is not supported"),
        ({"k": 0}, r"k=0 is out of range"),
        ({"k": 100_001}, r"k=100001 is out of range: must be in 1\.\.100000"),
        ({"numProbes": -1}, r"numProbes=-1 is out of range"),
        ({"targetRecall": 1.0}, r"targetRecall=1.0 is out of range"),
        ({"searchStrategy": "broadcast"}, r"searchStrategy='broadcast' is not supported"),
        ({"hnswM": 1}, r"hnswM=1 is out of range"),
        ({"hnswM": 5000}, r"hnswM=5000 is out of range"),
        ({"efConstruction": 0}, r"efConstruction=0 is out of range"),
        ({"pqSubvectors": 0}, r"pqSubvectors=0 is out of range"),
        ({"pqBits": 6}, r"pqBits=6 is not supported"),
        ({"pqCodebook": "local"}, r"pqCodebook='local' is not supported"),
    ],
)
def test_bad_parameters_fail_when_set(params, message):
    with pytest.raises(ValueError, match=message):
        ANNIndex(**params)
    name, value = next(iter(params.items()))
    setter = getattr(ANNIndex(), "set" + name[0].upper() + name[1:])
    with pytest.raises(ValueError, match=message):
        setter(value)


def test_data_dependent_parameters(base):
    with pytest.raises(ValueError,
                       match=r"numPartitions=500 is larger than the number of rows \(300\)"):
        ANNIndex(numPartitions=500).fit(base)
    with pytest.raises(ValueError, match=r"pqSubvectors=16 is larger than the dimension 8"):
        ANNIndex(indexType="pq", pqSubvectors=16).fit(base)


def test_search_parameters_are_checked_on_the_model(model, base):
    with pytest.raises(ValueError, match=r"numProbes=0 is out of range"):
        model.copy().setNumProbes(0)
    clamped = model.copy().setNumProbes(6)  # more than the 3 clusters: all are searched
    assert clamped.searchSettings()["numProbes"] == 3
    assert clamped.transform(base).count() == 300
    with pytest.raises(ValueError, match=r"efSearch=3 must be >= k=10"):
        model.copy().setEfSearch(3).transform(base)


def test_all_zero_vectors_with_cosine(spark):
    rows = [(1, [1.0, 0.0]), (7, [0.0, 0.0])]
    with pytest.raises(ValueError, match=r"1 all-zero vector.*cosine.*id=7"):
        ANNIndex(metric="cosine", numPartitions=1).fit(_frame(spark, rows))


@pytest.mark.parametrize("strategy", ["local", "partition"])
@pytest.mark.parametrize(
    "rows, message",
    [
        ([(1, [1.0] * 8), (2, [1.0, 2.0, 3.0])],
         r"query vectors in column 'vector' have dimension 3\b.*but the index has dimension 8"),
        ([(1, [1.0] * 8), (5, None)], r"query column 'vector' holds a null vector"),
        ([(1, [1.0] * 8), (6, [float("nan")] * 8)],
         r"query column 'vector' holds a non-finite value \(nan\)"),
        ([(1, [1.0] * 8), (7, [0.0] * 7 + [1e20])],
         r"query column 'vector' holds a value too large \(1e\+20\): .*squared norm"),
    ],
)
def test_bad_queries_fail_inside_the_search_tasks(spark, model, rows, message, strategy):
    searched = model.copy().setSearchStrategy(strategy).transform(_frame(spark, rows))  # lazy
    with pytest.raises(Exception, match=message):
        searched.collect()


def test_bad_query_rows_are_named_by_their_id_with_exclude_self(spark, model):
    rows = [(1, [1.0] * 8), (42, [float("inf")] + [1.0] * 7)]
    searched = model.copy().setExcludeSelf(True).transform(_frame(spark, rows))
    with pytest.raises(Exception, match=r"non-finite value \(inf\) \(row with id=42\)"):
        searched.collect()


def test_load_of_a_missing_path_or_a_plain_directory(tmp_path, spark):
    with pytest.raises(IndexFormatError, match="does not exist"):
        ANNIndexModel.load(str(tmp_path / "nothing"))
    plain = tmp_path / "plain"
    spark.range(3).write.parquet(str(plain))
    with pytest.raises(IndexFormatError, match="holds no committed version"):
        ANNIndexModel.load(str(plain))


def test_save_without_overwrite_keeps_the_existing_index(model, base, tmp_path):
    path = str(tmp_path / "index")
    model.save(path)
    before = ANNIndexModel.load(path).transform(base.limit(5)).orderBy("id").collect()
    other = ANNIndex(numPartitions=2, targetRecall=0).fit(base)
    with pytest.raises(FileExistsError, match="already exists"):
        other.save(path)
    after = ANNIndexModel.load(path)
    assert after.summary()["numPartitions"] == 3
    assert after.transform(base.limit(5)).orderBy("id").collect() == before


def test_overwrite_of_a_directory_that_is_not_an_index_is_refused(model, spark, tmp_path):
    plain = str(tmp_path / "plain")
    spark.range(3).write.parquet(plain)
    with pytest.raises(FileExistsError, match="not a sparkann index"):
        model.write().overwrite().save(plain)
    assert spark.read.parquet(plain).count() == 3


def test_udt_vectors_with_nan_are_refused(spark):
    frame = spark.createDataFrame([(1, Vectors.dense([1.0, float("nan")]))], ["id", "vector"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ANNIndex(numPartitions=1).fit(frame)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 20),
    dim=st.integers(1, 12),
    scale=st.sampled_from([1e-30, 1.0, 1e30]),
    seed=st.integers(0, 1000),
)
def test_vector_normalisation_properties(rows, dim, scale, seed):
    matrix = (np.random.default_rng(seed).standard_normal((rows, dim)) * scale).astype(np.float32)
    back = to_matrix(list_array(matrix), dim if rows == 0 else None)  # no rows: no width
    np.testing.assert_array_equal(back, matrix.reshape(rows, dim))
    if rows and (np.linalg.norm(matrix, axis=1) > 0).all():
        unit = get_metric("cosine").prepare(matrix.astype(np.float64))
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


def test_to_matrix_rejects_ragged_and_null_rows():
    with pytest.raises(ValueError, match="dimension 3, expected 2"):
        to_matrix(pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="1 null vector"):
        to_matrix(pa.array([[1.0], None], pa.list_(pa.float32())))
