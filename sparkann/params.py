"""Params of :class:`ANNIndex` and :class:`ANNIndexModel`, as mixins per concern.

Every param has a getter and a setter, and every value is validated when it is
set, so ``ANNIndex(metric="manhattan")`` fails at once, naming the param. Params
that have no sensible default (``indexPath``, ``allowedIdsCol``) are left unset
instead of holding a placeholder. Search settings an index calibrates
(``numProbes``, ``efSearch``, ``rerankK``) have no default on the estimator: the
fitted model's defaults are the values its calibration chose, and a value the
user sets always wins.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable

from pyspark.ml.param import Param, Params, TypeConverters

from .index import DEFAULT_INDEX_TYPE, REGISTRY, search_param_names
from .metrics import METRICS

PQ_CODEBOOKS = ("partition", "global")
INT32_MAX = (1 << 31) - 1  # the bound of values handed to hnswlib and faiss as C ints
PQ_BITS = (4, 8)
MAX_K = 100_000  # neighbours per query: bounds what a search task holds per query
STRATEGIES = ("auto", "local", "partition")
# Search settings an index calibrates: the probes, and each index type's own.
CALIBRATED = ("numProbes", "probeEpsilon", *search_param_names())
# Params a built model may change: how it searches and names its columns. Every other
# param describes the stored index and is read from its manifest, never from the model.
MODEL_PARAMS = frozenset({*CALIBRATED, "k", "searchStrategy", "neighborsCol", "allowedIdsCol",
                          "excludeSelf", "numThreads", "vectorCol", "idCol", "filter",
                          "matchCols"})
MAX_FILTER_CHARS = 10_000


def _choice(name: str, choices) -> Callable[[Any], Any]:
    def convert(value):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}")
        return value

    return convert


def _int(name: str, low: int, high: int | None = None) -> Callable[[Any], int]:
    def convert(value) -> int:
        if isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be an integer")
        converted = TypeConverters.toInt(value)
        if converted < low or (high is not None and converted > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{name}={value} is out of range: must be {bound}")
        return converted

    return convert


def _float(name: str, low: float, high: float | None = None,
           open_high: bool = False) -> Callable[[Any], float]:
    def convert(value) -> float:
        converted = TypeConverters.toFloat(value)
        too_high = high is not None and (converted >= high if open_high else converted > high)
        if not converted >= low or too_high:
            bound = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
            raise ValueError(f"{name}={value} is out of range: must be {bound}")
        return converted

    return convert


def _column(name: str) -> Callable[[Any], str]:
    def convert(value) -> str:
        value = TypeConverters.toString(value)
        if not value:
            raise ValueError(f"{name} must name a column, got {value!r}")
        return value

    return convert


def _columns(name: str) -> Callable[[Any], list[str]]:
    def convert(value) -> list[str]:
        names = TypeConverters.toListString(value)
        if any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"{name} must name distinct columns, got {names!r}")
        return names

    return convert


def _predicate(value) -> str:
    text = TypeConverters.toString(value).strip()
    if len(text) > MAX_FILTER_CHARS:
        raise ValueError(f"filter is {len(text)} characters long; at most {MAX_FILTER_CHARS}")
    return text


def _column_map(value) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()):
        raise ValueError("matchCols must map item column names to query column names, "
                         f"got {value!r}")
    return dict(value)


def _param(name: str, doc: str, converter) -> Param:
    return Param(Params._dummy(), name, doc, typeConverter=converter)


class CommonParams(Params):
    """Columns and metric: shared by the estimator, the model and every index type."""

    vectorCol = _param("vectorCol", "vector column: array<float|double> or ML vector",
                       _column("vectorCol"))
    idCol = _param("idCol", "id column: long, int or string", _column("idCol"))
    metric = _param("metric", "distance: 'l2', 'ip' (inner product) or 'cosine'",
                    _choice("metric", tuple(METRICS)))
    indexType = _param("indexType", "per-partition index type: " + ", ".join(sorted(REGISTRY)),
                       _choice("indexType", tuple(REGISTRY)))
    numThreads = _param("numThreads", "threads per build or search task (0 = automatic)",
                        _int("numThreads", 0, INT32_MAX))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(vectorCol="vector", idCol="id", metric="l2",
                         indexType=DEFAULT_INDEX_TYPE, numThreads=0)

    def getVectorCol(self) -> str:
        return self.getOrDefault(self.vectorCol)

    def setVectorCol(self, value: str):
        return self._set(vectorCol=value)

    def getIdCol(self) -> str:
        return self.getOrDefault(self.idCol)

    def setIdCol(self, value: str):
        return self._set(idCol=value)

    def getMetric(self) -> str:
        return self.getOrDefault(self.metric)

    def setMetric(self, value: str):
        return self._set(metric=value)

    def getIndexType(self) -> str:
        return self.getOrDefault(self.indexType)

    def setIndexType(self, value: str):
        return self._set(indexType=value)

    def getNumThreads(self) -> int:
        return self.getOrDefault(self.numThreads)

    def setNumThreads(self, value: int):
        return self._set(numThreads=value)


class BuildParams(Params):
    """How ``fit`` partitions, samples and stores the index."""

    numPartitions = _param("numPartitions", "coarse centroids (0 = one per 20,000 rows)",
                           _int("numPartitions", 0))
    maxPartitionRows = _param("maxPartitionRows", "rows above which a cluster is split into "
                              "shards probed together (0 = about 512 MiB of index)",
                              _int("maxPartitionRows", 0))
    sampleSize = _param("sampleSize", "rows sampled to train the centroids (0 = automatic)",
                        _int("sampleSize", 0))
    seed = _param("seed", "random seed of sampling, k-means, graphs and calibration",
                  TypeConverters.toInt)
    deterministic = _param("deterministic", "build each partition single-threaded so a "
                           "retried task writes identical bytes", TypeConverters.toBoolean)
    allowDuplicateIds = _param("allowDuplicateIds", "index rows with repeated ids instead of "
                               "failing", TypeConverters.toBoolean)
    indexPath = _param("indexPath", "where fit() writes the index (unset: under the Spark "
                       "setting spark.sparkann.workDir, else the warehouse directory)",
                       _column("indexPath"))
    targetRecall = _param("targetRecall", "recall@k the search defaults are calibrated to at "
                          "fit (0 = no calibration)", _float("targetRecall", 0.0, 1.0, True))
    itemCols = _param("itemCols", "input columns stored with the index beside each vector "
                      "(atomic types), returned by nearestJoin", _columns("itemCols"))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(numPartitions=0, maxPartitionRows=0, sampleSize=0, seed=42,
                         deterministic=False, allowDuplicateIds=False, targetRecall=0.95,
                         itemCols=[])

    def getNumPartitions(self) -> int:
        return self.getOrDefault(self.numPartitions)

    def setNumPartitions(self, value: int):
        return self._set(numPartitions=value)

    def getMaxPartitionRows(self) -> int:
        return self.getOrDefault(self.maxPartitionRows)

    def setMaxPartitionRows(self, value: int):
        return self._set(maxPartitionRows=value)

    def getSampleSize(self) -> int:
        return self.getOrDefault(self.sampleSize)

    def setSampleSize(self, value: int):
        return self._set(sampleSize=value)

    def getSeed(self) -> int:
        return self.getOrDefault(self.seed)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def getDeterministic(self) -> bool:
        return self.getOrDefault(self.deterministic)

    def setDeterministic(self, value: bool):
        return self._set(deterministic=value)

    def getAllowDuplicateIds(self) -> bool:
        return self.getOrDefault(self.allowDuplicateIds)

    def setAllowDuplicateIds(self, value: bool):
        return self._set(allowDuplicateIds=value)

    def getIndexPath(self) -> str:
        return self.getOrDefault(self.indexPath)

    def setIndexPath(self, value: str):
        return self._set(indexPath=value)

    def getTargetRecall(self) -> float:
        return self.getOrDefault(self.targetRecall)

    def setTargetRecall(self, value: float):
        return self._set(targetRecall=value)

    def getItemCols(self) -> list[str]:
        return list(self.getOrDefault(self.itemCols))

    def setItemCols(self, value: list[str]):
        return self._set(itemCols=value)


class HNSWParams(Params):
    """Graph settings of ``indexType="hnsw"`` partitions."""

    hnswM = _param("hnswM", "HNSW graph degree M", _int("hnswM", 2, 2048))
    efConstruction = _param("efConstruction", "HNSW build beam width",
                            _int("efConstruction", 1, INT32_MAX))
    efSearch = _param("efSearch", "HNSW search beam width (at least k); unset: the index's "
                      "calibrated default", _int("efSearch", 1, INT32_MAX))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(hnswM=16, efConstruction=200)

    def getHnswM(self) -> int:
        return self.getOrDefault(self.hnswM)

    def setHnswM(self, value: int):
        return self._set(hnswM=value)

    def getEfConstruction(self) -> int:
        return self.getOrDefault(self.efConstruction)

    def setEfConstruction(self, value: int):
        return self._set(efConstruction=value)

    def getEfSearch(self) -> int:
        return self.getOrDefault(self.efSearch)

    def setEfSearch(self, value: int):
        return self._set(efSearch=value)


class PQParams(Params):
    """Code settings of ``indexType="pq"`` partitions."""

    pqSubvectors = _param("pqSubvectors", "PQ sub-quantizers m (the dimension is zero-padded "
                          "to a multiple of m)", _int("pqSubvectors", 1, INT32_MAX))
    pqBits = _param("pqBits", "bits per PQ code: 8, or 4 (SIMD fast-scan)",
                    _choice("pqBits", PQ_BITS))
    pqCodebook = _param("pqCodebook", "'partition' (one codebook per partition) or 'global'",
                        _choice("pqCodebook", PQ_CODEBOOKS))
    rerankK = _param("rerankK", "PQ: re-rank this many ADC candidates by exact distance; at "
                     "fit, > 0 also stores the exact vectors", _int("rerankK", 0, INT32_MAX))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(pqSubvectors=16, pqBits=8, pqCodebook="partition")

    def getPqSubvectors(self) -> int:
        return self.getOrDefault(self.pqSubvectors)

    def setPqSubvectors(self, value: int):
        return self._set(pqSubvectors=value)

    def getPqBits(self) -> int:
        return self.getOrDefault(self.pqBits)

    def setPqBits(self, value: int):
        return self._set(pqBits=value)

    def getPqCodebook(self) -> str:
        return self.getOrDefault(self.pqCodebook)

    def setPqCodebook(self, value: str):
        return self._set(pqCodebook=value)

    def getRerankK(self) -> int:
        return self.getOrDefault(self.rerankK)

    def setRerankK(self, value: int):
        return self._set(rerankK=value)


class SearchParams(Params):
    """How ``transform`` searches."""

    k = _param("k", f"neighbours returned per query (at most {MAX_K})", _int("k", 1, MAX_K))
    numProbes = _param("numProbes", "clusters searched per query (clamped to the number of "
                       "clusters); unset: the index's calibrated default",
                       _int("numProbes", 1, INT32_MAX))
    probeEpsilon = _param("probeEpsilon", "probe a cluster past the nearest only if its centroid "
                          "is within (1 + probeEpsilon) x the nearest one's distance "
                          "(0 = always probe numProbes clusters); unset: the index's "
                          "calibrated default", _float("probeEpsilon", 0.0))
    neighborsCol = _param("neighborsCol", "output column: array<struct<id, distance>>",
                          _column("neighborsCol"))
    allowedIdsCol = _param("allowedIdsCol", "query column of allowed ids (array<long|string>): "
                           "each query is answered from its own subset", _column("allowedIdsCol"))
    excludeSelf = _param("excludeSelf", "drop each query row's own id (idCol) from its "
                         "neighbours, for kNN self-joins", TypeConverters.toBoolean)
    filter = _param("filter", "a Spark SQL predicate over the index's item columns "
                    "(itemCols), such as \"category = 'shoes' AND price < 100\": only items for "
                    "which it is true are returned; '' or unset: no filter", _predicate)
    matchCols = _param("matchCols", "{item column: query column}: each query's neighbours "
                       "come only from items whose item column equals the query's column "
                       "(null matches nothing)", _column_map)
    searchStrategy = _param("searchStrategy", "'local' (each task searches its own rows against "
                            "the cached index), 'partition' (rows meet their partitions) or "
                            "'auto' (by index size; the Spark setting "
                            "spark.sparkann.searchStrategy overrides 'auto')",
                            _choice("searchStrategy", STRATEGIES))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=10, probeEpsilon=0.0, neighborsCol="neighbors", excludeSelf=False,
                         searchStrategy="auto", filter="", matchCols={})

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def setK(self, value: int):
        return self._set(k=value)

    def getNumProbes(self) -> int:
        return self.getOrDefault(self.numProbes)

    def setNumProbes(self, value: int):
        return self._set(numProbes=value)

    def getProbeEpsilon(self) -> float:
        return self.getOrDefault(self.probeEpsilon)

    def setProbeEpsilon(self, value: float):
        return self._set(probeEpsilon=value)

    def getNeighborsCol(self) -> str:
        return self.getOrDefault(self.neighborsCol)

    def setNeighborsCol(self, value: str):
        return self._set(neighborsCol=value)

    def getAllowedIdsCol(self) -> str:
        return self.getOrDefault(self.allowedIdsCol)

    def setAllowedIdsCol(self, value: str):
        return self._set(allowedIdsCol=value)

    def getExcludeSelf(self) -> bool:
        return self.getOrDefault(self.excludeSelf)

    def setExcludeSelf(self, value: bool):
        return self._set(excludeSelf=value)

    def getFilter(self) -> str:
        return self.getOrDefault(self.filter)

    def setFilter(self, value: str | None):
        """Search only items for which the predicate is true (None or '' clears it)."""
        return self._set(filter="" if value is None else value)

    def getMatchCols(self) -> dict[str, str]:
        return self.getOrDefault(self.matchCols)

    def setMatchCols(self, value: dict[str, str] | None):
        """Answer each query from items whose columns equal its own (None clears it)."""
        return self._set(matchCols=value or {})

    def getSearchStrategy(self) -> str:
        return self.getOrDefault(self.searchStrategy)

    def setSearchStrategy(self, value: str):
        return self._set(searchStrategy=value)


class ANNParams(CommonParams, BuildParams, HNSWParams, PQParams, SearchParams):
    """Every param of an index."""

    def param_values(self) -> dict:
        """Every defined param's value, as plain JSON values."""
        return {p.name: self.getOrDefault(p) for p in self.params if self.isDefined(p)}

    def user_set(self) -> list[str]:
        return sorted(p.name for p in self.params if self.isSet(p))

    def optional(self, name: str):
        """A param's value, or None when it is not defined."""
        param = self.getParam(name)
        return self.getOrDefault(param) if self.isDefined(param) else None


@cache
def stored_param_converters() -> dict[str, Callable[[Any], Any]]:
    """Each param's converter by name: what a value read from an index must pass too."""
    return {p.name: p.typeConverter for base in ANNParams.__mro__
            for p in vars(base).values() if isinstance(p, Param)}

