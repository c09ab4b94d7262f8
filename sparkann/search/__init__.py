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

from pyspark.sql import DataFrame
from pyspark.sql.functions import arrow_udf

from ..loader import IndexHandle
from ..storage.format import Manifest
from ..storage.fs import join
from ..tasks import threads_per_task
from .local import local_search_fn
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

__all__ = ["PAYLOAD_READS_CONF", "STRATEGY_CONF", "SearchPlan", "run_search",
           "check_query_schema", "choose_strategy", "payload_reads"]


def run_search(queries: DataFrame, manifest: Manifest, plan: SearchPlan) -> DataFrame:
    """``queries`` with the plan's neighbours column added (best first)."""
    helpers = helper_columns(queries, plan)
    if plan.strategy == "local":
        threads = threads_per_task(queries.sparkSession, plan.knobs.threads, 1 << 30)
        field = neighbors_field(plan.neighbors_col, plan.id_type)
        # an iterator UDF, as the function's type hints say (the stubs ask for functionType,
        # which pyspark deprecates in favour of the hints)
        search = arrow_udf(local_search_fn(plan, threads), field.dataType)  # type: ignore[call-overload]
        return queries.withColumn(plan.neighbors_col, search(*helpers))
    files: tuple = ()
    if plan.reads == "join":
        root = manifest.root
        files = (tuple(join(root, f) for f in manifest.partitions.files if f),
                 tuple(join(root, d.file) for ds in manifest.partitions.deletes for d in ds))
    return partition_side(queries, helpers, plan, memory_needed(manifest, plan.with_vectors),
                          manifest.num_partitions, files)


def handle_for(manifest: Manifest, manifest_sha: str) -> IndexHandle:
    """The task handle of a version: tasks read its manifest and meta file themselves,
    checked against their SHA-256."""
    return IndexHandle(manifest.root, manifest.version, manifest_sha)
