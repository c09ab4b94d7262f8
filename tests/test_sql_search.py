"""The SQL table function: ``sparkann.sql.register(spark)``, then
``SELECT * FROM sparkann_search(TABLE(queries), path, k, filter)``.

Its rows must be what ``nearestJoin`` gives with the same index and filter; bad calls
fail at analysis, naming the problem. (Through Spark Connect: ``connect_checks.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest

import sparkann.sql
from sparkann import ANNIndex, datasets

ROWS, DIM = 1500, 8


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory):
    vectors = datasets.clustered(ROWS + 30, DIM, seed=13)
    rows = [(i, vectors[i].tolist(), f"c{i % 4}", i % 9) for i in range(ROWS)]
    items = spark.createDataFrame(rows, "id long, vector array<float>, color string, size int")
    path = str(tmp_path_factory.mktemp("sql") / "index")
    model = ANNIndex(numPartitions=3, targetRecall=0, k=5, itemCols=["color", "size"], seed=1,
                     indexPath=path).fit(items)
    queries = spark.createDataFrame(
        [(q, vectors[ROWS + q].tolist(), f"note{q}") for q in range(30)],
        "qid long, vector array<float>, note string")
    queries.createOrReplaceTempView("sql_queries")
    sparkann.sql.register(spark)
    return model, path, queries


def keyed(rows) -> set:
    return {(r.qid, r.id, r.rank, r.color, r.size, round(r.distance, 5)) for r in rows}


def test_sql_search_gives_the_join_rows(spark, indexed):
    model, path, queries = indexed
    rows = spark.sql(f"""SELECT * FROM sparkann_search(TABLE(sql_queries), '{path}', 5,
                                                       "color = 'c1' AND size > 2")""").collect()
    searcher = model.copy().setK(5).setFilter("color = 'c1' AND size > 2")
    expected = searcher.nearestJoin(queries).collect()
    assert rows and keyed(rows) == keyed(expected)
    assert all(r.color == "c1" and r.size > 2 for r in rows)
    assert {r.note for r in rows} == {f"note{r.qid}" for r in rows}
    assert list(rows[0].asDict()) == ["qid", "vector", "note", "id", "color", "size",
                                      "distance", "rank"]


def test_named_arguments_without_a_filter_and_a_prefix(spark, indexed):
    model, path, queries = indexed
    rows = spark.sql(f"""SELECT * FROM sparkann_search(queries => TABLE(sql_queries),
                         path => '{path}', k => 3, prefix => 'n_')""").collect()
    searcher = model.copy().setFilter(None).setK(3)
    expected = searcher.nearestJoin(queries, itemPrefix="n_").collect()
    assert len(rows) == 90
    assert ({(r.qid, r.n_id, r.rank) for r in rows}
            == {(r.qid, r.n_id, r.rank) for r in expected})
    assert np.all([r.n_color == f"c{r.n_id % 4}" for r in rows])


@pytest.mark.parametrize("call, message", [
    ("sparkann_search(TABLE(sql_queries), '{missing}', 5)", "no sparkann index"),
    ("sparkann_search(TABLE(sql_queries), '{path}', 5, 'weight < 3')", "weight"),
    ("sparkann_search(TABLE(sql_queries), '{path}', 5, '', 'note')", "note"),
    ("sparkann_search(TABLE(SELECT qid, vector, 1 AS size FROM sql_queries), '{path}', 5)",
     "prefix"),
])
def test_bad_calls_fail_at_analysis(spark, indexed, tmp_path, call, message):
    _, path, _ = indexed
    sql = "SELECT * FROM " + call.format(path=path, missing=str(tmp_path / "none"))
    with pytest.raises(Exception, match=message):
        spark.sql(sql).collect()
