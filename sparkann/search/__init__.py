"""Search: plan on the driver (no Spark job), then one of two strategies.

* :mod:`.local` -- each task searches its own query rows against the whole
  index in its worker cache (like a broadcast join).
* :mod:`.partition` -- query rows meet their partitions (like a shuffle join).

Both are lazy plans (an Arrow UDF; ``mapInArrow`` and repartitions): they work on streaming
DataFrames, query checks run inside the tasks, and no answer depends on the
order in which Spark computes the query DataFrame.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import arrow_udf

from ..loader import IndexHandle
from ..storage.format import Manifest
from ..storage.fs import join
from ..tasks import threads_per_task
from ..vectors import vector_column
from . import drift
from .local import WATCHED_FLAGS, WATCHED_NEIGHBORS, local_search_fn
from .partition import partition_side
from .plan import (
    PAYLOAD_READS_CONF,
    STRATEGY_CONF,
    SearchPlan,
    check_query_schema,
    choose_strategy,
    helper_columns,
    memory_needed,
    neighbors_field,
    payload_reads,
)

log = logging.getLogger(__name__)

WATCHED_COL = "__sparkann_answer"  # the local search's answer with the drift flags

__all__ = ["PAYLOAD_READS_CONF", "STRATEGY_CONF", "SearchPlan", "run_search",
           "check_query_schema", "choose_strategy", "payload_reads"]


def run_search(queries: DataFrame, manifest: Manifest, plan: SearchPlan,
               observation: Observation | None = None) -> DataFrame:
    """``queries`` with the plan's neighbours column added (best first). With the
    plan's ``hard_marks``, the queries' drift is counted as they pass (see
    :func:`.drift.counted`)."""
    if plan.strategy == "local":
        return local_side(queries, plan, observation)
    if plan.hard_marks is not None:
        queries = drift.observed(queries, vector_column(queries, plan.vector_col), plan.handle,
                                 plan.dim, plan.vector_col, plan.hard_marks, observation)
    files: tuple = ()
    if plan.reads == "join":
        root = manifest.root
        files = (root, tuple(manifest.partitions.files),
                 tuple(join(root, d.file) for ds in manifest.partitions.deletes for d in ds))
    return partition_side(queries, helper_columns(queries, plan), plan,
                          memory_needed(manifest, plan.with_vectors), manifest.num_partitions,
                          files)


def local_side(queries: DataFrame, plan: SearchPlan,
               observation: Observation | None) -> DataFrame:
    """The query-local plan: one UDF call per batch of query rows, which also flags
    their drift when the plan watches it (no pass of its own over the queries)."""
    threads = threads_per_task(queries.sparkSession, plan.knobs.threads, 1 << 30)
    answer: T.DataType = neighbors_field(plan.neighbors_col, plan.id_type).dataType
    if plan.hard_marks is not None:
        answer = T.StructType([T.StructField(WATCHED_NEIGHBORS, answer, nullable=False),
                               T.StructField(WATCHED_FLAGS, T.ByteType())])
    # an iterator UDF, as the function's type hints say (the stubs ask for functionType,
    # which pyspark deprecates in favour of the hints)
    search = arrow_udf(local_search_fn(plan, threads), answer)  # type: ignore[call-overload]
    helpers = helper_columns(queries, plan)
    if plan.hard_marks is None:
        return queries.withColumn(plan.neighbors_col, search(*helpers))
    watched = drift.counted(queries.withColumn(WATCHED_COL, search(*helpers)),
                            F.col(WATCHED_COL)[WATCHED_FLAGS].cast("int"), observation)
    return watched.withColumn(plan.neighbors_col, F.col(WATCHED_COL)[WATCHED_NEIGHBORS]).drop(
        WATCHED_COL)


def handle_for(manifest: Manifest, manifest_sha: str) -> IndexHandle:
    """The task handle of a version: tasks read its manifest and meta file themselves,
    checked against their SHA-256."""
    return IndexHandle(manifest.root, manifest.version, manifest_sha)
