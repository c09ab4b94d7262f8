"""``ANNIndex`` (an Estimator) and ``ANNIndexModel``: orchestration only.

The data flow lives in :mod:`sparkann.build`, :mod:`sparkann.search`,
:mod:`sparkann.update` and :mod:`sparkann.calibrate`; the index on storage in
:mod:`sparkann.storage`.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import replace

from pyspark import keyword_only
from pyspark.ml.base import Estimator, Model
from pyspark.ml.util import (
    DefaultParamsReadable,
    DefaultParamsReader,
    DefaultParamsWritable,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
    MLWriter,
)
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from . import build, calibrate, update
from .build import balance
from .index import DEFAULT_INDEX_TYPE, index_type
from .loader import IndexHandle
from .observe import StageTimer, job_label
from .params import MODEL_PARAMS, ANNParams
from .search import (
    SearchPlan,
    check_query_schema,
    choose_strategy,
    drift,
    payload_reads,
    run_search,
)
from .search.filtered import check_filter, item_filter
from .search.plan import memory_needed
from .storage.copying import copy_index
from .storage.format import IndexFormatError, Manifest
from .storage.fs import is_local, join, store_for
from .storage.transaction import Transaction, with_search_defaults
from .storage.vacuum import DEFAULT_RETENTION_HOURS, vacuum
from .storage.versions import check_current
from .storage.versions import load as load_version

log = logging.getLogger(__name__)
WORK_DIR_CONF = "spark.sparkann.workDir"
SEARCH_PARAMS = MODEL_PARAMS


class ANNIndex(Estimator, ANNParams, DefaultParamsWritable, DefaultParamsReadable):
    """Approximate nearest-neighbour index: IVF partitions, one index (HNSW graph or
    PQ codes) per partition, built and searched with Spark.

    ``fit`` trains coarse centroids, assigns every vector to its nearest one,
    builds one partition index per cluster inside Spark tasks, stores them as a
    versioned index directory and calibrates the search defaults to
    ``targetRecall``. The returned :class:`ANNIndexModel` searches query
    DataFrames.

    Examples
    --------
    >>> from sparkann import ANNIndex, datasets
    >>> vectors = datasets.clustered(2000, 16, seed=1)
    >>> items = spark.createDataFrame(
    ...     [(i, v.tolist()) for i, v in enumerate(vectors)], "id long, vector array<float>")
    >>> model = ANNIndex(k=3, numPartitions=4, targetRecall=0.9).fit(items)
    >>> row = model.transform(items.limit(1)).first()
    >>> [n.id for n in row.neighbors][0] == row.id
    True
    >>> model.summary()["numVectors"]
    2000
    """

    @keyword_only
    def __init__(self, *, vectorCol="vector", idCol="id", metric="l2",
                 indexType=DEFAULT_INDEX_TYPE,
                 numPartitions=0, maxPartitionRows=0, sampleSize=0, seed=42, numThreads=0,
                 deterministic=False, allowDuplicateIds=False, indexPath=None,
                 targetRecall=0.95, itemCols=None, hnswM=16, efConstruction=200, efSearch=None,
                 pqSubvectors=16, pqBits=8, pqCodebook="partition", rerankK=None, k=10,
                 numProbes=None, probeEpsilon=0.0, neighborsCol="neighbors",
                 allowedIdsCol=None, excludeSelf=False, searchStrategy="auto", filter=None,
                 matchCols=None):
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs):
        """Set any of the constructor's keyword parameters (None leaves one unset)."""
        self._set(**{name: value for name, value in kwargs.items() if value is not None})
        return self

    def _fit(self, dataset: DataFrame) -> "ANNIndexModel":
        spark = dataset.sparkSession
        params = self.param_values()
        root = index_root(spark, self.optional("indexPath"))
        stage = StageTimer(spark)
        rows, id_type = build.input_rows(dataset, params["vectorCol"], params["idCol"],
                                         params["itemCols"])
        with Transaction(spark, root) as txn:
            built, _, dim = build.build_index(rows, id_type, params, txn, stage)
            header = build.new_manifest(root, built, params, self.user_set(), dim, id_type,
                                        stage.seconds)
            manifest, digest = commit_build(txn, "fit", built, header, rows, stage)
        return self._copyValues(ANNIndexModel(manifest, digest))._with_index_defaults()


def commit_build(txn: Transaction, operation: str, built, header: Manifest, rows: DataFrame,
                 stage: StageTimer) -> tuple[Manifest, str]:
    """Commit a freshly built version with its search defaults: calibrated on the
    held-out rows its build tasks searched, else the fixed ones."""
    defaults, report = fixed_defaults(header), {}
    if built.calibration is not None:
        with stage("calibrate"):
            params = header.params
            epsilon = (params["probeEpsilon"] if "probeEpsilon" in header.user_set
                       else None)  # None: calibration chooses it
            staged = with_search_defaults(txn.manifest(header), defaults)
            chosen = calibrate.calibrate_at_fit(staged, built.meta, built.calibration,
                                                rows.select("id", "vector"),
                                                params["targetRecall"], epsilon)
        defaults.update(chosen.params())
        report = chosen.report
    with stage("publish"):
        return txn.commit(operation, defaults, report,
                          replace(header, build_seconds=stage.seconds))


def fixed_defaults(manifest: Manifest) -> dict:
    """Search defaults without calibration."""
    clusters = manifest.params["numPartitions"]
    k = int(manifest.params.get("k", 10))
    spec = manifest.spec
    return {"numProbes": int(min(clusters, max(3, math.ceil(math.sqrt(clusters))))),
            **index_type(spec.index_type).fixed_search_defaults(spec.params, k)}


def index_root(spark: SparkSession, path: str | None) -> str:
    """Where an index goes: ``indexPath``, else under ``spark.sparkann.workDir``, else
    under the warehouse directory; refused when executors could not read it."""
    if path:
        return store_for(spark, path).qualify(path)
    warehouse = spark.conf.get("spark.sql.warehouse.dir", None) or "spark-warehouse"
    base = spark.conf.get(WORK_DIR_CONF, None) or join(warehouse, "sparkann")
    master = spark.conf.get("spark.master", "local") or "local"
    if is_local(base) and not master.startswith("local"):
        raise ValueError(
            f"indexPath is not set and the default location {base!r} is on the driver's local "
            f"disk, which executors on other hosts cannot read; set indexPath (or the Spark "
            f"setting {WORK_DIR_CONF}) to shared storage such as s3://, hdfs:// or dbfs:/")
    root = join(base, f"index-{uuid.uuid4().hex[:12]}")
    log.info("sparkann: indexPath is not set; writing the index to %s", root)
    return store_for(spark, root).qualify(root)


class ANNIndexModel(Model, ANNParams, MLReadable, MLWritable):
    """A built index; ``transform`` adds the ``k`` nearest neighbours of each query row.

    The output column (``neighborsCol``) is ``array<struct<id, distance: float>>``,
    best first, with ``min(k, numVectors)`` entries. Distances: Euclidean for
    ``l2``, ``1 - cosine similarity`` for ``cosine``, negative inner product for
    ``ip`` (smaller is better for all three). ``transform`` is lazy: it runs no
    Spark job (with ``filter`` or ``matchCols``, the first search of an index version with
    that filter runs one over the stored item columns, which counts the passing rows)
    and works on streaming DataFrames.
    """

    def __init__(self, manifest: Manifest | None = None, manifest_sha256: str = ""):
        super().__init__()
        self._manifest = manifest
        self._manifest_sha = manifest_sha256

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise ValueError("this ANNIndexModel holds no index; use fit() or load()")
        return self._manifest

    def copy(self, extra=None) -> "ANNIndexModel":
        copied = super().copy(extra)
        copied._manifest, copied._manifest_sha = self._manifest, self._manifest_sha
        return copied

    def _with_index_defaults(self) -> "ANNIndexModel":
        """Take the index's stored values (built partition count, calibrated search
        settings) as this model's defaults; values the user set stay set."""
        stored = self.manifest.params
        self._setDefault(**{name: value for name, value in stored.items()
                            if value is not None and self.hasParam(name)})
        return self

    def _stored_params(self) -> tuple[dict, list[str]]:
        """(params, user_set) for a manifest of this model: the index's build params as
        built, and this model's search params with what the user set on it."""
        manifest = self.manifest
        searched = {name: value for name, value in self.param_values().items()
                    if name in SEARCH_PARAMS}
        user_set = ({n for n in manifest.user_set if n not in SEARCH_PARAMS}
                    | {n for n in self.user_set() if n in SEARCH_PARAMS})
        return {**manifest.params, **searched}, sorted(user_set)

    def _handle(self, spark) -> IndexHandle:
        from .search import handle_for

        return handle_for(self.manifest, self._manifest_sha)

    # ---------------------------------------------------------------- search

    def searchSettings(self) -> dict:
        """The settings a search with this model uses, after defaults and clamping."""
        clusters = int(self.manifest.params["numPartitions"])
        probes = self.getNumProbes()
        if probes > clusters:
            log.info("sparkann: numProbes=%d is more than the %d clusters; searching all",
                     probes, clusters)
        k = self.getK()
        return {"k": k, "numProbes": min(probes, clusters), **self._knobs(k).settings(),
                "probeEpsilon": self.getProbeEpsilon(),
                "searchStrategy": self.getSearchStrategy()}

    def _knobs(self, k: int):
        """The index type's search knobs for this model's values of its search params."""
        cls = index_type(self.manifest.index_type)
        values = {name: self.optional(name) for name in cls.search_params}
        return cls.model_knobs(values, k, self.user_set(), self.getNumThreads())

    def _transform(self, dataset: DataFrame) -> DataFrame:
        spark = dataset.sparkSession
        settings = self.searchSettings()
        manifest = self.manifest
        allowed = self.optional("allowedIdsCol") or ""
        exclude = self.getExcludeSelf()
        check_query_schema(dataset, self.getVectorCol(), self.getNeighborsCol(), allowed,
                           self.getIdCol() if exclude else None, manifest.id_type)
        reads = payload_reads(spark, manifest)
        knobs = self._knobs(settings["k"])
        with_vectors = knobs.needs_vectors
        strategy = choose_strategy(spark, manifest, settings["searchStrategy"], reads,
                                   with_vectors)
        handle = self._handle(spark)
        plan = SearchPlan(
            handle=handle, id_type=manifest.id_type, dim=manifest.dim,
            vector_col=self.getVectorCol(), neighbors_col=self.getNeighborsCol(),
            k=settings["k"], num_probes=settings["numProbes"],
            probe_epsilon=settings["probeEpsilon"],
            knobs=knobs,
            with_vectors=with_vectors, allowed_col=allowed, exclude_self=exclude,
            id_col=self.getIdCol(), strategy=strategy, reads=reads,
            location_buckets=manifest.locations.buckets if manifest.locations else 1,
            hard_marks=drift.hard_marks(manifest.calibration),
            item_types=tuple(manifest.item_types),
            item_filter=self._item_filter(dataset, handle))
        log.info("sparkann: search planned (%s strategy, k=%d, numProbes=%d%s)",
                 strategy, plan.k, plan.num_probes,
                 "".join(f", {n}={v}" for n, v in knobs.settings().items()))
        observation = None
        if plan.hard_marks is not None and not dataset.isStreaming:
            observation = new_observation(dataset)
        self._last_search = observation
        return run_search(dataset, manifest, plan, observation)

    def _item_filter(self, queries: DataFrame, handle: IndexHandle):
        """The search's filter and match keys, with their rows counted (one Spark job
        over the item columns), or None without either."""
        text, match = self.getFilter(), sorted(self.getMatchCols().items())
        if not text and not match:
            return None
        manifest = self.manifest
        check_filter(queries.schema, manifest, text, match,
                     payload_reads(queries.sparkSession, manifest))
        return item_filter(queries.sparkSession, manifest, handle, text, match)

    def nearestJoin(self, queries: DataFrame, how: str = "inner",
                    itemPrefix: str = "") -> DataFrame:
        """The search as a join: one row per (query row, neighbour), with every query
        column, then the neighbour's id (named as ``idCol``), its stored item columns
        (``itemCols``), ``distance`` and ``rank`` (1 = nearest).

        ``how="inner"`` gives a query without neighbours no row; ``how="left"`` gives
        it one row whose neighbour columns are null, as ``DataFrame.nearestByJoin``
        does. ``itemPrefix`` is put before the neighbour's id and item column names;
        a name the query rows already have is refused. Lazy, like ``transform``:
        works on streaming DataFrames."""
        from .join import NEIGHBORS, check_join, nearest_join

        check_join(queries, self.manifest, self.getIdCol(), how, itemPrefix)
        searched = self.copy({self.neighborsCol: NEIGHBORS}).transform(queries)
        return nearest_join(searched, list(queries.columns), self.manifest,
                            self._handle(queries.sparkSession), self.getIdCol(), how,
                            itemPrefix)

    def searchReport(self) -> dict | None:
        """How the queries of this model's last batch search sit against the calibration
        sample, once an action has run that search (None before, or without a
        calibration). ``harder`` is True, with a warning naming
        ``calibrate(queries=...)``, when they are clearly harder than the sample.
        Streams report the same counts in each progress report's ``observedMetrics``
        under ``"sparkann_query_drift"``."""
        observation = getattr(self, "_last_search", None)
        counts = observed_counts(observation) if observation is not None else None
        if counts is None:
            return None
        report = drift.drift_report(counts, self.manifest.calibration)
        if getattr(self, "_warned", None) is not observation:  # one warning per search
            drift.warn_if_harder(report)
            self._warned = observation
        return report

    # --------------------------------------------------------------- summary

    def summary(self) -> dict:
        """Size, layout, calibration and build timings of the index."""
        m = self.manifest
        live = m.partitions.live
        current = balance(live)
        extra = index_type(m.index_type).summary_extra(m.partitions.rows, m.partitions.sq_errors)
        return {
            **extra,
            "numVectors": m.num_vectors,
            "dim": m.dim,
            "metric": m.metric,
            "indexType": m.index_type,
            "numPartitions": int(m.params["numPartitions"]),
            "numShards": m.num_partitions,
            "partitionSizes": list(live),
            "balance": current,
            "drift": current / float(m.params.get("balanceAtBuild") or current or 1.0),
            "deletedRows": int(sum(m.partitions.deleted)),
            "buildSeconds": dict(m.build_seconds),
            "indexBytes": m.index_bytes,
            "bytesPerVector": m.index_bytes / max(m.num_vectors, 1),
            "memoryBytesPerWorker": memory_needed(m, False),
            "searchDefaults": {name: m.params.get(name) for name in
                               ("numProbes", "probeEpsilon",
                                *index_type(m.index_type).search_params)},
            "calibration": {k: v for k, v in m.calibration.items() if k != "trials"},
            "path": m.root,
            "version": m.version,
        }

    # --------------------------------------------------------------- updates

    def _params_for_update(self) -> dict:
        return self._stored_params()[0]

    def add(self, df: DataFrame) -> "ANNIndexModel":
        """A new version that also holds ``df``'s rows (routed to the existing centroids).

        Only the partitions the new rows reach are rewritten; the version this
        model holds stays loadable. Ids deleted before may be added again.
        """
        spark = df.sparkSession
        check_current(spark, self.manifest)
        with job_label(spark, "sparkann: add"):
            result = update.add_rows(spark, self.manifest, self._handle(spark), df,
                                     self._params_for_update())
        return self._with(*result)

    def delete(self, ids) -> "ANNIndexModel":
        """A new version whose answers never contain ``ids`` (a list, or a DataFrame
        whose first column holds ids). Writes small delete files, not partitions."""
        spark = active_session()
        if not isinstance(ids, DataFrame):
            ids = spark.createDataFrame([(i,) for i in ids], f"id {self.manifest.id_type}")
        check_current(spark, self.manifest)
        with job_label(spark, "sparkann: delete"):
            result = update.delete_ids(spark, self.manifest, self._handle(spark), ids)
        return self if result is None else self._with(*result)

    def compact(self, minDeletedShare: float = 0.2) -> "ANNIndexModel":
        """Rebuild the partitions in which at least ``minDeletedShare`` of rows are deleted."""
        spark = active_session()
        check_current(spark, self.manifest)
        with job_label(spark, "sparkann: compact"):
            result = update.compact(spark, self.manifest, self._handle(spark), minDeletedShare,
                                    self._params_for_update())
        return self if result is None else self._with(*result)

    def rebalance(self, maxDrift: float = 1.5) -> "ANNIndexModel":
        """Retrain centroids and rebuild when ``summary()["drift"]`` exceeds ``maxDrift``."""
        if self.summary()["drift"] <= maxDrift:
            return self
        spark = active_session()
        check_current(spark, self.manifest)
        stage = StageTimer(spark)
        with Transaction(spark, self.manifest.root, self.manifest) as txn:
            built, header, rows = update.rebalance(spark, self.manifest, self._handle(spark),
                                                   self._params_for_update(), txn, stage)
            return self._with(*commit_build(txn, "rebalance", built, header, rows, stage))

    def calibrate(self, targetRecall: float = 0.95, queries: DataFrame | None = None,
                  sampleSeed: int | None = None) -> "ANNIndexModel":
        """Re-tune the search defaults to ``targetRecall`` and publish them as a new
        version. ``queries`` (with this model's vector column) replaces the sample
        of indexed rows, which matters when queries are unlike the indexed rows."""
        if not 0 < targetRecall < 1:
            raise ValueError(f"targetRecall={targetRecall} is out of range: must be in (0, 1)")
        if not index_type(self.manifest.index_type).exact_vectors:
            raise ValueError(
                f"calibrate() measures recall against exact search, and "
                f"indexType={self.manifest.index_type!r} stores only quantized vectors; "
                "calibrate when fitting (targetRecall), where the exact vectors are at hand")
        spark = active_session()
        check_current(spark, self.manifest)
        handle = self._handle(spark)
        base = update.live_rows(spark, self.manifest, handle)
        sample = None
        if queries is not None:
            check_query_schema(queries, self.getVectorCol(), self.getNeighborsCol(), None,
                               None, self.manifest.id_type)
            sample = queries.select(F.lit(None).cast(self.manifest.id_type).alias("id"),
                                    build.vector_column(queries, self.getVectorCol())
                                    .alias("vector"))
        with job_label(spark, "sparkann: calibrate"):
            defaults = calibrate.calibrate(spark, handle, base, self.manifest.num_vectors,
                                           self.getK(), targetRecall,
                                           self.getSeed() if sampleSeed is None else sampleSeed,
                                           self.getProbeEpsilon()
                                           if self.isSet(self.probeEpsilon) else None, sample)
        with Transaction(spark, self.manifest.root, self.manifest) as txn:
            model = self._with(*txn.commit("calibrate", defaults.params(), defaults.report))
        for name, value in defaults.params().items():  # defaults, not user settings
            if not self.isSet(self.getParam(name)):
                model._setDefault(**{name: value})
        return model

    def vacuum(self, retainVersions: int = 1,
               retentionHours: float = DEFAULT_RETENTION_HOURS) -> dict:
        """Delete versions older than the newest ``retainVersions`` and every file no
        retained version needs, but nothing younger than ``retentionHours`` (a version
        newest within them, files written within them); returns what was kept and removed."""
        return vacuum(active_session(), self.manifest.root, retainVersions, retentionHours)

    def _with(self, manifest: Manifest, digest: str) -> "ANNIndexModel":
        model = self.copy()
        model._manifest, model._manifest_sha = manifest, digest
        return model._with_index_defaults()

    # ----------------------------------------------------------- persistence

    def write(self) -> "IndexWriter":
        return IndexWriter(self)

    @classmethod
    def read(cls) -> "IndexReader":
        return IndexReader()

    @classmethod
    def load(cls, path: str, version: int | None = None) -> "ANNIndexModel":
        """Load the newest version of the index at ``path`` (or a given ``version``)."""
        return IndexReader().load(path, version)


def new_observation(dataset: DataFrame) -> Observation:
    """An unnamed Observation of the kind ``dataset``'s session takes (classic or Connect)."""
    if type(dataset).__module__.startswith("pyspark.sql.connect"):
        from pyspark.sql.connect.observation import Observation as ConnectObservation

        return ConnectObservation()  # type: ignore[return-value]
    return Observation()


def observed_counts(observation: Observation) -> dict | None:
    """An observation's values once its action has run, else None (never blocks)."""
    java = getattr(observation, "_jo", None)
    if java is not None and not java.future().isCompleted():  # classic: get would wait
        return None
    try:
        return observation.get or None  # Spark Connect: empty until its action ran
    except Exception:  # Spark Connect before the DataFrame was observed
        return None


def active_session() -> SparkSession:
    """The caller's SparkSession; sparkann never creates one itself."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession; create one first")
    return spark


class IndexWriter(MLWriter):
    """Saves a model as an index directory that is also a pyspark.ml model directory
    (``metadata/`` for Pipeline persistence); earlier versions at the path stay."""

    def __init__(self, model: ANNIndexModel):
        super().__init__()
        self.model = model

    def save(self, path: str) -> None:
        spark = self.sparkSession
        store = store_for(spark, path)
        root = store.qualify(path)
        manifest = self.model.manifest
        if store.exists(root) and store.list(root):
            if not self.shouldOverwrite:
                raise FileExistsError(f"{path} already exists; use model.write().overwrite()"
                                      ".save(path) to publish a new version over it")
            if not is_index(spark, root):
                raise FileExistsError(f"{path} exists and is not a sparkann index; refusing "
                                      "to write into it")
        params, user_set = self.model._stored_params()
        manifest = manifest.with_params(params, user_set)
        if root.rstrip("/") != manifest.root.rstrip("/"):
            copy_index(spark, manifest, root)
        else:
            with Transaction(spark, manifest.root, start=manifest) as txn:
                txn.commit("save")
        metadata = join(root, "metadata")
        store.delete(metadata)
        DefaultParamsWriter.saveMetadata(self.model, root, spark,
                                         extraMetadata={"sparkannIndex": True})

    def saveImpl(self, path: str) -> None:  # pragma: no cover - save() is overridden
        self.save(path)


class IndexReader(MLReader):
    def load(self, path: str, version: int | None = None) -> ANNIndexModel:
        spark = self.sparkSession
        manifest, digest = load_version(spark, path, version)
        model = ANNIndexModel(manifest, digest)._with_index_defaults()
        model._set(**{name: manifest.params[name] for name in manifest.user_set
                      if manifest.params.get(name) is not None and model.hasParam(name)})
        if store_for(spark, manifest.root).exists(join(manifest.root, "metadata")):
            metadata = DefaultParamsReader.loadMetadata(manifest.root, spark)
            model._resetUid(metadata["uid"])
        return model


def is_index(spark, root: str) -> bool:
    try:
        load_version(spark, root)
        return True
    except IndexFormatError:
        return False
