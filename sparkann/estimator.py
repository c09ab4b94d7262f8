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

from . import partitioner, storage
from .build import BuildSettings, build_index
from .params import ANNParams
from .partitions import PQSettings
from .search import SearchSettings, search
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
        efSearch=0,
        neighborsCol="neighbors",
        queryBatchRows=20_000,
        pqSubvectors=16,
        pqBits=8,
        pqCodebook="partition",
        rerankK=0,
        allowedIdsCol="",
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
        settings = BuildSettings(
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
            fail_first_attempt=injected_failures(dataset.sparkSession),
            index_type=values["indexType"],
            allow_duplicate_ids=values["allowDuplicateIds"],
            pq=PQSettings(
                subvectors=values["pqSubvectors"],
                nbits=values["pqBits"],
                codebook=values["pqCodebook"],
                rerank_k=values["rerankK"],
            ),
        )
        root = values["indexPath"] or _work_dir(dataset.sparkSession)
        manifest = build_index(dataset, settings, root, values)
        return _resolve_probes(self._copyValues(ANNIndexModel(manifest)))


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
        limit = dataset.sparkSession.conf.get(BROADCAST_CONF, None)
        if limit:
            settings = replace(settings, broadcast_bytes=int(limit))
        settings = replace(settings, fail_first_attempt=injected_failures(dataset.sparkSession))
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
            k=values["k"],
            num_probes=probes,
            ef_search=values["efSearch"] or max(DEFAULT_MIN_EF, values["k"]),
            query_batch_rows=values["queryBatchRows"],
            num_threads=values["numThreads"],
            rerank_k=values["rerankK"] if self.manifest.params.get("indexType") == "pq" else 0,
            allowed_ids_col=values["allowedIdsCol"],
        )

    def summary(self) -> dict:
        """Size, layout and build timings of the index."""
        m = self.manifest
        sizes = m.partition_rows
        extra = {}
        if m.params.get("indexType") == "pq":
            extra["pqReconstructionRMSE"] = (m.squared_error / m.num_vectors) ** 0.5
        return {
            **extra,
            "numVectors": m.num_vectors,
            "dim": m.dim,
            "metric": m.metric,
            "indexType": m.params.get("indexType", "hnsw"),
            "numPartitions": len(m.centroids),
            "numShards": len(sizes),
            "partitionSizes": list(sizes),
            "balance": max(sizes) / (sum(sizes) / len(sizes)),
            "buildSeconds": dict(m.build_seconds),
            "indexBytes": m.index_bytes,
            "bytesPerVector": m.index_bytes / m.num_vectors,
            "path": m.root,
            "version": m.version,
        }

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
        spark = _session()
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
        self.model._manifest = storage.publish(spark, manifest)

    def saveImpl(self, path: str) -> None:  # pragma: no cover - save() is overridden
        self.save(path)


class IndexReader(MLReader):
    def load(self, path: str, version: int | None = None) -> ANNIndexModel:
        manifest = storage.load(_session(), path, version)
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


def _session() -> SparkSession:
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession; create one before saving or loading")
    return spark


def _work_dir(spark: SparkSession) -> str:
    """Where an index goes when ``indexPath`` is not set."""
    base = spark.conf.get(WORK_DIR_CONF, None)
    if base:
        return storage.join(base, storage.new_data_dir().split("/")[-1])
    master = spark.conf.get("spark.master", "local")
    if not master.startswith("local"):
        log.warning(
            "indexPath is not set and %s is not configured: the index goes to a local "
            "temporary directory, which executors on other hosts cannot read",
            WORK_DIR_CONF,
        )
    path = tempfile.mkdtemp(prefix="sparkann-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)  # save() to keep the index
    return path
