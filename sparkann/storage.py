"""The index directory: versioned data, a manifest log, and atomic publishing.

Layout under an index path (any URI Spark can write)::

    manifests/v00000001/part-*.parquet   one row: manifest JSON + centroids
    data/<run-id>/partition_id=N/*.parquet   index table (ids, payload, checksum)

Everything is written by Spark's own writer. A version becomes visible only
when its manifest directory is committed, and the manifest is written after
the data it names: an interrupted save leaves no visible version, and earlier
versions stay readable. Nothing is ever pickled; payloads are checked against
the SHA-256 digests the manifest records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import reduce

import numpy as np
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

FORMAT_NAME = "sparkann-index"
FORMAT_VERSION = 1
MANIFESTS = "manifests"
DATA = "data"
INDEX_COLUMNS = [
    "partition_id", "num_rows", "ids", "payload", "codebook", "deleted", "checksum",
    "vectors", "vectors_checksum", "sq_error",
]
# What a search reads: exact vectors only when it re-ranks.
SEARCH_COLUMNS = ["partition_id", "ids", "payload", "codebook", "deleted", "checksum"]

log = logging.getLogger(__name__)


class IndexFormatError(ValueError):
    """The path does not hold a readable sparkann index."""


@dataclass(frozen=True)
class Manifest:
    """Everything about an index except the partition payloads."""

    root: str
    partition_dirs: list[str]  # data directory (under root) of each partition
    params: dict
    dim: int
    num_vectors: int
    id_type: str
    centroids: np.ndarray
    cluster_sizes: list[int]
    shard_counts: list[int]
    partition_rows: list[int]
    checksums: list[str]
    vector_checksums: list[str] = field(default_factory=list)
    deleted_counts: list[int] = field(default_factory=list)
    partition_bytes: list[int] = field(default_factory=list)
    partition_errors: list[float] = field(default_factory=list)  # PQ squared errors
    codebook: bytes = b""
    build_seconds: dict = field(default_factory=dict)
    version: int = 0

    @property
    def index_bytes(self) -> int:
        """Payload and codebook bytes of all partitions."""
        return int(sum(self.partition_bytes))

    @property
    def squared_error(self) -> float:
        return float(sum(self.partition_errors))

    @property
    def metric(self) -> str:
        return self.params["metric"]

    @property
    def token(self) -> str:
        """Identifies this exact index version inside worker caches."""
        return f"{self.root}#{self.version}#{sha256(''.join(self.checksums).encode())[:16]}"

    @property
    def live_rows(self) -> list[int]:
        return [rows - gone for rows, gone in zip(self.partition_rows, self.deleted_counts)]

    def to_json(self) -> str:
        doc = {
            "format": FORMAT_NAME,
            "formatVersion": FORMAT_VERSION,
            "version": self.version,
            "partitionDirs": self.partition_dirs,
            "deletedCounts": self.deleted_counts,
            "params": self.params,
            "dim": self.dim,
            "numVectors": self.num_vectors,
            "idType": self.id_type,
            "numClusters": len(self.centroids),
            "centroidsSha256": sha256(self.centroids.astype("<f4").tobytes()),
            "clusterSizes": self.cluster_sizes,
            "shardCounts": self.shard_counts,
            "partitionRows": self.partition_rows,
            "checksums": self.checksums,
            "vectorChecksums": self.vector_checksums,
            "partitionErrors": self.partition_errors,
            "partitionBytes": self.partition_bytes,
            "codebookSha256": sha256(self.codebook),
            "buildSeconds": self.build_seconds,
        }
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_row(cls, root: str, text: str, centroid_bytes: bytes, codebook: bytes) -> "Manifest":
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT_NAME:
                raise IndexFormatError(f"{root} is not a sparkann index")
            if int(doc["formatVersion"]) > FORMAT_VERSION:
                raise IndexFormatError(
                    f"{root} was written in index format {doc['formatVersion']}, newer than "
                    f"the supported {FORMAT_VERSION}; upgrade sparkann to read it"
                )
            centroids = _centroids(doc, centroid_bytes)
            if sha256(codebook) != doc["codebookSha256"]:
                raise IndexFormatError("the manifest's PQ codebook is damaged (checksum mismatch)")
            return cls(
                root=root,
                partition_dirs=[str(x) for x in doc["partitionDirs"]],
                deleted_counts=[int(x) for x in doc["deletedCounts"]],
                params=dict(doc["params"]),
                dim=int(doc["dim"]),
                num_vectors=int(doc["numVectors"]),
                id_type=str(doc["idType"]),
                centroids=centroids,
                cluster_sizes=[int(x) for x in doc["clusterSizes"]],
                shard_counts=[int(x) for x in doc["shardCounts"]],
                partition_rows=[int(x) for x in doc["partitionRows"]],
                checksums=[str(x) for x in doc["checksums"]],
                vector_checksums=[str(x) for x in doc["vectorChecksums"]],
                partition_errors=[float(x) for x in doc["partitionErrors"]],
                partition_bytes=[int(x) for x in doc["partitionBytes"]],
                codebook=codebook,
                build_seconds=dict(doc.get("buildSeconds", {})),
                version=int(doc["version"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, IndexFormatError):
                raise
            raise IndexFormatError(f"{root}: the manifest is damaged ({err!r})") from None


def _centroids(doc: dict, data: bytes) -> np.ndarray:
    rows, dim = int(doc["numClusters"]), int(doc["dim"])
    if len(data) != rows * dim * 4 or sha256(data) != doc["centroidsSha256"]:
        raise IndexFormatError("the manifest's centroids are damaged (checksum mismatch)")
    return np.frombuffer(data, dtype="<f4").reshape(rows, dim).astype(np.float32)


def sha256(*parts) -> str:
    """Hex SHA-256 of the concatenated byte strings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def new_data_dir() -> str:
    return f"{DATA}/{uuid.uuid4().hex}"


def write_table(table: DataFrame, path: str) -> None:
    """Store an index table; each partition in its own directory for pruning."""
    table.select(*INDEX_COLUMNS).write.mode("error").partitionBy(  # Connect: not "errorifexists"
        "partition_id"
    ).parquet(path)


def read_table(spark: SparkSession, manifest: Manifest, columns=INDEX_COLUMNS) -> DataFrame:
    """The index table of this version, whose partitions may lie in several data dirs."""
    by_dir: dict[str, list[int]] = {}
    for pid, data_dir in enumerate(manifest.partition_dirs):
        by_dir.setdefault(data_dir, []).append(pid)
    parts = []
    for data_dir, pids in sorted(by_dir.items()):
        frame = spark.read.parquet(join(manifest.root, data_dir))
        if len(pids) < len(manifest.partition_dirs):
            frame = frame.where(F.col("partition_id").isin(pids))
        parts.append(frame.select(*columns))
    return reduce(DataFrame.unionByName, parts)


def partition_files(spark: SparkSession, manifest: Manifest) -> dict[int, list[str]]:
    """The Parquet file URIs holding each partition's row, as Spark lists them."""
    found: dict[int, list[str]] = {}
    for data_dir in sorted(set(manifest.partition_dirs)):
        for uri in spark.read.parquet(join(manifest.root, data_dir)).inputFiles():
            pid = _partition_of(uri)
            if pid is not None and pid < len(manifest.partition_dirs) \
                    and manifest.partition_dirs[pid] == data_dir:
                found.setdefault(pid, []).append(uri)
    missing = sorted(set(range(len(manifest.partition_dirs))) - set(found))
    if missing:
        raise IndexFormatError(
            f"{manifest.root}: the files of index partition(s) {missing[:10]} are missing")
    return found


def _partition_of(uri: str) -> int | None:
    for part in uri.split("/"):
        if part.startswith("partition_id="):
            return int(part.split("=", 1)[1])
    return None


def table_stats(spark: SparkSession, path: str) -> list:
    """Per-partition facts of a written table, read without the payloads' bytes."""
    return (
        spark.read.parquet(path)
        .select(
            "partition_id", "num_rows", "checksum", "vectors_checksum", "sq_error",
            F.coalesce(F.size("deleted"), F.lit(0)).alias("num_deleted"),
            (F.length("payload") + F.coalesce(F.length("codebook"), F.lit(0))).alias("nbytes"),
        )
        .orderBy("partition_id")
        .collect()
    )


def publish(spark: SparkSession, manifest: Manifest) -> Manifest:
    """Commit ``manifest`` as the next version under its root; the commit point."""
    version = _latest_version(spark, manifest.root) + 1
    while path_exists(spark, join(manifest.root, MANIFESTS, f"v{version:08d}")):
        # never committed (else it would be the latest): a publish that died
        log.warning("skipping manifest version %d of %s: left by an interrupted save",
                    version, manifest.root)
        version += 1
    manifest = replace(manifest, version=version)
    centroids = manifest.centroids.astype("<f4").tobytes()
    row = [(manifest.version, manifest.to_json(), centroids, manifest.codebook)]
    frame = spark.createDataFrame(
        row, "version long, manifest string, centroids binary, codebook binary"
    )
    path = join(manifest.root, MANIFESTS, f"v{manifest.version:08d}")
    frame.coalesce(1).write.mode("error").parquet(path)
    log.info("published %s version %d", manifest.root, manifest.version)
    return manifest


def _manifest_rows(spark: SparkSession, root: str) -> DataFrame | None:
    if _hadoop_fs(spark, root) is not None and not path_exists(spark, join(root, MANIFESTS)):
        return None
    try:
        frame = spark.read.option("recursiveFileLookup", "true").parquet(join(root, MANIFESTS))
        frame.schema  # resolves the path now
        return frame
    except AnalysisException:
        return None


def _latest_version(spark: SparkSession, root: str) -> int:
    frame = _manifest_rows(spark, root)
    if frame is None:
        return 0
    row = frame.agg(F.max("version").alias("v")).collect()[0]
    return int(row.v or 0)


def load(spark: SparkSession, root: str, version: int | None = None) -> Manifest:
    """Read the newest committed manifest (or ``version``) under ``root``."""
    frame = _manifest_rows(spark, root)
    if frame is None:
        exists = path_exists(spark, root)
        raise IndexFormatError(
            f"no sparkann index at {root}: "
            + ("the directory holds no committed manifest (not an index, or an "
               "interrupted save)" if exists else "the path does not exist")
        )
    wanted = version if version is not None else _latest_version(spark, root)
    rows = frame.where(F.col("version") == wanted).collect()
    if not rows:
        raise IndexFormatError(f"{root} has no committed version {wanted}")
    row = rows[0]
    return Manifest.from_row(root, row.manifest, bytes(row.centroids), bytes(row.codebook))


def active_session() -> SparkSession:
    """The caller's SparkSession; sparkann never creates one itself."""
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession; create one before saving or loading")
    return spark


def path_exists(spark: SparkSession, path: str) -> bool:
    """True if ``path`` exists (file or directory)."""
    fs = _hadoop_fs(spark, path)
    if fs is not None:
        return bool(fs[0].exists(fs[1]))
    try:  # Spark Connect: no JVM access, ask through a read
        spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path).schema
        return True
    except AnalysisException as err:
        if "PATH_NOT_FOUND" in str(err) or "does not exist" in str(err):
            return False
        raise


def _hadoop_fs(spark: SparkSession, path: str):
    """(FileSystem, Path) through the JVM on classic Spark; None under Spark Connect."""
    jvm_session = getattr(spark, "_jsparkSession", None)
    if jvm_session is None:
        return None
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(jvm_session.sessionState().newHadoopConf()), hpath


@contextmanager
def removed_on_failure(spark: SparkSession, root: str, data_dir: str):
    """Delete a data directory whose write failed (best effort; classic Spark only)."""
    try:
        yield
    except BaseException:
        fs = _hadoop_fs(spark, join(root, data_dir))
        if fs is not None:
            try:
                fs[0].delete(fs[1], True)
            except Exception:  # the original error matters more
                log.warning("could not remove the partial output %s", join(root, data_dir))
        raise


def replace_location(manifest: Manifest, root: str, data_dir: str) -> Manifest:
    """The same index stored under another root, in one data directory."""
    dirs = [data_dir] * len(manifest.partition_dirs)
    return replace(manifest, root=root, partition_dirs=dirs, version=0)


def with_params(manifest: Manifest, params: dict) -> Manifest:
    """Store the current search-time settings; build-time values stay as recorded."""
    changeable = ("k", "numProbes", "probeEpsilon", "efSearch", "neighborsCol", "rerankK",
                  "allowedIdsCol", "queryBatchRows", "numThreads", "excludeSelf")
    merged = {**manifest.params, **{k: params[k] for k in changeable if k in params}}
    return replace(manifest, params=merged)


def partition_checksum(payload, codebook, deleted) -> str:
    """SHA-256 over what a search trusts: payload, codebook and deleted labels."""
    labels = np.sort(np.asarray(deleted, dtype="<i4")).tobytes()
    return sha256(payload, codebook, labels)
