"""Item columns stored with the index, and the nearest-neighbour join.

An index fitted with ``itemCols`` keeps those columns beside each vector; every
version that add, delete, compact, rebalance or a save-as-copy makes keeps them, and
``nearestJoin`` returns one row per (query row, neighbour) carrying them. Every value
the join returns is checked against the rows the index was given.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from sparkann import ANNIndex, ANNIndexModel, datasets
from sparkann.storage import IndexFormatError
from sparkann.storage import items as stored_items

ROWS, DIM, K = 900, 8, 4
SCHEMA = ("id long, vector array<float>, category string, price double, stock int, "
          "fresh boolean, day date")


def item_values(i: int) -> tuple:
    """The item columns of row ``i`` (a null category now and then)."""
    category = None if i % 11 == 0 else f"c{i % 7}"
    return (category, i / 4, i % 13, i % 3 == 0, datetime.date(2026, 1, 1 + i % 28))


def frame(spark, vectors: np.ndarray, first: int = 0):
    rows = [(first + i, v.tolist(), *item_values(first + i)) for i, v in enumerate(vectors)]
    return spark.createDataFrame(rows, SCHEMA)


ITEM_COLS = ["category", "price", "stock", "fresh", "day"]


@pytest.fixture(scope="module")
def vectors():
    return datasets.clustered(ROWS + 60, DIM, seed=31)


@pytest.fixture(scope="module")
def fitted(spark, vectors, tmp_path_factory):
    root = tmp_path_factory.mktemp("items")
    return ANNIndex(numPartitions=4, k=K, itemCols=ITEM_COLS, seed=2, targetRecall=0,
                    indexPath=str(root / "index")).fit(frame(spark, vectors[:ROWS]))


def queries(spark, vectors, count=40):
    return spark.createDataFrame([(i, vectors[i].tolist(), f"q{i}") for i in range(count)],
                                 "qid long, vector array<float>, note string")


def joined(model, query_frame, **options) -> list:
    return [r.asDict() for r in model.nearestJoin(query_frame, **options).collect()]


def check_rows_match_items(rows: list, model, query_frame, prefix: str = "") -> None:
    """Each join row: the query's own columns, a neighbour of the model's search, ranked
    as it ranks them, with the neighbour's stored item values."""
    searched = {r.qid: [(n.id, n.distance) for n in r.neighbors]
                for r in model.transform(query_frame).collect()}
    notes = {r.qid: r.note for r in query_frame.collect()}
    by_query: dict = {}
    for row in rows:
        by_query.setdefault(row["qid"], []).append(row)
        assert row["note"] == notes[row["qid"]]
        item = row[f"{prefix}id"]
        assert tuple(row[f"{prefix}{c}"] for c in ITEM_COLS) == item_values(item), row
    for qid, found in by_query.items():
        found.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in found] == list(range(1, len(found) + 1))
        assert [(r[f"{prefix}id"], r["distance"]) for r in found] == searched[qid]
    assert set(by_query) == set(searched)


def test_the_join_gives_each_neighbour_with_its_item_columns(spark, fitted, vectors):
    assert fitted.manifest.item_types == [("category", "string"), ("price", "double"),
                                          ("stock", "int"), ("fresh", "boolean"),
                                          ("day", "date")]
    q = queries(spark, vectors)
    out = fitted.nearestJoin(q)
    assert out.columns == ["qid", "vector", "note", "id", *ITEM_COLS, "distance", "rank"]
    rows = [r.asDict() for r in out.collect()]
    assert len(rows) == 40 * K
    check_rows_match_items(rows, fitted, q)
    assert all(r["id"] == r["qid"] for r in rows if r["rank"] == 1)  # indexed rows: itself


def test_partition_strategy_and_a_prefix(spark, fitted, vectors):
    q = queries(spark, vectors).withColumn("category", F.lit("mine"))
    model = fitted.copy().setSearchStrategy("partition")
    with pytest.raises(ValueError, match=r"already have the column\(s\) \['category'\]"):
        model.nearestJoin(q)
    rows = joined(model, q, itemPrefix="item_")
    assert {r["category"] for r in rows} == {"mine"}
    check_rows_match_items(rows, model, q.drop("category"), prefix="item_")
    spark.conf.set("spark.sparkann.payloadReads", "join")  # Spark reads the partitions
    try:
        assert sorted(joined(model, q, itemPrefix="item_"), key=str) == sorted(rows, key=str)
    finally:
        spark.conf.unset("spark.sparkann.payloadReads")


def test_inner_and_left_joins_of_queries_without_neighbours(spark, fitted, vectors):
    q = queries(spark, vectors, 6).withColumn(
        "allowed", F.when(F.col("qid") < 3, F.array(F.lit(10_000))).otherwise(
            F.array(F.col("qid"), F.col("qid") + 1)))
    model = fitted.copy().setAllowedIdsCol("allowed")
    inner = joined(model, q)
    assert sorted((r["qid"], r["id"]) for r in inner) == [(3, 3), (3, 4), (4, 4), (4, 5),
                                                         (5, 5), (5, 6)]
    left = joined(model, q, how="left")
    empty = [r for r in left if r["qid"] < 3]
    assert len(empty) == 3 and len(left) == 9
    assert all(r[c] is None for r in empty for c in ["id", *ITEM_COLS, "distance", "rank"])
    assert sorted((r["qid"], r["id"]) for r in left if r["qid"] >= 3) == sorted(
        (r["qid"], r["id"]) for r in inner)
    with pytest.raises(ValueError, match="how='outer' must be one of inner, left"):
        model.nearestJoin(q, how="outer")


def test_item_columns_survive_updates_and_a_saved_copy(spark, fitted, vectors, tmp_path):
    q = queries(spark, vectors)
    fitted.write().save(str(tmp_path / "work"))  # updates advance a copy of their own
    added = ANNIndexModel.load(str(tmp_path / "work")).add(
        frame(spark, vectors[ROWS:], first=ROWS))
    deleted = added.delete(list(range(0, 40, 2)))
    compacted = deleted.compact(0.0)
    rebalanced = compacted.rebalance(maxDrift=0.0)
    compacted.write().save(str(tmp_path / "copy"))
    copied = ANNIndexModel.load(str(tmp_path / "copy"))
    for model in (added, deleted, compacted, rebalanced, copied):
        assert model.manifest.item_types == fitted.manifest.item_types
        rows = joined(model, q)
        check_rows_match_items(rows, model, q)
    assert {r["id"] for r in joined(added, queries(spark, vectors[ROWS:], 60))} & set(
        range(ROWS, ROWS + 60))
    assert not {r["id"] for r in joined(deleted, q)} & set(range(0, 40, 2))


def test_a_join_on_a_stream_answers_like_a_batch(spark, fitted, vectors, tmp_path):
    source = str(tmp_path / "queries")
    q = queries(spark, vectors, 30)
    q.write.parquet(source)
    stream = spark.readStream.schema(q.schema).parquet(source)
    name = "sparkann_items_join"
    running = (fitted.nearestJoin(stream).writeStream.format("memory").queryName(name)
               .trigger(availableNow=True).start())
    try:
        running.awaitTermination(300)
    finally:
        running.stop()
    streamed = sorted((r.qid, r.rank, r.id, r.category) for r in spark.table(name).collect())
    batch = sorted((r.qid, r.rank, r.id, r.category) for r in fitted.nearestJoin(q).collect())
    assert streamed == batch and len(batch) == 30 * K


def test_a_join_without_item_columns(spark, vectors):
    model = ANNIndex(numPartitions=2, k=3, targetRecall=0).fit(frame(spark, vectors[:300]))
    out = model.nearestJoin(queries(spark, vectors, 5).withColumnRenamed("qid", "id"),
                            itemPrefix="n_")
    assert out.columns == ["id", "vector", "note", "n_id", "distance", "rank"]
    assert sorted(r.id for r in out.where("rank = 1").collect()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"already have the column\(s\) \['id'\]"):
        model.nearestJoin(queries(spark, vectors, 5).withColumnRenamed("qid", "id"))


@pytest.mark.parametrize("options, message", [
    ({"itemCols": ["missing"]}, "itemCols: column 'missing' is not in the input"),
    ({"itemCols": ["tags"]}, "itemCols: column 'tags' has type array<string>"),
    ({"itemCols": ["vector"]}, "itemCols: column 'vector' clashes with a column the index uses"),
    ({"itemCols": ["partition_id"]}, "itemCols: column 'partition_id' clashes with a column"),
    ({"itemCols": ["category"], "allowDuplicateIds": True}, "allowDuplicateIds=True"),
])
def test_item_columns_that_cannot_be_stored_are_refused(spark, vectors, tmp_path, options,
                                                        message):
    rows = frame(spark, vectors[:50]).withColumn("tags", F.array(F.col("category"))) \
        .withColumn("partition_id", F.lit(1))
    with pytest.raises(ValueError, match=message):
        ANNIndex(numPartitions=2, targetRecall=0, indexPath=str(tmp_path / "x"),
                 **options).fit(rows)
    assert not os.path.exists(tmp_path / "x" / "manifests")


def test_itemcols_names_distinct_columns():
    with pytest.raises(ValueError, match="itemCols must name distinct columns"):
        ANNIndex(itemCols=["a", "a"])


def test_an_add_must_bring_the_stored_item_types(spark, fitted, vectors):
    rows = frame(spark, vectors[ROWS:ROWS + 5], first=50_000)
    with pytest.raises(ValueError, match="column 'stock' has type bigint; the index stores it "
                                         "as int"):
        fitted.add(rows.withColumn("stock", F.col("stock").cast("long")))
    with pytest.raises(ValueError, match="itemCols: column 'price' is not in the input"):
        fitted.add(rows.drop("price"))


def _partition_file(model) -> str:
    return os.path.join(model.manifest.root, model.manifest.partitions.files[0])


def test_changed_item_values_are_refused(spark, vectors, tmp_path):
    model = ANNIndex(numPartitions=2, targetRecall=0, itemCols=["category", "price"],
                     indexPath=str(tmp_path / "index")).fit(frame(spark, vectors[:200]))
    path = _partition_file(model)
    table = pq.read_table(path)
    value = table.column("items").combine_chunks()
    prices = value.field("price")
    changed = pa.ListArray.from_arrays(prices.offsets, pa.array(
        np.asarray(prices.values.to_numpy(zero_copy_only=False)) + 1.0))
    table = table.set_column(table.column_names.index("items"), "items",
                             pa.StructArray.from_arrays([value.field("category"), changed],
                                                        ["category", "price"]))
    pq.write_table(table, path)
    q = queries(spark, vectors, 5)
    with pytest.raises(Exception, match="item columns do not match their checksum"):
        model.nearestJoin(q).collect()
    assert len(model.transform(q).collect()) == 5  # searching reads no item column


def test_a_calibrated_fit_keeps_item_columns_with_their_rows(spark, vectors, tmp_path):
    """Calibration holds rows out of each partition and adds them last: their item
    columns move with them."""
    rows = frame(spark, vectors[:300])
    # the input out of shuffles: vectors joined with their items, repartitioned
    shuffled = rows.select("id", "vector").repartition(3).join(
        rows.drop("vector").repartition(2), "id")
    model = ANNIndex(numPartitions=2, k=K, itemCols=ITEM_COLS,
                     indexPath=str(tmp_path / "index")).fit(shuffled)
    assert model.summary()["calibration"]  # the held-out rows were searched
    q = queries(spark, vectors, 20)
    check_rows_match_items(joined(model, q.repartition(4)), model, q)


def test_a_manifest_whose_item_types_disagree_is_refused(spark, vectors, tmp_path):
    model = ANNIndex(numPartitions=2, targetRecall=0, itemCols=["category", "price"],
                     indexPath=str(tmp_path / "index")).fit(frame(spark, vectors[:200]))
    path = os.path.join(model.manifest.root, "manifests", "v00000001.json")
    doc = json.loads(open(path).read())
    for types, message in (([["price", "double"]], "other item columns in itemTypes"),
                           ([["category", "string"], ["price", "map"]], "unsupported type"),
                           ([["category", "string"], ["category", "string"]], "names a column "
                                                                                "twice")):
        with open(path, "w") as handle:
            json.dump({**doc, "itemTypes": types}, handle)
        with pytest.raises(IndexFormatError, match=message):
            ANNIndexModel.load(model.manifest.root)


# ------------------------------------------------ the stored form, without Spark


def test_stored_items_round_trip_and_digest():
    table = pa.table({"category": pa.array(["a", None, "c"]), "price": pa.array([1.0, 2.5, None]),
                      "day": pa.array([datetime.date(2026, 1, 1)] * 3, pa.date32())})
    types = [("category", "string"), ("price", "double"), ("day", "date")]
    value = stored_items.stored_items(table, types)
    back = stored_items.items_table(value, types, 3, 0)
    assert back.equals(table)
    digest = stored_items.items_digest(back)
    assert digest == stored_items.items_digest(table)
    for changed in (table.set_column(1, "price", pa.array([1.0, 2.5, 0.0])),
                    table.set_column(0, "category", pa.array(["a", "", "c"])),
                    table.rename_columns(["category", "cost", "day"])):
        assert stored_items.items_digest(changed) != digest
    with pytest.raises(IndexFormatError, match="holds 3 values for 4 ids"):
        stored_items.items_table(value, types, 4, 7)
    with pytest.raises(IndexFormatError, match="the manifest says"):
        stored_items.items_table(value, types[:2], 3, 7)
