"""pyspark.ml conventions: params, persistence inside a Pipeline, and runnable docstrings."""

from __future__ import annotations

import doctest

import pytest
from conftest import vectors_frame
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.param import Params

import sparkann.estimator
from sparkann import ANNIndex, ANNIndexModel, datasets


@pytest.fixture(scope="module")
def items(spark):
    return vectors_frame(spark, datasets.clustered(2000, 16, seed=5))


def test_every_param_has_a_getter_and_a_setter():
    index = ANNIndex()
    for param in index.params:
        suffix = param.name[0].upper() + param.name[1:]
        assert callable(getattr(index, f"get{suffix}", None)), param.name
        assert callable(getattr(index, f"set{suffix}", None)), param.name
    model = ANNIndexModel()
    assert {p.name for p in model.params} == {p.name for p in index.params}


def test_optional_params_are_left_unset_not_empty():
    index = ANNIndex()
    for name in ("indexPath", "allowedIdsCol", "numProbes", "efSearch", "rerankK"):
        assert not index.isDefined(index.getParam(name)), name
    assert ANNIndex(indexPath="/tmp/x").getIndexPath() == "/tmp/x"


def test_values_are_validated_when_set():
    with pytest.raises(ValueError, match=r"metric='manhattan' is not supported"):
        ANNIndex(metric="manhattan")
    with pytest.raises(ValueError, match=r"k=0 is out of range"):
        ANNIndex().setK(0)
    with pytest.raises(TypeError, match=r"hnswM=True must be an integer"):
        ANNIndex().setHnswM(True)


def test_estimator_round_trip_keeps_defaults_and_user_values_apart(spark, tmp_path):
    index = ANNIndex(k=7, metric="cosine")
    path = str(tmp_path / "estimator")
    index.save(path)
    loaded = ANNIndex.load(path)
    assert loaded.uid == index.uid
    assert loaded.isSet(loaded.k) and loaded.getK() == 7
    assert loaded.isSet(loaded.metric) and loaded.getMetric() == "cosine"
    assert not loaded.isSet(loaded.hnswM) and loaded.getHnswM() == 16


def test_model_load_keeps_defaults_and_user_values_apart(items, tmp_path):
    model = ANNIndex(k=5, numPartitions=2).fit(items).setEfSearch(70)
    path = str(tmp_path / "model")
    model.save(path)
    loaded = ANNIndexModel.load(path)
    assert loaded.uid == model.uid
    assert loaded.isSet(loaded.k) and loaded.getK() == 5
    assert loaded.isSet(loaded.efSearch) and loaded.getEfSearch() == 70
    assert not loaded.isSet(loaded.numProbes)  # the calibrated default, not a user setting
    assert loaded.getNumProbes() == model.getNumProbes()
    assert not loaded.isSet(loaded.seed) and loaded.getSeed() == 42


def test_pipeline_model_saves_loads_and_transforms(spark, items, tmp_path):
    scale = SQLTransformer(statement="SELECT id, transform(vector, x -> x * 2) AS vector "
                                     "FROM __THIS__")
    pipeline = Pipeline(stages=[scale, ANNIndex(k=4, numPartitions=2, seed=1, targetRecall=0)])
    fitted = pipeline.fit(items)
    before = fitted.transform(items.limit(30)).orderBy("id").collect()
    path = str(tmp_path / "pipeline")
    fitted.save(path)
    loaded = PipelineModel.load(path)
    assert isinstance(loaded.stages[1], ANNIndexModel)
    after = loaded.transform(items.limit(30)).orderBy("id").collect()
    assert [r.neighbors for r in after] == [r.neighbors for r in before]
    assert all(r.neighbors[0].id == r.id for r in after)
    unfitted = str(tmp_path / "unfitted")
    pipeline.save(unfitted)
    stage = Pipeline.load(unfitted).getStages()[1]
    assert isinstance(stage, ANNIndex) and stage.getK() == 4


def test_docstring_examples_run(spark):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = finder.find(sparkann.estimator, globs={"spark": spark})
    examples = [t for t in tests if t.examples]
    assert examples, "the estimator module has docstring examples"
    for test in examples:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed"


def test_params_are_declared_once_in_mixins():
    from sparkann import params

    for mixin in (params.CommonParams, params.BuildParams, params.HNSWParams, params.PQParams,
                  params.SearchParams):
        assert issubclass(mixin, Params)
        assert issubclass(ANNIndex, mixin) and issubclass(ANNIndexModel, mixin)
