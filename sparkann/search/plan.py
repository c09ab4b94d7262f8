"""What a search needs, decided on the driver without running a Spark job."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..index import SearchKnobs, index_type
from ..loader import CACHE_CONF, DEFAULT_CACHE_BYTES, IndexHandle
from ..storage.format import Manifest
from ..storage.fs import is_local
from ..vectors import vector_column
from .filtered import ItemFilter

STRATEGY_CONF = "spark.sparkann.searchStrategy"
PAYLOAD_READS_CONF = "spark.sparkann.payloadReads"
PAYLOAD_READS = ("auto", "task", "join")
# Stores pyarrow reads in tasks when payloadReads is "auto".
TASK_READ_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")

VEC, ALLOWED, SELF = "__sparkann_vector", "__sparkann_allowed", "__sparkann_self"
MATCH = "__sparkann_match"  # the query's match key (matchCols), cast to the item types
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchPlan:
    handle: IndexHandle
    id_type: str
    dim: int
    vector_col: str
    neighbors_col: str
    k: int
    num_probes: int
    probe_epsilon: float
    knobs: SearchKnobs
    with_vectors: bool  # re-ranking reads exact vectors
    allowed_col: str  # query column of allowed ids ("" = no subsets)
    exclude_self: bool
    id_col: str
    strategy: str
    reads: str  # "task" or "join"
    location_buckets: int
    hard_marks: tuple[float, float] | None = None  # query drift: (gap, far), see .drift
    item_types: tuple = ()  # the index's stored item columns: (name, Spark type)
    item_filter: ItemFilter | None = None  # filter and matchCols (see .filtered)

    @property
    def allowed(self) -> bool:
        return bool(self.allowed_col)

    @property
    def fetch_k(self) -> int:
        """Candidates each partition returns: one more when a row's own id is dropped."""
        return self.k + (1 if self.exclude_self else 0)

    @property
    def arrow_id_type(self) -> pa.DataType:
        return pa.int64() if self.id_type == "long" else pa.string()


def neighbors_field(name: str, id_type: str) -> T.StructField:
    element = T.StructType([
        T.StructField("id", T.LongType() if id_type == "long" else T.StringType()),
        T.StructField("distance", T.FloatType()),
    ])
    return T.StructField(name, T.ArrayType(element, containsNull=False), nullable=False)


def output_schema(queries: DataFrame, plan: SearchPlan) -> T.StructType:
    return T.StructType(list(queries.schema.fields)
                        + [neighbors_field(plan.neighbors_col, plan.id_type)])


def helper_columns(queries: DataFrame, plan: SearchPlan) -> list[Column]:
    """The query vector as array<float>, the allowed ids, the row's own id and its
    match key."""
    id_type = plan.id_type
    allowed = F.lit(None).cast(f"array<{id_type}>")
    if plan.allowed:
        allowed = F.col(plan.allowed_col).cast(f"array<{id_type}>")
    own = F.col(plan.id_col).cast(id_type) if plan.exclude_self else F.lit(None).cast(id_type)
    match = F.lit(None).cast("int")
    spec = plan.item_filter
    if spec is not None and spec.matched:
        match = F.struct(*[F.col(f"`{query}`").cast(spec.key_type(item)).alias(f"m{i}")
                           for i, (item, query)
                           in enumerate(zip(spec.match_items, spec.match_queries))])
    return [vector_column(queries, plan.vector_col).alias(VEC), allowed.alias(ALLOWED),
            own.alias(SELF), match.alias(MATCH)]


def check_query_schema(queries: DataFrame, vector_col: str, neighbors_col: str,
                       allowed_col: str | None, id_col: str | None, id_type: str) -> None:
    """Schema-only checks (no Spark job): columns exist, types fit, no name clash."""
    vector_column(queries, vector_col)
    if neighbors_col in queries.columns:
        raise ValueError(f"neighborsCol={neighbors_col!r} already names a column of the "
                         "queries; choose another output column")
    if allowed_col:
        if allowed_col not in queries.columns:
            raise ValueError(f"allowedIdsCol={allowed_col!r} not found; the DataFrame has "
                             f"columns {queries.columns}")
        dtype = queries.schema[allowed_col].dataType
        if not isinstance(dtype, T.ArrayType):
            raise TypeError(f"allowedIdsCol={allowed_col!r} has type {dtype.simpleString()}; "
                            f"expected array<{id_type}>")
    if id_col is not None and id_col not in queries.columns:
        raise ValueError(f"excludeSelf needs the id column {id_col!r} in the queries; they "
                         f"have columns {queries.columns}")


def payload_reads(spark, manifest: Manifest) -> str:
    """"task" when tasks read index files themselves, "join" when Spark reads them."""
    mode = spark.conf.get(PAYLOAD_READS_CONF, None) or "auto"
    if mode not in PAYLOAD_READS:
        raise ValueError(f"{PAYLOAD_READS_CONF}={mode!r}: expected one of {PAYLOAD_READS}")
    if mode != "auto":
        return mode
    root = manifest.root
    scheme = root.split(":", 1)[0].lower() if ":" in root else ""
    return "task" if is_local(root) or scheme in TASK_READ_SCHEMES else "join"


def cache_bytes(spark) -> int:
    value = spark.conf.get(CACHE_CONF, None)
    return int(value) if value else DEFAULT_CACHE_BYTES


def memory_needed(manifest: Manifest, with_vectors: bool) -> int:
    """Bytes a worker holds with the whole index loaded: the index type's loaded bytes
    for its stored bytes (see ``PartitionIndex.loaded_bytes``), and the exact vectors."""
    vectors = manifest.num_vectors * manifest.dim * 4 if with_vectors else 0
    loaded = index_type(manifest.index_type).loaded_bytes(
        manifest.index_bytes, sum(1 for f in manifest.partitions.files if f),
        manifest.params, manifest.dim)
    return int(loaded + vectors)


def choose_strategy(spark, manifest: Manifest, requested: str, reads: str,
                    with_vectors: bool) -> str:
    """"local" (each task searches its own rows) or "partition" (rows meet their
    partitions), from the param, else the Spark setting, else the index size."""
    from ..params import STRATEGIES  # on the driver only: it imports pyspark.ml

    mode = requested if requested != "auto" else (spark.conf.get(STRATEGY_CONF, None) or "auto")
    if mode not in STRATEGIES:
        raise ValueError(f"searchStrategy={mode!r} is not supported; choose one of "
                         f"{list(STRATEGIES)}")
    if mode == "local" and reads == "join":
        raise ValueError(f"searchStrategy='local' needs tasks that read the index files; "
                         f"{PAYLOAD_READS_CONF} is 'join' for {manifest.root}")
    if mode != "auto":
        return mode
    if reads == "join":
        return "partition"
    needed, budget = memory_needed(manifest, with_vectors), cache_bytes(spark)
    chosen = "local" if needed <= budget else "partition"
    log.info("sparkann: search strategy %s (index needs %.0f MB per worker, cache holds "
             "%.0f MB)", chosen, needed / 1e6, budget / 1e6)
    return chosen
