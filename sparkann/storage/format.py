"""The index's own file formats: the JSON manifest and the binary meta file.

Both are untrusted input when read: every field is type- and bounds-checked,
every path must stay under the index root, and all failures raise
:class:`IndexFormatError`. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from ..index import IndexSpec

FORMAT_NAME = "sparkann-index"
# 3: length-framed payload digests, id-location file checksums; 4: the params in
# sections (build spec, search defaults, model params, stats). Format 3 still loads.
# 5: item columns (itemTypes); 6: partition files shared by several partitions' rows.
FORMAT_VERSION = 6
READABLE_VERSIONS = (3, 4, 5, 6)
# Spark types an item column may have (see storage.items), and how many a manifest names
ITEM_TYPE_NAMES = ("boolean", "tinyint", "smallint", "int", "bigint", "float", "double",
                   "string", "date")
MAX_ITEM_COLUMNS = 64
MAX_MANIFEST_BYTES = 256 << 20
MAX_META_BYTES = 8 << 30
MAX_PARTITIONS = (1 << 31) - 1  # partition ids are int32
_META_MAGIC = b"SANNMETA"
_META_HEADER = struct.Struct("<8sIQ")  # magic, version, json length
_META_DTYPES = {"<f4": np.float32, "<i8": np.int64, "|u1": np.uint8}
_SAFE_PATH = re.compile(r"[A-Za-z0-9_=.\-]+(/[A-Za-z0-9_=.\-]+)*")  # whole path: fullmatch
ID_TYPES = ("long", "string")
# What made a version (recorded in its manifest; "" in manifests written before it was).
OPERATIONS = ("fit", "add", "delete", "compact", "rebalance", "calibrate", "copy", "save")


class IndexFormatError(ValueError):
    """The path does not hold a readable sparkann index, or a file of it is damaged."""


def sha256(*parts) -> str:
    """Hex SHA-256 of the concatenated byte strings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def framed_sha256(*parts) -> str:
    """Hex SHA-256 of byte strings, each preceded by its length (8 bytes, little-endian),
    so no byte can move from one part to the next unnoticed."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def ids_digest(ids: pa.Array) -> bytes:
    """Canonical bytes of an id column, for checksums."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if pa.types.is_integer(ids.type):
        return np.asarray(ids.to_numpy(zero_copy_only=False), dtype="<i8").tobytes()
    ids = ids.cast(pa.large_string())
    offsets = np.frombuffer(ids.buffers()[1], dtype="<i8")[ids.offset:ids.offset + len(ids) + 1]
    data = ids.buffers()[2]
    body = b"" if data is None else data.to_pybytes()[offsets[0]:offsets[-1]]
    return (offsets - offsets[0]).astype("<i8").tobytes() + body


def safe_relative(path: Any, what: str) -> str:
    """A path inside the index root: relative, no ``..``, no scheme (else an error)."""
    if not isinstance(path, str) or not _SAFE_PATH.fullmatch(path) or any(
            part in (".", "..") for part in path.split("/")):
        raise IndexFormatError(f"{what}: path {path!r} does not stay inside the index root")
    return path


# ----------------------------------------------------------------- meta file


@dataclass(frozen=True)
class Meta:
    """Index-wide arrays: centroids, shards per cluster, the centroid graph, shared data."""

    centroids: np.ndarray  # (C, d) float32
    shard_counts: np.ndarray  # (C,) int64
    centroid_graph: bytes = b""  # meta-HNSW payload (empty below its threshold)
    shared: bytes = b""  # the index type's index-wide data (a global PQ codebook)

    def to_bytes(self) -> bytes:
        arrays = {
            "centroids": np.ascontiguousarray(self.centroids, "<f4"),
            "shard_counts": np.ascontiguousarray(self.shard_counts, "<i8"),
            "centroid_graph": np.frombuffer(self.centroid_graph, np.uint8),
            "shared": np.frombuffer(self.shared, np.uint8),
        }
        offset, layout = 0, {}
        for name, array in arrays.items():
            layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape),
                            "offset": offset, "nbytes": array.nbytes}
            offset += array.nbytes
        head = json.dumps({"arrays": layout}, sort_keys=True).encode()
        return b"".join([_META_HEADER.pack(_META_MAGIC, 1, len(head)), head,
                         *(a.tobytes() for a in arrays.values())])

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> "Meta":
        view = memoryview(data)
        if len(view) < _META_HEADER.size:
            raise IndexFormatError("the meta file is damaged: shorter than its header")
        magic, version, head_len = _META_HEADER.unpack(view[:_META_HEADER.size])
        if magic != _META_MAGIC or version != 1 or head_len > len(view) - _META_HEADER.size:
            raise IndexFormatError("the meta file is damaged: bad header")
        body = view[_META_HEADER.size + head_len:]
        try:
            layout = json.loads(bytes(view[_META_HEADER.size:_META_HEADER.size + head_len]))
            arrays = {name: _meta_array(body, layout["arrays"][name])
                      for name in ("centroids", "shard_counts", "centroid_graph", "shared")}
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as err:
            raise IndexFormatError(f"the meta file is damaged ({_reason(err)})") from None
        centroids, counts = arrays["centroids"], arrays["shard_counts"]
        if centroids.ndim != 2 or centroids.shape[1] != dim or len(centroids) == 0:
            raise IndexFormatError(f"the meta file's centroids have shape {centroids.shape}, "
                                   f"not (clusters, {dim})")
        if counts.shape != (len(centroids),) or (counts < 0).any() \
                or (counts > MAX_PARTITIONS).any() or int(counts.sum()) > MAX_PARTITIONS:
            raise IndexFormatError("the meta file's shard counts do not match its centroids "
                                   f"(each and their sum must be in 0..{MAX_PARTITIONS})")
        if not np.isfinite(centroids).all():
            raise IndexFormatError("the meta file's centroids hold non-finite values")
        return cls(centroids.astype(np.float32), counts.astype(np.int64),
                   arrays["centroid_graph"].tobytes(), arrays["shared"].tobytes())


def _meta_array(body: memoryview, spec: dict) -> np.ndarray:
    dtype = _META_DTYPES[str(spec["dtype"])]
    shape = [_layout_int(s) for s in spec["shape"]]
    offset, nbytes = _layout_int(spec["offset"]), _layout_int(spec["nbytes"])
    if any(s < 0 for s in shape) or nbytes != math.prod(shape) * np.dtype(dtype).itemsize:
        raise ValueError("array size does not match its shape")
    if offset < 0 or offset + nbytes > len(body):
        raise ValueError("array lies outside the file")
    return np.frombuffer(body[offset:offset + nbytes], dtype=dtype).reshape(shape)


def _layout_int(value) -> int:
    """A layout number: an integer, not a bool, a float or text."""
    if type(value) is not int:
        raise TypeError(f"layout number {value!r} is not an integer")
    return value


def _reason(err: BaseException, describe=str) -> str:
    """What went wrong, for an error message (a RecursionError's own text says nothing)."""
    return "JSON nested too deeply" if isinstance(err, RecursionError) else describe(err)


# ------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class DeleteFile:
    """A file of deleted row labels of one partition."""

    file: str
    count: int
    sha256: str


@dataclass(frozen=True)
class Partitions:
    """Per-partition facts, indexed by partition id."""

    files: list[str]
    rows: list[int]
    payload_bytes: list[int]
    checksums: list[str]
    sq_errors: list[float]
    deletes: list[list[DeleteFile]]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def deleted(self) -> list[int]:
        return [sum(d.count for d in ds) for ds in self.deletes]

    @property
    def live(self) -> list[int]:
        return [r - d for r, d in zip(self.rows, self.deleted)]

    def with_partitions(self, changes: dict[int, dict]) -> "Partitions":
        """A copy with the fields of each partition in ``changes`` (pid -> {field: value},
        ``deletes`` included) replaced."""
        columns = {name: list(getattr(self, name)) for name in _PARTITION_FIELDS}
        for pid, values in changes.items():
            for name, value in values.items():
                columns[name][pid] = value
        return Partitions(**columns)

    @classmethod
    def empty(cls, count: int) -> "Partitions":
        """``count`` partitions without rows."""
        return cls(files=[""] * count, rows=[0] * count, payload_bytes=[0] * count,
                   checksums=[""] * count, sq_errors=[0.0] * count,
                   deletes=[[] for _ in range(count)])


_PARTITION_FIELDS = ("files", "rows", "payload_bytes", "checksums", "sq_errors", "deletes")


@dataclass(frozen=True)
class Locations:
    """The id-location table: where each id lives, bucketed by id hash."""

    buckets: int
    files: list[list[str]]  # per bucket
    checksums: list[list[str]]  # SHA-256 of each file's bytes, as ``files``

    def checksum(self, bucket: int, file: str) -> str:
        return self.checksums[bucket][self.files[bucket].index(file)]


@dataclass(frozen=True)
class Manifest:
    """Everything about one version of an index except the partitions' bytes."""

    root: str
    version: int
    index_type: str
    metric: str
    dim: int
    id_type: str
    # the params that describe the stored index, as built (the type's build params among
    # them); indexType and metric are the fields above
    build_spec: dict
    user_set: list[str]  # names of the params the user set (the rest are defaults)
    meta_file: str
    meta_sha256: str
    partitions: Partitions
    locations: Locations | None = None
    calibration: dict = field(default_factory=dict)
    build_seconds: dict = field(default_factory=dict)
    base_version: int = 0
    operation: str = ""  # one of OPERATIONS: what made this version
    search_defaults: dict = field(default_factory=dict)  # calibrated (or fixed) settings
    model_params: dict = field(default_factory=dict)  # how the model searches, names columns
    stats: dict = field(default_factory=dict)  # build statistics (balanceAtBuild)
    # (name, Spark type) of the item columns stored beside the ids, see storage.items
    item_types: list = field(default_factory=list)

    @classmethod
    def with_param_values(cls, params: dict, user_set: list[str], **fields) -> "Manifest":
        """A manifest whose sections hold ``params`` (every param value by name, and
        build statistics), each in its section."""
        from ..index import index_type

        sections: dict[str, Any] = split_params(fields["index_type"], params, user_set)
        spec = index_type(fields["index_type"]).spec(sections["build_spec"])
        sections["build_spec"].update(spec.params.to_params())  # defaults written out
        return cls(user_set=list(user_set), **sections, **fields)

    @property
    def params(self) -> dict:
        """Every stored value by param name: the build spec, then the search defaults,
        then the model's params (a later section wins), and the stats."""
        return {**self.stats, **self.build_spec, "indexType": self.index_type,
                "metric": self.metric, **self.search_defaults, **self.model_params}

    @property
    def spec(self) -> "IndexSpec":
        """The typed build spec of the index type."""
        from ..index import index_type

        return index_type(self.index_type).spec(self.build_spec)

    def with_params(self, params: dict, user_set: list[str]) -> "Manifest":
        """The manifest with a model's params and user settings: build params and search
        defaults stay as stored."""
        sections = split_params(self.index_type, params, user_set)
        return replace(self, model_params=sections["model_params"], user_set=list(user_set))

    @property
    def num_partitions(self) -> int:
        return len(self.partitions)

    @property
    def num_vectors(self) -> int:
        return int(sum(self.partitions.live))

    @property
    def index_bytes(self) -> int:
        return int(sum(self.partitions.payload_bytes))

    def to_json(self) -> str:
        p = self.partitions
        doc = {
            "format": FORMAT_NAME,
            "formatVersion": FORMAT_VERSION,
            "version": self.version,
            "baseVersion": self.base_version,
            "indexType": self.index_type,
            "metric": self.metric,
            "dim": self.dim,
            "idType": self.id_type,
            "buildSpec": self.build_spec,
            "searchDefaults": self.search_defaults,
            "modelParams": self.model_params,
            "stats": self.stats,
            "userSet": sorted(self.user_set),
            "meta": {"file": self.meta_file, "sha256": self.meta_sha256},
            "partitions": {
                "files": p.files, "rows": p.rows, "payloadBytes": p.payload_bytes,
                "checksums": p.checksums, "sqErrors": p.sq_errors,
                "deletes": [[{"file": d.file, "count": d.count, "sha256": d.sha256}
                             for d in ds] for ds in p.deletes],
            },
            "locations": None if self.locations is None else {
                "buckets": self.locations.buckets, "files": self.locations.files,
                "sha256": self.locations.checksums},
            "calibration": self.calibration,
            "buildSeconds": self.build_seconds,
            "operation": self.operation,
            "itemTypes": [list(pair) for pair in self.item_types],
        }
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, root: str, text: bytes | str, version: int) -> "Manifest":
        """Parse and check a manifest read from ``root``'s version ``version``."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
                raise IndexFormatError(f"{root} is not a sparkann index")
            format_version = _format_version(doc["formatVersion"])
            if format_version not in READABLE_VERSIONS:
                newer = format_version > FORMAT_VERSION
                raise IndexFormatError(
                    f"{root} version {version} is in index format {doc['formatVersion']}; this "
                    f"sparkann reads formats {READABLE_VERSIONS[0]} to {FORMAT_VERSION}"
                    + ("; upgrade sparkann to read it" if newer else "; rebuild the index"))
            index_kind = _param("indexType", _text(doc["indexType"], "indexType"))
            user_set = [_text(x, "userSet") for x in doc["userSet"]]
            manifest = cls(
                root=root,
                version=_int(doc["version"], "version", 0),
                base_version=_int(doc.get("baseVersion", 0), "baseVersion", 0),
                index_type=index_kind,
                metric=_param("metric", _text(doc["metric"], "metric")),
                dim=_int(doc["dim"], "dim", 1, 1 << 16),
                id_type=_text(doc["idType"], "idType"),
                user_set=user_set,
                **_sections(doc, format_version, index_kind, user_set),
                meta_file=safe_relative(doc["meta"]["file"], "meta"),
                meta_sha256=_text(doc["meta"]["sha256"], "meta"),
                partitions=_partitions(doc["partitions"]),
                locations=_locations(doc.get("locations")),
                calibration=_dict(doc.get("calibration", {}), "calibration"),
                build_seconds=_dict(doc.get("buildSeconds", {}), "buildSeconds"),
                operation=_operation(doc.get("operation", "")),
                item_types=_item_types(doc.get("itemTypes", [])),
            )
        except IndexFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError,
                RecursionError) as err:
            raise IndexFormatError(f"{root}: the manifest of version {version} is damaged "
                                   f"({_reason(err, repr)})") from None
        if manifest.version != version:
            raise IndexFormatError(f"{root}: manifest file of version {version} says it is "
                                   f"version {manifest.version}")
        if manifest.id_type not in ID_TYPES:
            raise IndexFormatError(f"{root}: unknown id type {manifest.id_type!r}")
        if [name for name, _ in manifest.item_types] != list(
                manifest.build_spec.get("itemCols") or []):
            raise IndexFormatError(f"{root}: the manifest of version {version} names other item "
                                   "columns in itemTypes than in itemCols")
        missing = [name for name in _required_params(manifest.index_type)
                   if manifest.build_spec.get(name) is None]
        if missing:
            raise IndexFormatError(f"{root}: the manifest of version {version} lacks the params "
                                   f"{missing} of its index type {manifest.index_type!r}")
        return manifest

    def with_(self, **changes) -> "Manifest":
        return replace(self, **changes)


def _format_version(value) -> int:
    """formatVersion: an integer (or its digits as text), never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise IndexFormatError(f"manifest field formatVersion={value!r} is not an integer")
    return int(value)


def _int(value, what: str, low: int = 0, high: int = 1 << 62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise IndexFormatError(f"manifest field {what}={value!r} is out of range")
    return value


SECTIONS = {"build_spec": "buildSpec", "search_defaults": "searchDefaults",
            "model_params": "modelParams", "stats": "stats"}


def split_params(index_kind: str, params: dict, user_set: list[str]) -> dict[str, dict]:
    """Param values by section: the index type's build params and every param that
    describes the stored index go to the build spec; calibrated settings the user did
    not set to the search defaults; what a model may change to the model params; other
    names (build statistics) to the stats. indexType and metric are manifest fields."""
    from ..index import build_param_names, index_type
    from ..params import CALIBRATED, MODEL_PARAMS, stored_param_converters

    known, own = stored_param_converters(), index_type(index_kind).build_params
    other_types = set(build_param_names()) - set(own) - set(CALIBRATED)
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    for name, value in params.items():
        if name in ("indexType", "metric") or name in other_types:
            continue
        if name in own or (name in known and name not in MODEL_PARAMS):
            sections["build_spec"][name] = value
        if name in CALIBRATED and name not in user_set:
            sections["search_defaults"][name] = value
        elif name in MODEL_PARAMS:
            sections["model_params"][name] = value
        elif name not in known:
            sections["stats"][name] = value
    return sections


def _sections(doc: dict, format_version: int, index_kind: str, user_set: list[str]) -> dict:
    """The checked param sections of a manifest document (format 3 kept them in one
    ``params`` object)."""
    if format_version == 3:
        params = _params(_dict(doc["params"], "params"), "params")
        sections = split_params(index_kind, params, user_set)
        return {**sections, "stats": _stats(sections["stats"], "params")}
    sections = {name: _dict(doc[key], key) for name, key in SECTIONS.items()}
    checked = {name: _params(values, SECTIONS[name]) for name, values in sections.items()
               if name != "stats"}
    return {**checked, "stats": _stats(sections["stats"], "stats")}


def _params(params: dict, section: str) -> dict:
    """Stored params, each checked (and converted) by the converter its param has when
    it is set; values of other names are kept as they are."""
    return {name: _param(name, value, section) for name, value in params.items()}


def _param(name: str, value, section: str = "params"):
    from ..params import stored_param_converters

    converter = stored_param_converters().get(name)
    if value is None or converter is None:
        return value
    try:
        return converter(value)
    except (TypeError, ValueError) as err:
        raise IndexFormatError(f"manifest field {section}.{name}={value!r} is invalid "
                               f"({err})") from None


def _stats(stats: dict, section: str) -> dict:
    """Build statistics: finite numbers (or null)."""
    for name, value in stats.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise IndexFormatError(f"manifest field {section}.{name}={value!r} is not a "
                                   "finite number")
    return stats


def _required_params(index_kind: str) -> tuple[str, ...]:
    from ..index import index_type

    cls = index_type(index_kind)
    return ("numPartitions", *(f.metadata["param"] for f in fields(cls.Params)
                               if f.default is MISSING))


def _item_types(doc) -> list[tuple[str, str]]:
    """(name, Spark type) pairs of the stored item columns: distinct names, known types."""
    if not isinstance(doc, list) or len(doc) > MAX_ITEM_COLUMNS:
        raise IndexFormatError("manifest field itemTypes is not a list of at most "
                               f"{MAX_ITEM_COLUMNS} columns")
    pairs = []
    for pair in doc:
        if not isinstance(pair, list) or len(pair) != 2:
            raise IndexFormatError("manifest field itemTypes holds a malformed entry")
        name, kind = _text(pair[0], "itemTypes"), _text(pair[1], "itemTypes")
        if kind not in ITEM_TYPE_NAMES or not name:
            raise IndexFormatError(f"manifest field itemTypes: column {name!r} has the "
                                   f"unsupported type {kind!r}")
        pairs.append((name, kind))
    if len({name for name, _ in pairs}) != len(pairs):
        raise IndexFormatError("manifest field itemTypes names a column twice")
    return pairs


def _operation(value) -> str:
    if value != "" and value not in OPERATIONS:
        raise IndexFormatError(f"manifest field operation={value!r} is not one of "
                               f"{', '.join(OPERATIONS)}")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise IndexFormatError(f"manifest field {what} is not a string")
    return value


def _dict(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise IndexFormatError(f"manifest field {what} is not an object")
    return value


def _partitions(doc: dict) -> Partitions:
    files = [f if f == "" else safe_relative(f, "partition file") for f in doc["files"]]
    n = len(files)
    rows = [_int(x, "rows", 0, 1 << 40) for x in doc["rows"]]
    nbytes = [_int(x, "payloadBytes") for x in doc["payloadBytes"]]
    checksums = [_text(x, "checksums") for x in doc["checksums"]]
    errors = [float(x) for x in doc["sqErrors"]]
    deletes = [[DeleteFile(safe_relative(d["file"], "delete file"),
                           _int(d["count"], "delete count", 1, 1 << 40), _text(d["sha256"], "sha"))
                for d in ds] for ds in doc["deletes"]]
    if not all(len(x) == n for x in (rows, nbytes, checksums, errors, deletes)):
        raise IndexFormatError("the manifest's partition lists differ in length")
    for pid, (f, r, ds) in enumerate(zip(files, rows, deletes)):
        if f == "" and (r or ds):  # "" is a partition without rows (an empty cluster)
            raise IndexFormatError(f"partition file: path '' is only allowed for a partition "
                                   f"without rows; partition {pid} has {r} rows and "
                                   f"{len(ds)} delete files")
        if sum(d.count for d in ds) > r:
            raise IndexFormatError(f"index partition {pid}: more deleted rows than rows")
    return Partitions(files, rows, nbytes, checksums, errors, deletes)


def _locations(doc) -> Locations | None:
    if doc is None:
        return None
    buckets = _int(doc["buckets"], "locations.buckets", 1, 1 << 20)
    files = [[safe_relative(f, "location file") for f in fs] for fs in doc["files"]]
    checksums = [[_text(c, "location checksum") for c in cs] for cs in doc["sha256"]]
    if len(files) != buckets or [len(f) for f in files] != [len(c) for c in checksums] \
            or any(len(set(fs)) != len(fs) for fs in files):
        raise IndexFormatError("the manifest's id-location buckets are inconsistent")
    return Locations(buckets, files, checksums)
