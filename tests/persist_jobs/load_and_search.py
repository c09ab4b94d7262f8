"""Load a saved index and a saved PipelineModel in a new process and search with them.

Usage: python load_and_search.py MODEL PIPELINE QUERIES_PARQUET

Prints one JSON document: each one's searchSettings(), which params are set, and the
neighbour ids of every query (ordered by query id).
"""

from __future__ import annotations

import json
import sys

from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from sparkann import ANNIndexModel


def neighbours(frame) -> list:
    rows = frame.select("id", "neighbors").orderBy("id").collect()
    return [[n.id for n in row.neighbors] for row in rows]


def main(model_path: str, pipeline_path: str, queries_path: str) -> None:
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    queries = spark.read.parquet(queries_path)
    model = ANNIndexModel.load(model_path)
    pipeline = PipelineModel.load(pipeline_path)
    stage = pipeline.stages[-1]
    print(json.dumps({
        "settings": model.searchSettings(),
        "set": sorted(p.name for p in model.params if model.isSet(p)),
        "neighbors": neighbours(model.transform(queries)),
        "pipelineSettings": stage.searchSettings(),
        "pipelineNeighbors": neighbours(pipeline.transform(queries)),
    }))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
