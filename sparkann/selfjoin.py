"""kNN self-join: the k-nearest-neighbour graph of a collection."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def knn_graph(model, items: DataFrame) -> DataFrame:
    """Edges ``(id, neighbor_id, distance, rank)`` from each row of ``items`` to its
    ``k`` nearest other rows in ``model``'s index (rank 1 is the nearest).

    ``items`` is searched like any query set (either search strategy); nothing is
    collected on the driver, and rows may come out of any shuffle.
    """
    id_col, out = model.getIdCol(), model.getNeighborsCol()
    searched = model.copy({model.excludeSelf: True}).transform(items)
    edges = searched.select(F.col(id_col).alias("id"), F.posexplode(out).alias("pos", "n"))
    return edges.select(
        "id",
        F.col("n.id").alias("neighbor_id"),
        F.col("n.distance").alias("distance"),
        (F.col("pos") + 1).alias("rank"),
    )
