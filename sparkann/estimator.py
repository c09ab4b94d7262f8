"""``ANNIndex`` (an Estimator) and ``ANNIndexModel``: orchestration only."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from dataclasses import replace

from pyspark import keyword_only
from pyspark.ml.base import Estimator, Model
from pyspark.ml.util import MLReadable, MLReader, MLWritable, MLWriter
from pyspark.sql import DataFrame, SparkSession

from . import partitioner, storage, update
from .build import BuildSettings, balance, build_index
from .observe import job_label
from .params import ANNParams
from .partitions import PQSettings
from .search import PAYLOAD_READS_CONF, SearchSettings, search
from .tasks import injected_failures

log = logging.getLogger(__name__)
WORK_DIR_CONF = "spark.sparkann.workDir"
# Routed query sets estimated above this many bytes are shuffle-joined, not broadcast.
BROADCAST_CONF = "spark.sparkann.broadcastQueryBytes"
DEFAULT_MIN_EF = 64


class ANNIndex(Estimator, ANNParams):
    """Approximate nearest-neighbour index: IVF partitions, one HNSW graph each.

    ``fit`` trains coarse centroids on a sample, routes every vector to its
    nearest centroid, builds one HNSW graph per partition inside Spark tasks and
    stores them as a versioned index directory (``indexPath``, or a temporary
    directory). The returned :class:`ANNIndexModel` searches query DataFrames.

    Examples
    --------
    >>> index = ANNIndex(vectorCol="embedding", metric="cosine", k=5)  # doctest: +SKIP
    >>> model = index.fit(items)                                        # doctest: +SKIP
    >>> model.transform(queries).select("id", "neighbors").show()       # doctest: +SKIP
    >>> model.save("s3://bucket/indexes/items")                         # doctest: +SKIP
    """

    @keyword_only
    def __init__(
        self,
        *,
        vectorCol="vector",
        idCol="id",
        metric="l2",
        indexType="hnsw",
        numPartitions=0,
        hnswM=16,
        efConstruction=200,
        sampleSize=0,
        maxPartitionRows=0,
        seed=42,
        numThreads=0,
        deterministic=False,
        allowDuplicateIds=False,
        indexPath="",
        k=10,
        numProbes=0,
        probeEpsilon=0.0,
        efSearch=0,
        neighborsCol="neighbors",
        queryBatchRows=20_000,
        pqSubvectors=16,
        pqBits=8,
        pqCodebook="partition",
        rerankK=0,
        allowedIdsCol="",
        excludeSelf=False,
    ):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        """Set any of the constructor's keyword parameters."""
        self._set(**kwargs)
        return self

    def _fit(self, dataset: DataFrame) -> "ANNIndexModel":
        self.validate()
        values = self.param_values()
        root = values["indexPath"] or _work_dir(dataset.sparkSession)
        manifest = build_index(dataset, _build_settings(self, dataset.sparkSession), root, values)
        return _resolve_probes(self._copyValues(ANNIndexModel(manifest)))


def _build_settings(params: ANNParams, spark) -> BuildSettings:
    """Build settings from an estimator's or a model's params."""
    values = params.param_values()
    return BuildSettings(
        vector_col=values["vectorCol"],
        id_col=values["idCol"],
        metric=values["metric"],
        num_clusters=values["numPartitions"] or None,
        hnsw_m=values["hnswM"],
        ef_construction=values["efConstruction"],
        sample_size=values["sampleSize"] or None,
        max_partition_rows=values["maxPartitionRows"] or None,
        seed=values["seed"],
        num_threads=values["numThreads"],
        deterministic=values["deterministic"],
        fail_first_attempt=injected_failures(spark),
        index_type=values["indexType"],
        allow_duplicate_ids=values["allowDuplicateIds"],
        pq=PQSettings(
            subvectors=values["pqSubvectors"],
            nbits=values["pqBits"],
            codebook=values["pqCodebook"],
            rerank_k=values["rerankK"],
        ),
    )


class ANNIndexModel(Model, ANNParams, MLReadable, MLWritable):
    """A built index; ``transform`` adds the ``k`` nearest neighbours of each query row.

    The output column (``neighborsCol``) is ``array<struct<id, distance: float>>``,
    best first, with ``min(k, numVectors)`` entries. Distances: Euclidean for
    ``l2``, ``1 - cosine similarity`` for ``cosine``, negative inner product for
    ``ip`` (smaller is better for all three).
    """

    def __init__(self, manifest: storage.Manifest | None = None):
        super().__init__()
        self._manifest = manifest

    @property
    def manifest(self) -> storage.Manifest:
        if self._manifest is None:
            raise ValueError("this ANNIndexModel holds no index; use fit() or load()")
        return self._manifest

    def copy(self, extra=None) -> "ANNIndexModel":
        copied = super().copy(extra)
        copied._manifest = self._manifest
        return copied

    def _transform(self, dataset: DataFrame) -> DataFrame:
        settings = self._search_settings()
        if settings.exclude_self_col and settings.exclude_self_col not in dataset.columns:
            raise ValueError(
                f"excludeSelf needs the id column {settings.exclude_self_col!r} in the queries; "
                f"they have columns {dataset.columns}"
            )
        limit = dataset.sparkSession.conf.get(BROADCAST_CONF, None)
        if limit:
            settings = replace(settings, broadcast_bytes=int(limit))
        reads = dataset.sparkSession.conf.get(PAYLOAD_READS_CONF, None)
        if reads:
            settings = replace(settings, payload_reads=reads)
        settings = replace(settings, fail_first_attempt=injected_failures(dataset.sparkSession))
        with job_label(dataset.sparkSession, "sparkann: search"):  # its eager jobs
            return search(dataset, self.manifest, settings)

    def _search_settings(self) -> SearchSettings:
        self.validate()
        values = self.param_values()
        num_clusters = len(self.manifest.centroids)
        probes = values["numProbes"]
        if probes < 1:
            raise ValueError(f"numProbes={probes} is out of range: must be >= 1")
        if probes > num_clusters:
            raise ValueError(
                f"numProbes={probes} is larger than the number of partitions ({num_clusters})"
            )
        return SearchSettings(
            vector_col=values["vectorCol"],
            neighbors_col=values["neighborsCol"],
            k=values["k"] + (1 if values["excludeSelf"] else 0),
            num_probes=probes,
            probe_epsilon=values["probeEpsilon"],
            ef_search=values["efSearch"] or max(DEFAULT_MIN_EF, values["k"]),
            query_batch_rows=values["queryBatchRows"],
            num_threads=values["numThreads"],
            rerank_k=values["rerankK"] if self.manifest.params.get("indexType") == "pq" else 0,
            allowed_ids_col=values["allowedIdsCol"],
            exclude_self_col=values["idCol"] if values["excludeSelf"] else "",
        )

    def summary(self) -> dict:
        """Size, layout and build timings of the index."""
        m = self.manifest
        sizes = m.live_rows
        current = balance(sizes)
        extra = {}
        if m.params.get("indexType") == "pq":
            extra["pqReconstructionRMSE"] = (m.squared_error / sum(m.partition_rows)) ** 0.5
        return {
            **extra,
            "numVectors": m.num_vectors,
            "dim": m.dim,
            "metric": m.metric,
            "indexType": m.params.get("indexType", "hnsw"),
            "numPartitions": len(m.centroids),
            "numShards": len(sizes),
            "partitionSizes": list(sizes),
            "balance": current,
            "drift": current / m.params.get("balanceAtBuild", current),
            "deletedRows": sum(m.deleted_counts),
            "buildSeconds": dict(m.build_seconds),
            "indexBytes": m.index_bytes,
            "bytesPerVector": m.index_bytes / m.num_vectors,
            "path": m.root,
            "version": m.version,
        }

    def add(self, df: DataFrame) -> "ANNIndexModel":
        """A new version that also holds ``df``'s rows (routed to the existing centroids).

        Only the partitions the new rows reach are rewritten; the new version is
        published next to this one, which stays loadable.
        """
        manifest = update.add_rows(self.manifest, df, _build_settings(self, df.sparkSession))
        return self._with(manifest)

    def delete(self, ids) -> "ANNIndexModel":
        """A new version whose answers never contain ``ids`` (a list, or a DataFrame
        whose first column holds ids)."""
        spark = storage.active_session()
        if not isinstance(ids, DataFrame):
            ids = spark.createDataFrame([(i,) for i in ids], f"id {self.manifest.id_type}")
        return self._with(update.delete_ids(self.manifest, ids))

    def compact(self, minDeletedShare: float = 0.2) -> "ANNIndexModel":
        """Rebuild the partitions in which at least ``minDeletedShare`` of rows are deleted."""
        spark = storage.active_session()
        settings = _build_settings(self, spark)
        return self._with(update.compact(self.manifest, minDeletedShare, settings))

    def rebalance(self, maxDrift: float = 1.5) -> "ANNIndexModel":
        """Retrain centroids and rebuild when ``summary()["drift"]`` exceeds ``maxDrift``."""
        if self.summary()["drift"] <= maxDrift:
            return self
        spark = storage.active_session()
        rows = update.live_rows(self.manifest, spark)
        values = {**self.param_values(), "vectorCol": "vector", "idCol": "id"}
        settings = replace(_build_settings(self, spark), vector_col="vector", id_col="id",
                           num_clusters=len(self.manifest.centroids))
        return self._with(build_index(rows, settings, self.manifest.root, values))

    def _with(self, manifest: storage.Manifest) -> "ANNIndexModel":
        model = self.copy()
        model._manifest = manifest
        return model

    def write(self) -> "IndexWriter":
        return IndexWriter(self)

    @classmethod
    def read(cls) -> "IndexReader":
        return IndexReader()

    @classmethod
    def load(cls, path: str, version: int | None = None) -> "ANNIndexModel":
        """Load the newest version of the index at ``path`` (or a given ``version``)."""
        return IndexReader().load(path, version)


class IndexWriter(MLWriter):
    """Saves a model: data first, then the manifest that makes it visible."""

    def __init__(self, model: ANNIndexModel):
        super().__init__()
        self.model = model

    def save(self, path: str) -> None:
        spark = storage.active_session()
        manifest = self.model.manifest
        if storage.path_exists(spark, path):
            if not self.shouldOverwrite:
                raise FileExistsError(
                    f"{path} already exists; use model.write().overwrite().save(path) to "
                    "publish a new version over it"
                )
            if not _is_index(spark, path):
                raise FileExistsError(
                    f"{path} exists and is not a sparkann index; refusing to write into it"
                )
        if storage.join(path, "") != storage.join(manifest.root, ""):
            data_dir = storage.new_data_dir()
            storage.write_table(storage.read_table(spark, manifest), storage.join(path, data_dir))
            manifest = storage.replace_location(manifest, path, data_dir)
        manifest = storage.with_params(manifest, self.model.param_values())
        storage.publish(spark, manifest)  # the model keeps answering from where it was

    def saveImpl(self, path: str) -> None:  # pragma: no cover - save() is overridden
        self.save(path)


class IndexReader(MLReader):
    def load(self, path: str, version: int | None = None) -> ANNIndexModel:
        manifest = storage.load(storage.active_session(), path, version)
        model = ANNIndexModel(manifest)
        stored = {k: v for k, v in manifest.params.items() if model.hasParam(k)}
        model._set(**stored)
        return _resolve_probes(model)


def _resolve_probes(model: ANNIndexModel) -> ANNIndexModel:
    """numProbes=0 (automatic) becomes a concrete count once the partitions are known."""
    if not model.getNumProbes():
        model.setNumProbes(partitioner.default_num_probes(len(model.manifest.centroids)))
    return model


def _is_index(spark: SparkSession, path: str) -> bool:
    try:
        storage.load(spark, path)
        return True
    except storage.IndexFormatError:
        return False


def _work_dir(spark: SparkSession) -> str:
    """Where an index goes when ``indexPath`` is not set."""
    base = spark.conf.get(WORK_DIR_CONF, None)
    if base:
        return storage.join(base, storage.new_data_dir().split("/")[-1])
    master = spark.conf.get("spark.master", "local") or "local"
    if not master.startswith("local"):
        log.warning(
            "indexPath is not set and %s is not configured: the index goes to a local "
            "temporary directory, which executors on other hosts cannot read",
            WORK_DIR_CONF,
        )
    path = tempfile.mkdtemp(prefix="sparkann-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # save() to keep the index
    return path
