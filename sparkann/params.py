"""Params shared by :class:`ANNIndex` and :class:`ANNIndexModel`, with validation."""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters

METRICS = ("l2", "ip", "cosine")
INDEX_TYPES = ("hnsw", "pq")
PQ_CODEBOOKS = ("partition", "global")
# (param name, smallest allowed value); 0 means "derive from the data" where noted.
_AT_LEAST = {
    "numPartitions": 0,
    "hnswM": 2,
    "efConstruction": 1,
    "sampleSize": 0,
    "maxPartitionRows": 0,
    "numThreads": 0,
    "k": 1,
    "numProbes": 0,
    "efSearch": 0,
    "queryBatchRows": 1,
    "pqSubvectors": 1,
    "rerankK": 0,
    "probeEpsilon": 0,
}
_AT_MOST = {"hnswM": 2048}


def _param(name: str, doc: str, converter) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class ANNParams(Params):
    """Every setting of an index; build settings are fixed once it is fitted."""

    vectorCol = _param("vectorCol", "vector column: array<float|double> or ML vector",
                       TypeConverters.toString)
    idCol = _param("idCol", "id column: long, int or string", TypeConverters.toString)
    metric = _param("metric", "distance: 'l2', 'ip' (inner product) or 'cosine'",
                    TypeConverters.toString)
    indexType = _param("indexType", "per-partition index: 'hnsw' (graph) or 'pq' (compressed "
                       "codes, IVFADC)", TypeConverters.toString)
    pqSubvectors = _param("pqSubvectors", "PQ sub-quantizers m (the dimension is zero-padded "
                          "to a multiple of m)", TypeConverters.toInt)
    pqBits = _param("pqBits", "bits per PQ code: 8 or 4", TypeConverters.toInt)
    pqCodebook = _param("pqCodebook", "'partition' (one codebook per partition) or 'global'",
                        TypeConverters.toString)
    rerankK = _param("rerankK", "PQ: re-rank this many ADC candidates by exact distance "
                     "(0 = off; > 0 at fit stores exact vectors)", TypeConverters.toInt)
    excludeSelf = _param("excludeSelf", "drop each query row's own id (idCol) from its "
                         "neighbours, for kNN self-joins", TypeConverters.toBoolean)
    allowedIdsCol = _param("allowedIdsCol", "optional query column of allowed ids "
                           "(array<long|string>); '' = no restriction", TypeConverters.toString)
    numPartitions = _param("numPartitions", "number of coarse centroids (0 = from data size)",
                           TypeConverters.toInt)
    hnswM = _param("hnswM", "HNSW graph degree M", TypeConverters.toInt)
    efConstruction = _param("efConstruction", "HNSW build beam width", TypeConverters.toInt)
    sampleSize = _param("sampleSize", "rows sampled to train centroids (0 = automatic)",
                        TypeConverters.toInt)
    maxPartitionRows = _param("maxPartitionRows", "rows above which a cluster is split into "
                              "shards probed together (0 = from dimension)", TypeConverters.toInt)
    seed = _param("seed", "random seed of sampling, k-means and graphs", TypeConverters.toInt)
    numThreads = _param("numThreads", "threads per build/search task (0 = task cpus)",
                        TypeConverters.toInt)
    deterministic = _param("deterministic", "build each partition single-threaded so a "
                           "retried task writes identical bytes", TypeConverters.toBoolean)
    allowDuplicateIds = _param("allowDuplicateIds", "index rows with repeated ids instead of "
                               "failing", TypeConverters.toBoolean)
    indexPath = _param("indexPath", "where fit() writes the index ('' = a temporary directory)",
                       TypeConverters.toString)
    k = _param("k", "neighbours returned per query", TypeConverters.toInt)
    numProbes = _param("numProbes", "clusters searched per query (0 = automatic)",
                       TypeConverters.toInt)
    probeEpsilon = _param("probeEpsilon", "probe a cluster past the nearest only if its centroid "
                          "is within (1 + probeEpsilon) x the nearest one's distance "
                          "(0 = always probe numProbes clusters)", TypeConverters.toFloat)
    efSearch = _param("efSearch", "HNSW search beam width (0 = automatic, at least k)",
                      TypeConverters.toInt)
    neighborsCol = _param("neighborsCol", "output column: array<struct<id, distance>>",
                          TypeConverters.toString)
    queryBatchRows = _param("queryBatchRows", "queries searched per partition in one call",
                            TypeConverters.toInt)

    def __init__(self):
        super().__init__()
        self._setDefault(
            vectorCol="vector", idCol="id", metric="l2", indexType="hnsw", numPartitions=0,
            hnswM=16, efConstruction=200, sampleSize=0, maxPartitionRows=0, seed=42,
            numThreads=0, deterministic=False, allowDuplicateIds=False, indexPath="", k=10,
            numProbes=0, probeEpsilon=0.0, efSearch=0,
            neighborsCol="neighbors", queryBatchRows=20_000, pqSubvectors=16, pqBits=8,
            pqCodebook="partition", rerankK=0, allowedIdsCol="", excludeSelf=False,
        )

    def setK(self, value: int):
        return self._set(k=value)

    def setNumProbes(self, value: int):
        return self._set(numProbes=value)

    def setProbeEpsilon(self, value: float):
        return self._set(probeEpsilon=value)

    def setEfSearch(self, value: int):
        return self._set(efSearch=value)

    def setRerankK(self, value: int):
        return self._set(rerankK=value)

    def setAllowedIdsCol(self, value: str):
        return self._set(allowedIdsCol=value)

    def setExcludeSelf(self, value: bool):
        return self._set(excludeSelf=value)

    def setNeighborsCol(self, value: str):
        return self._set(neighborsCol=value)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getNumProbes(self) -> int:
        return self.getOrDefault(self.numProbes)

    def getEfSearch(self) -> int:
        return self.getOrDefault(self.efSearch)

    def getMetric(self) -> str:
        return self.getOrDefault(self.metric)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        values = self.param_values()
        _check_choice("metric", values["metric"], METRICS)
        _check_choice("indexType", values["indexType"], INDEX_TYPES)
        _check_choice("pqBits", values["pqBits"], (4, 8))
        _check_choice("pqCodebook", values["pqCodebook"], PQ_CODEBOOKS)
        for name, low in _AT_LEAST.items():
            if values[name] < low:
                raise ValueError(f"{name}={values[name]} is out of range: must be >= {low}")
            if name in _AT_MOST and values[name] > _AT_MOST[name]:
                raise ValueError(
                    f"{name}={values[name]} is out of range: must be <= {_AT_MOST[name]}")
        if values["efSearch"] and values["efSearch"] < values["k"]:
            raise ValueError(f"efSearch={values['efSearch']} must be >= k={values['k']} "
                             "(or 0 for automatic)")
        for name in ("vectorCol", "idCol", "neighborsCol"):
            if not values[name]:
                raise ValueError(f"{name} must name a column, got {values[name]!r}")

    def param_values(self) -> dict:
        """All settings as plain JSON values, as stored in the manifest."""
        return {p.name: self.getOrDefault(p) for p in self.params
                if self.hasDefault(p) or self.isSet(p)}


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")
