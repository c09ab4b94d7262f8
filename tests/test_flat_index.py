"""The flat index type end to end through the estimator: an index type that only
registered itself is built, calibrated, searched, updated, saved and loaded."""

from __future__ import annotations

import numpy as np
from conftest import neighbor_ids, vectors_frame

from sparkann import ANNIndex, ANNIndexModel, datasets, exact


def test_a_flat_index_lives_through_the_estimator(spark, tmp_path):
    base = datasets.clustered(1500, 16, seed=31)
    queries = datasets.clustered(60, 16, seed=31, sample_seed=32)
    ids = np.arange(len(base))
    qdf = vectors_frame(spark, queries, id_name="qid")
    model = ANNIndex(indexType="flat", numPartitions=4, k=5, targetRecall=0.9,
                     indexPath=str(tmp_path / "flat")).fit(
        vectors_frame(spark, base[:1200], ids[:1200]))
    summary = model.summary()
    assert summary["indexType"] == "flat" and summary["numVectors"] == 1200
    assert set(summary["searchDefaults"]) == {"numProbes", "probeEpsilon"}
    assert model.manifest.build_spec["numPartitions"] == 4
    every = model.copy().setNumProbes(4)  # every partition probed: exact answers
    found = neighbor_ids(every.transform(qdf).collect(), key="qid")
    np.testing.assert_array_equal(found, exact.knn(base[:1200], queries, 5)[0])

    grown = model.add(vectors_frame(spark, base[1200:], ids[1200:])).delete([0, 1, 2])
    found = neighbor_ids(grown.copy().setNumProbes(4).transform(qdf).collect(), key="qid")
    live = np.arange(3, len(base))
    np.testing.assert_array_equal(found, live[exact.knn(base[live], queries, 5)[0]])

    grown.write().overwrite().save(str(tmp_path / "flat"))
    loaded = ANNIndexModel.load(str(tmp_path / "flat"))
    assert loaded.manifest.index_type == "flat" and loaded.summary()["numVectors"] == 1497
    again = neighbor_ids(loaded.copy().setNumProbes(4).transform(qdf).collect(), key="qid")
    np.testing.assert_array_equal(again, found)
