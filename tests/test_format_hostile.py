"""Hostile bytes for every parser of untrusted index files. No Spark.

Manifests, meta files, HNSW payloads, PQ payloads and PQ codebooks may come
from anywhere. Whatever they hold, reading them must either give back what was
written or raise ``ValueError`` (``IndexFormatError`` is one) with a message:
never another exception, a crash, or an allocation sized by a header rather
than by the bytes present.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
from functools import cache

import hnswlib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sparkann
from sparkann import datasets
from sparkann.index import PartitionContext, StoredPartition
from sparkann.index import hnsw as hnsw_module
from sparkann.index import pq as pq_module
from sparkann.index.hnsw import HNSWIndex, HNSWKnobs, graph_from_bytes, graph_to_bytes
from sparkann.index.pq import PQIndex, codebook_from_bytes, codebook_to_bytes
from sparkann.metrics import get_metric
from sparkann.storage.format import (
    FORMAT_VERSION,
    DeleteFile,
    IndexFormatError,
    Locations,
    Manifest,
    Meta,
    Partitions,
    safe_relative,
)

DIM = 8
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
DEEP = "[" * 200_000  # nesting deeper than Python's recursion limit


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def refused(call, *args, match: str, error=ValueError) -> str:
    """Call and require ``error`` with a message containing ``match``: the check that
    refused the input is the one the case is about, not some other one."""
    with pytest.raises(error) as info:
        call(*args)
    message = str(info.value)
    assert match and match in message, message
    return message


# ================================================================= manifest

ROOT = "s3://bucket/indexes/demo"


def good_manifest() -> Manifest:
    return Manifest(
        root=ROOT, version=3, base_version=2, index_type="hnsw", metric="l2", dim=DIM,
        id_type="long", build_spec={"hnswM": 16, "efConstruction": 200, "numPartitions": 2},
        user_set=["metric"],
        meta_file="meta/v3.bin", meta_sha256="ab" * 32,
        partitions=Partitions(
            files=["index/run=1/partition_id=0/part-0.parquet",
                   "index/run=1/partition_id=1/part-0.parquet"],
            rows=[10, 5], payload_bytes=[100, 50], checksums=["c0", "c1"], sq_errors=[0.5, 0.0],
            deletes=[[DeleteFile("deletes/run=2/part-0.parquet", 2, "cd" * 32)], []]),
        locations=Locations(2, [["locations/b=0.parquet"], ["locations/b=1.parquet"]],
                            [["ef" * 32], ["01" * 32]]),
        calibration={"numProbes": 2}, build_seconds={"train": 1.5})


def good_doc() -> dict:
    return json.loads(good_manifest().to_json())


def format3_doc(doc: dict | None = None) -> dict:
    """A manifest document as format 3 wrote it: every value in one ``params`` object."""
    doc = good_doc() if doc is None else doc
    params = {"indexType": doc["indexType"], "metric": doc["metric"]}
    for section in ("stats", "buildSpec", "searchDefaults", "modelParams"):
        params.update(doc.pop(section))
    return {**doc, "formatVersion": 3, "params": params}


def parse(doc_or_text, version: int = 3) -> Manifest:
    text = doc_or_text if isinstance(doc_or_text, (str, bytes)) else json.dumps(doc_or_text)
    return Manifest.from_json(ROOT, text, version)


def edit(**paths):
    """A mutation of the manifest document: dotted path -> new value (None deletes)."""
    def mutate(doc):
        for dotted, value in paths.items():
            *parents, last = dotted.split(".")
            node = doc
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(last)] = value
            elif value is _DELETE:
                del node[last]
            else:
                node[last] = value
        return doc
    return mutate


class _Deleted:
    """Marks a field an edit removes; its repr names it, so test ids are stable."""

    def __repr__(self) -> str:
        return "DELETE"


_DELETE = _Deleted()


def test_manifest_round_trip():
    manifest = good_manifest()
    assert parse(manifest.to_json()) == manifest
    assert parse(manifest.to_json().encode()) == manifest
    assert manifest.num_vectors == 13 and manifest.num_partitions == 2


BAD_PATHS = ["../escape.parquet", "index/../../escape.parquet", "/etc/passwd", "/abs/part.parquet",
             "s3://other-bucket/part.parquet", "file:///tmp/part.parquet", "hdfs://nn:8020/part",
             "C:\\part.parquet", "", ".", "..", "a//b.parquet", "a/./b.parquet", "index/",
             "~/part.parquet", "a\\..\\b", "part one.parquet", "p\u00e4rt.parquet", "a/\x00b",
             42, None, ["index/part.parquet"]]
PATH_FIELDS = {
    "partition file": "partitions.files.1",
    "delete file": "partitions.deletes.0.0.file",
    "meta": "meta.file",
    "location file": "locations.files.1.0",
}


@pytest.mark.parametrize("field", sorted(PATH_FIELDS))
@pytest.mark.parametrize("path", BAD_PATHS, ids=repr)
def test_manifest_paths_must_stay_inside_the_root(field, path):
    doc = edit(**{PATH_FIELDS[field]: path})(good_doc())
    reason = ("only allowed for a partition without rows"
              if field == "partition file" and path == "" else
              "does not stay inside the index root")
    assert field in refused(parse, doc, match=reason, error=IndexFormatError)


def test_a_partition_without_rows_has_no_file():
    doc = edit(**{"partitions.files.1": "", "partitions.rows.1": 0, "partitions.deletes.1": [],
                  "partitions.payloadBytes.1": 0})(good_doc())
    assert parse(json.dumps(doc)).partitions.files[1] == ""


@pytest.mark.parametrize("path", ["part.parquet\n", "index/..\n", "a/b.parquet\n"], ids=repr)
def test_paths_with_a_trailing_newline_are_refused(path):
    refused(safe_relative, path, "partition file", match="does not stay inside the index root",
            error=IndexFormatError)


def test_safe_relative_accepts_paths_under_the_root():
    for path in ("meta/v3.bin", "index/run=1/partition_id=0/part-00000-abc.c000.snappy.parquet",
                 "a.b", "x_y-z"):
        assert safe_relative(path, "file") == path


LENGTH_KEYS = ["rows", "payloadBytes", "checksums", "sqErrors", "deletes"]


@pytest.mark.parametrize("key", LENGTH_KEYS + ["files"])
@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_manifest_partition_lists_of_different_lengths(key, change):
    doc = good_doc()
    column = doc["partitions"][key]
    doc["partitions"][key] = column[:1] if change == "shorter" else column + column[:1]
    refused(parse, doc, match="partition lists differ in length", error=IndexFormatError)


COUNTS = [
    ("negative rows", "rows=-1 is out of range", edit(**{"partitions.rows.0": -1})),
    ("huge rows", "rows=2199023255552 is out of range", edit(**{"partitions.rows.0": 1 << 41})),
    ("rows beyond int64", "rows=1180591620717411303424 is out of range",
     edit(**{"partitions.rows.0": 1 << 70})),
    ("float rows", "rows=10.5 is out of range", edit(**{"partitions.rows.0": 10.5})),
    ("boolean rows", "rows=True is out of range", edit(**{"partitions.rows.1": True})),
    ("string rows", "rows='5' is out of range", edit(**{"partitions.rows.1": "5"})),
    ("negative payload bytes", "payloadBytes=-50 is out of range",
     edit(**{"partitions.payloadBytes.1": -50})),
    ("huge payload bytes", "payloadBytes=9223372036854775808 is out of range",
     edit(**{"partitions.payloadBytes.1": 1 << 63})),
    ("zero delete count", "delete count=0 is out of range",
     edit(**{"partitions.deletes.0.0.count": 0})),
    ("negative delete count", "delete count=-2 is out of range",
     edit(**{"partitions.deletes.0.0.count": -2})),
    ("huge delete count", "delete count=2199023255552 is out of range",
     edit(**{"partitions.deletes.0.0.count": 1 << 41})),
    ("more deleted than rows", "partition 0: more deleted rows than rows",
     edit(**{"partitions.deletes.0.0.count": 11})),
    ("zero dim", "dim=0 is out of range", edit(dim=0)),
    ("huge dim", "dim=131072 is out of range", edit(dim=1 << 17)),
    ("negative version", "version=-3 is out of range", edit(version=-3)),
    ("negative base version", "baseVersion=-1 is out of range", edit(baseVersion=-1)),
    ("zero location buckets", "locations.buckets=0 is out of range",
     edit(**{"locations.buckets": 0})),
    ("huge location buckets", "locations.buckets=2097152 is out of range",
     edit(**{"locations.buckets": 1 << 21})),
    ("sq error beyond a float", "is damaged (OverflowError",
     edit(**{"partitions.sqErrors.0": 10**400})),
    ("buckets and files disagree", "id-location buckets are inconsistent",
     edit(**{"locations.buckets": 3})),
]


@pytest.mark.parametrize("reason, mutate", [(r, m) for _, r, m in COUNTS],
                         ids=[n for n, _, _ in COUNTS])
def test_manifest_counts_out_of_range(reason, mutate):
    refused(parse, mutate(good_doc()), match=reason, error=IndexFormatError)


def test_more_deleted_rows_than_rows_names_the_partition():
    doc = good_doc()
    doc["partitions"]["deletes"][1] = [{"file": "deletes/d.parquet", "count": 3, "sha256": "x"},
                                       {"file": "deletes/e.parquet", "count": 3, "sha256": "y"}]
    refused(parse, doc, match="partition 1: more deleted rows than rows", error=IndexFormatError)


STORED_PARAMS = [
    ("pqBits", 0, "must be one of|not supported"), ("hnswM", -1, "out of range"),
    ("hnswM", 1 << 40, "out of range"), ("pqSubvectors", 0, "out of range"),
    ("efSearch", 0, "out of range"), ("efConstruction", -5, "out of range"),
    ("k", "10", "integer|convert"), ("numProbes", 2.5, "convert"), ("rerankK", -1, "out of range"),
    ("pqCodebook", "shared", "not supported"), ("metric", "manhattan", "not supported"),
    ("probeEpsilon", -0.5, "out of range"), ("deterministic", "yes", "requires .* bool"),
]


@pytest.mark.parametrize("name, value, reason", STORED_PARAMS,
                         ids=[f"{n}={v!r}" for n, v, _ in STORED_PARAMS])
@pytest.mark.parametrize("section", ["buildSpec", "searchDefaults", "modelParams", "params"])
def test_manifest_params_are_checked_like_the_params_that_set_them(name, value, reason,
                                                                   section):
    import re

    doc = format3_doc() if section == "params" else good_doc()
    message = refused(parse, edit(**{f"{section}.{name}": value})(doc),
                      match=f"{section}.{name}={value!r}", error=IndexFormatError)
    assert re.search(reason, message), message


def test_manifest_params_are_converted_and_stats_kept():
    doc = edit(**{"buildSpec.hnswM": 16.0, "stats.balanceAtBuild": 1.25,
                  "searchDefaults.efSearch": None})(good_doc())
    manifest = parse(doc)
    assert manifest.build_spec["hnswM"] == 16 and type(manifest.build_spec["hnswM"]) is int
    assert manifest.stats == {"balanceAtBuild": 1.25}
    assert manifest.params["balanceAtBuild"] == 1.25 and manifest.params["efSearch"] is None
    assert manifest.spec.params.m == 16 and manifest.spec.index_type == "hnsw"


@pytest.mark.parametrize("value", ["1.5", float("inf"), True, [1], {"a": 1}], ids=repr)
def test_manifest_stats_must_be_finite_numbers(value):
    refused(parse, edit(**{"stats.balanceAtBuild": value})(good_doc()),
            match="stats.balanceAtBuild=", error=IndexFormatError)


def test_format_3_manifests_load_into_sections():
    doc = format3_doc(edit(**{"stats.balanceAtBuild": 1.5, "searchDefaults.efSearch": 80,
                              "searchDefaults.numProbes": 2, "modelParams.k": 7,
                              "modelParams.efSearch": 120, "buildSpec.seed": 3})(good_doc()))
    doc["userSet"] = ["efSearch"]
    manifest = parse(doc)
    assert manifest.build_spec == {"hnswM": 16, "efConstruction": 200, "numPartitions": 2,
                                   "seed": 3}
    assert manifest.search_defaults == {"numProbes": 2}  # the user's efSearch is no default
    assert manifest.model_params == {"k": 7, "efSearch": 120}
    assert manifest.stats == {"balanceAtBuild": 1.5}
    assert manifest.params["efSearch"] == 120 and manifest.params["indexType"] == "hnsw"
    again = parse(json.loads(manifest.to_json()))  # written back in the current format
    assert again == manifest and json.loads(manifest.to_json())["formatVersion"] == FORMAT_VERSION


@pytest.mark.parametrize("field, value", [("indexType", "ivf"), ("metric", "manhattan")])
def test_manifest_index_type_and_metric_must_be_known(field, value):
    refused(parse, edit(**{field: value})(good_doc()), match=f"{field}={value!r}",
            error=IndexFormatError)


@pytest.mark.parametrize("index_type, dropped", [("hnsw", "hnswM"), ("hnsw", "numPartitions"),
                                                 ("pq", None)])
def test_manifest_without_a_param_its_index_type_needs(index_type, dropped):
    doc = edit(indexType=index_type)(good_doc())  # a pq index with hnsw params lacks its own
    if dropped:
        del doc["buildSpec"][dropped]
    refused(parse, doc, match=f"lacks the params ['{dropped or 'pqSubvectors'}'",
            error=IndexFormatError)


TYPES = [
    ("build spec not an object", "field buildSpec is not an object", edit(buildSpec=["hnswM"])),
    ("build spec missing", "is damaged (KeyError('buildSpec')", edit(buildSpec=_DELETE)),
    ("search defaults not an object", "field searchDefaults is not an object",
     edit(searchDefaults=3)),
    ("model params not an object", "field modelParams is not an object", edit(modelParams="k")),
    ("stats not an object", "field stats is not an object", edit(stats=[1.0])),
    ("format 3 params not an object", "field params is not an object",
     lambda doc: {**format3_doc(doc), "params": ["x"]}),
    ("userSet holds a number", "field userSet is not a string", edit(userSet=[1])),
    ("userSet not a list", "is damaged (TypeError(\"'int' object is not iterable",
     edit(userSet=5)),
    ("index type not text", "field indexType is not a string", edit(indexType=7)),
    ("metric missing", "is damaged (KeyError('metric')", edit(metric=_DELETE)),
    ("huge text", "field metric is not a string", edit(metric="l" * 5000)),
    ("meta sha not text", "field meta is not a string", edit(**{"meta.sha256": 12})),
    ("meta not an object", "is damaged (TypeError(\"string indices must be integers",
     edit(meta="meta/v3.bin")),
    ("partitions not an object", "is damaged (TypeError('list indices must be integers",
     edit(partitions=[])),
    ("checksum not text", "field checksums is not a string",
     edit(**{"partitions.checksums.0": 1})),
    ("sq error not a number", "is damaged (ValueError(\"could not convert string to float",
     edit(**{"partitions.sqErrors.0": "big"})),
    ("sq error an object", "is damaged (TypeError(\"float() argument must be",
     edit(**{"partitions.sqErrors.0": {}})),
    ("deletes not lists", "is damaged (TypeError(\"'int' object is not iterable",
     edit(**{"partitions.deletes.1": 5})),
    ("delete entry missing its count", "is damaged (KeyError('count')",
     edit(**{"partitions.deletes.0.0": {"file": "d.parquet"}})),
    ("delete entry not an object", "is damaged (TypeError(\"string indices must be integers",
     edit(**{"partitions.deletes.0.0": "d.parquet"})),
    ("locations not an object", "is damaged (TypeError('list indices must be integers",
     edit(locations=["x"])),
    ("calibration not an object", "field calibration is not an object", edit(calibration=[1])),
    ("build seconds not an object", "field buildSeconds is not an object",
     edit(buildSeconds="1s")),
    ("unknown id type", "unknown id type 'uuid'", edit(idType="uuid")),
]


@pytest.mark.parametrize("reason, mutate", [(r, m) for _, r, m in TYPES],
                         ids=[n for n, _, _ in TYPES])
def test_manifest_fields_of_the_wrong_type(reason, mutate):
    refused(parse, mutate(good_doc()), match=reason, error=IndexFormatError)


@pytest.mark.parametrize("name", ["sparkann-index-v0", "", None, 3, "SPARKANN-INDEX", _DELETE],
                         ids=["other", "empty", "null", "number", "upper-case", "missing"])
def test_manifest_with_the_wrong_format_name(name):
    refused(parse, edit(format=name)(good_doc()), match="is not a sparkann index",
            error=IndexFormatError)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99, str(FORMAT_VERSION + 1)])
def test_manifest_in_a_newer_format_says_to_upgrade(version):
    message = refused(parse, edit(formatVersion=version)(good_doc()), match="upgrade sparkann",
                      error=IndexFormatError)
    assert ROOT in message


@pytest.mark.parametrize("version", [2, 1, 0, -5])
def test_manifest_in_an_older_format_says_to_rebuild(version):
    refused(parse, edit(formatVersion=version)(good_doc()), match="rebuild the index",
            error=IndexFormatError)


@pytest.mark.parametrize("version, reason", [
    (None, "formatVersion=None is not an integer"), ("two", "invalid literal for int()"),
    ([2], "formatVersion=[2] is not an integer"), (_DELETE, "KeyError('formatVersion')")],
    ids=repr)
def test_manifest_format_version_unreadable(version, reason):
    refused(parse, edit(formatVersion=version)(good_doc()), match=reason, error=IndexFormatError)


@pytest.mark.parametrize("version, reason", [
    (float("inf"), "formatVersion=inf is not"), (2.5, "formatVersion=2.5 is not"),
    (2.0, "formatVersion=2.0 is not"), (True, "formatVersion=True is not"),
    ("2.5", "invalid literal for int() with base 10: '2.5'")], ids=repr)
def test_manifest_format_version_must_be_an_integer(version, reason):
    refused(parse, edit(formatVersion=version)(good_doc()), match=reason, error=IndexFormatError)


@pytest.mark.parametrize("text", ["", "{", "not json", "{'format': 1}", b"\xff\xfe\x00",
                                  "[]", "null", '"sparkann-index"', "42", '{"format": '],
                         ids=repr)
def test_manifest_that_is_not_a_json_object(text):
    reason = ("is not a sparkann index" if text in ("[]", "null", '"sparkann-index"', "42") else
              "UnicodeDecodeError" if isinstance(text, bytes) else "JSONDecodeError")
    refused(parse, text, match=reason, error=IndexFormatError)


def test_manifest_nested_too_deeply():
    refused(parse, DEEP, match="JSON nested too deeply", error=IndexFormatError)


def test_manifest_version_mismatch():
    refused(parse, good_doc(), 4, match="says it is version 3", error=IndexFormatError)


@FUZZ
@given(data=st.data())
def test_manifest_with_flipped_bytes_parses_or_is_refused(data):
    text = bytearray(good_manifest().to_json().encode())
    for _ in range(data.draw(st.integers(1, 3))):
        text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.integers(0, 255))
    try:
        parse(bytes(text))
    except IndexFormatError as err:
        assert str(err)


# ================================================================ meta file


def good_meta() -> Meta:
    rng = np.random.default_rng(0)
    return Meta(centroids=rng.standard_normal((4, DIM)).astype(np.float32),
                shard_counts=np.array([1, 0, 2, 1]), centroid_graph=b"graph-bytes",
                shared=b"shared")


HEAD = struct.Struct("<8sIQ")


def meta_parts(data: bytes):
    magic, version, head_len = HEAD.unpack_from(data)
    layout = json.loads(data[HEAD.size:HEAD.size + head_len])
    return layout, data[HEAD.size + head_len:]


def meta_bytes(layout, body: bytes, magic=b"SANNMETA", version=1) -> bytes:
    head = json.dumps(layout).encode()
    return HEAD.pack(magic, version, len(head)) + head + body


def test_meta_round_trip():
    meta = good_meta()
    back = Meta.from_bytes(meta.to_bytes(), DIM)
    np.testing.assert_array_equal(back.centroids, meta.centroids)
    np.testing.assert_array_equal(back.shard_counts, meta.shard_counts)
    assert back.centroid_graph == meta.centroid_graph and back.shared == meta.shared
    empty = Meta(meta.centroids, meta.shard_counts)
    assert Meta.from_bytes(bytearray(empty.to_bytes()), DIM).centroid_graph == b""


def test_meta_truncated_anywhere():
    data = good_meta().to_bytes()
    for cut in range(len(data)):
        refused(Meta.from_bytes, data[:cut], DIM, match="the meta file is damaged",
                error=IndexFormatError)


def meta_edit(name: str, **spec):
    def mutate(layout, body):
        layout["arrays"][name].update(spec)
        return layout, body
    return mutate


META_CASES = [
    ("offset past the end", "array lies outside the file", meta_edit("shared", offset=10_000)),
    ("offset negative", "array lies outside the file", meta_edit("centroids", offset=-8)),
    ("nbytes past the end", "array lies outside the file",
     meta_edit("shared", shape=[4096], nbytes=4096)),
    ("huge shape and nbytes", "array lies outside the file",
     meta_edit("centroids", shape=[1 << 40, DIM], nbytes=32 << 40)),
    ("shape product wraps around int64", "array size does not match its shape",
      # 8 * (2**61 + 4) == 2**64 + 32 rows of 4 bytes
     meta_edit("centroids", shape=[8, (1 << 61) + 4], nbytes=128)),
    ("nbytes disagrees with the shape", "array size does not match its shape",
     meta_edit("centroids", nbytes=124)),
    ("negative shape", "array size does not match its shape",
     meta_edit("centroids", shape=[-4, -DIM])),
    ("shape not a list", "damaged ('int' object is not iterable)",
     meta_edit("centroids", shape=32)),
    ("shape of text", "layout number 'four' is not an integer",
     meta_edit("centroids", shape=["four", "eight"])),
    ("offset as text", "layout number 'zero' is not an integer",
     meta_edit("centroids", offset="zero")),
    ("unknown dtype f8", "damaged ('<f8')", meta_edit("centroids", dtype="<f8", nbytes=256)),
    ("object dtype", "damaged ('|O')", meta_edit("centroids", dtype="|O")),
    ("void dtype", "damaged ('|V8')", meta_edit("shard_counts", dtype="|V8")),
    ("big-endian dtype", "damaged ('>f4')", meta_edit("centroids", dtype=">f4")),
    ("one-dimensional centroids", "centroids have shape (32,)",
     meta_edit("centroids", shape=[4 * DIM])),
    ("no centroids", "centroids have shape (0, 8)",
     meta_edit("centroids", shape=[0, DIM], nbytes=0)),
    ("shard counts do not match", "shard counts do not match its centroids",
     meta_edit("shard_counts", shape=[3], nbytes=24)),
    ("missing array", "damaged ('shared')", lambda layout, body: (
        {"arrays": {k: v for k, v in layout["arrays"].items() if k != "shared"}}, body)),
    ("spec not an object", "damaged (string indices must be integers",
     lambda layout, body: ({"arrays": dict(layout["arrays"], shared="x")}, body)),
    ("arrays not an object", "damaged (list indices must be integers",
     lambda layout, body: ({"arrays": [1, 2]}, body)),
    ("layout a list", "damaged (list indices must be integers",
     lambda layout, body: ([layout], body)),
]


@pytest.mark.parametrize("reason, mutate", [(r, m) for _, r, m in META_CASES],
                         ids=[n for n, _, _ in META_CASES])
def test_meta_with_a_damaged_layout(reason, mutate):
    layout, body = meta_parts(good_meta().to_bytes())
    refused(Meta.from_bytes, meta_bytes(*mutate(layout, body)), DIM, match=reason,
            error=IndexFormatError)


def test_meta_for_another_dimension():
    data = good_meta().to_bytes()
    for dim in (DIM - 1, DIM + 1, 4 * DIM):
        refused(Meta.from_bytes, data, dim, match="not (clusters,", error=IndexFormatError)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_meta_with_non_finite_centroids(value):
    meta = good_meta()
    centroids = meta.centroids.copy()
    centroids[2, 5] = value
    data = Meta(centroids, meta.shard_counts).to_bytes()
    refused(Meta.from_bytes, data, DIM, match="non-finite", error=IndexFormatError)


@pytest.mark.parametrize("counts", [
    [1 << 62, 1 << 62, 1 << 62, (1 << 62) + 1],  # sums to 1 in int64
    [(1 << 63) - 1, 1, 0, 0],  # sums to -2**63
    [1 << 31, 0, 0, 0],  # more partitions than int32 partition ids
    [(1 << 30)] * 4,  # each fits, the sum does not
], ids=["wraps-to-one", "wraps-negative", "one-too-many", "sum-too-many"])
def test_meta_with_shard_counts_that_overflow(counts):
    meta = good_meta()
    data = Meta(meta.centroids, np.array(counts, dtype=np.int64)).to_bytes()
    refused(Meta.from_bytes, data, DIM, match="shard counts", error=IndexFormatError)


def test_meta_with_negative_shard_counts():
    meta = good_meta()
    data = Meta(meta.centroids, np.array([1, -1, 2, 1])).to_bytes()
    refused(Meta.from_bytes, data, DIM, match="shard counts", error=IndexFormatError)


def test_meta_with_a_bad_header():
    data = good_meta().to_bytes()
    layout, body = meta_parts(data)
    head = json.dumps(layout).encode()
    for bad in (b"XANNMETA" + data[8:],
                meta_bytes(layout, body, version=2),
                HEAD.pack(b"SANNMETA", 1, 1 << 63) + head + body,
                HEAD.pack(b"SANNMETA", 1, len(head) + len(body) + 1) + head + body,
                HEAD.pack(b"SANNMETA", 1, len(head) - 1) + head + body,
                HEAD.pack(b"SANNMETA", 1, 4) + b"{[}]" + body):
        refused(Meta.from_bytes, bad, DIM, match="the meta file is damaged",
                error=IndexFormatError)


@pytest.mark.parametrize("spec", [{"offset": float("inf")}, {"shape": [float("inf"), DIM]},
                                  {"nbytes": float("-inf")}, {"offset": False},
                                  {"shape": [4.0, DIM]}, {"nbytes": 128.0}], ids=repr)
def test_meta_with_a_layout_number_that_is_not_an_integer(spec):
    layout, body = meta_parts(good_meta().to_bytes())
    layout, body = meta_edit("centroids", **spec)(layout, body)
    refused(Meta.from_bytes, meta_bytes(layout, body), DIM, match="is not an integer",
            error=IndexFormatError)


def test_meta_header_nested_too_deeply():
    head = DEEP.encode()
    refused(Meta.from_bytes, HEAD.pack(b"SANNMETA", 1, len(head)) + head, DIM,
            match="JSON nested too deeply", error=IndexFormatError)


@FUZZ
@given(data=st.data())
def test_meta_with_flipped_bytes_parses_or_is_refused(data):
    raw = bytearray(good_meta().to_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        Meta.from_bytes(bytes(raw), DIM)
    except IndexFormatError as err:
        assert str(err)


# ============================================================== HNSW payload

ARRAYS = hnsw_module._ARRAY_FIELDS


@cache
def graph_payload(n: int = 200, m: int = 8) -> bytes:
    graph = hnswlib.Index(space="l2", dim=DIM)
    graph.init_index(max_elements=n, M=m, ef_construction=40, random_seed=1)
    graph.add_items(datasets.clustered(n, DIM, seed=1), np.arange(n), num_threads=1)
    return graph_to_bytes(graph)


def split(payload: bytes):
    """(header, {array name: array}) of a payload."""
    _, _, head_len = HEAD.unpack_from(payload)
    header = json.loads(payload[HEAD.size:HEAD.size + head_len])
    offset, arrays = HEAD.size + head_len, {}
    for name, dtype in ARRAYS.items():
        size = header["arrays"][name] * np.dtype(dtype).itemsize
        arrays[name] = np.frombuffer(payload[offset:offset + size], dtype).copy()
        offset += size
    return header, arrays


def join(header, arrays, recount=True, magic=b"SANNHNSW", version=1) -> bytes:
    header = copy.deepcopy(header)
    if recount:
        header["arrays"] = {name: len(arrays[name]) for name in ARRAYS}
    head = json.dumps(header).encode()
    return (HEAD.pack(magic, version, len(head)) + head
            + b"".join(np.ascontiguousarray(arrays[name]).tobytes() for name in ARRAYS))


def level0(header, arrays) -> np.ndarray:
    """The level-0 records (n, size_data_per_element) as bytes, a view into the array."""
    scalars = header["scalars"]
    return arrays["data_level0"].view(np.uint8).reshape(scalars["cur_element_count"],
                                                        scalars["size_data_per_element"])


def upper_links(header, arrays) -> np.ndarray:
    return arrays["link_lists"].view(np.uint32).reshape(-1, header["scalars"]["max_M"] + 1)


def load(payload: bytes, dim: int = DIM, space: str = "l2"):
    return graph_from_bytes(payload, dim, space)


def test_hnsw_payload_round_trip():
    header, arrays = split(graph_payload())
    graph = load(join(header, arrays))
    assert graph.get_current_count() == 200
    assert header["scalars"]["max_elements"] == 200


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"hnswlib.{name} was reached with a hostile header")


@pytest.mark.parametrize("fields", [
    {"max_elements": 10**12},
    {"max_elements": 10**12, "cur_element_count": 10**12},
    {"max_elements": 2**64 - 1},
    {"max_elements": 10**30},
], ids=["max_elements", "max_elements-and-count", "max_elements-uint64", "max_elements-huge"])
def test_hnsw_huge_max_elements_is_refused_before_hnswlib_allocates(fields, monkeypatch):
    header, arrays = split(graph_payload())
    header["scalars"].update(fields)
    payload = join(header, arrays)
    monkeypatch.setattr(hnsw_module, "hnswlib", _Untouchable())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(load, payload, match="damaged")
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kb < 100_000, f"parsing a {len(payload)}-byte payload grew by {grown_kb} kB"


@pytest.mark.parametrize("fields", [
    {"max_M": 10**6, "max_M0": 2 * 10**6},
    {"size_data_per_element": 10**12},
    {"max_M0": 17},
    {"offset_data": 0},
    {"label_offset": 4},
    {"size_links_per_element": 4},
    {"offset_level0": 8},
    {"enterpoint_node": 200},
    {"enterpoint_node": -1},
    {"max_level": 65},
    {"max_level": -2},
    {"cur_element_count": -1},
    {"cur_element_count": 199},
], ids=repr)
def test_hnsw_inconsistent_header_is_refused(fields, monkeypatch):
    header, arrays = split(graph_payload())
    header["scalars"].update(fields)
    monkeypatch.setattr(hnsw_module, "hnswlib", _Untouchable())
    refused(load, join(header, arrays), match="damaged")


def test_hnsw_wrong_dimension_or_space():
    payload = graph_payload()
    refused(load, payload, DIM + 1, match=f"dimension {DIM}, but the index has {DIM + 1}")
    refused(load, payload, DIM, "ip", match="space 'l2'; the index needs 'ip'")
    refused(load, payload, DIM, "cosine", match="space")


def test_hnsw_level0_links_out_of_range():
    header, arrays = split(graph_payload())
    records = level0(header, arrays)
    links = records[:, :header["scalars"]["offset_data"]].copy().view(np.uint32)
    for row, column, value in ((5, 1, 200), (7, 2, 2**32 - 1), (9, 0, 17)):  # id, id, count
        bad = links.copy()
        bad[row, column] = value
        broken = {**arrays, "data_level0": arrays["data_level0"].copy()}
        level0(header, broken)[:, :header["scalars"]["offset_data"]] = bad.view(np.uint8)
        refused(load, join(header, broken), match="links out of range")


def test_hnsw_upper_links_out_of_range():
    header, arrays = split(graph_payload())
    for column, value in ((1, 200), (1, 10**9), (0, 9)):  # a link id, a link id, the count
        broken = {**arrays, "link_lists": arrays["link_lists"].copy()}
        blocks = upper_links(header, broken)
        blocks[0, 0] = max(blocks[0, 0], 1)
        blocks[0, column] = value
        refused(load, join(header, broken), match="links out of range")


@pytest.mark.parametrize("table", ["label_lookup_external", "label_lookup_internal"])
@pytest.mark.parametrize("value", [200, 2**31, 2**32 - 1])
def test_hnsw_label_tables_out_of_range(table, value):
    header, arrays = split(graph_payload())
    broken = {**arrays, table: arrays[table].copy()}
    broken[table][3] = value
    refused(load, join(header, broken), match="label table out of range")


def test_hnsw_row_labels_out_of_range():
    header, arrays = split(graph_payload())
    label_offset = header["scalars"]["label_offset"]
    broken = {**arrays, "data_level0": arrays["data_level0"].copy()}
    level0(header, broken)[11, label_offset:label_offset + 8] = np.frombuffer(
        np.uint64(500).tobytes(), np.uint8)
    refused(load, join(header, broken), match="row labels out of range")


@pytest.mark.parametrize("table", ["label_lookup_external", "label_lookup_internal"])
def test_hnsw_label_lookup_with_a_repeated_entry_is_refused(table):
    header, arrays = split(graph_payload())
    broken = {**arrays, table: arrays[table].copy()}
    broken[table][1] = broken[table][0]
    refused(load, join(header, broken), match="one to one")


def test_hnsw_element_levels_out_of_range():
    header, arrays = split(graph_payload())
    for value in (-1, header["scalars"]["max_level"] + 1):
        broken = {**arrays, "element_levels": arrays["element_levels"].copy()}
        broken["element_levels"][0] = value
        refused(load, join(header, broken), match="damaged")


@pytest.mark.parametrize("name", list(ARRAYS))
def test_hnsw_truncated_arrays(name):
    header, arrays = split(graph_payload())
    payload = join(header, arrays)
    short = {**arrays, name: arrays[name][:-1]}
    refused(load, join(header, short), match="damaged")  # recounted: inconsistent sizes
    refused(load, join(header, short, recount=False), match="damaged")  # counted: truncated
    for cut in (1, 7, len(payload) // 2):
        refused(load, payload[:-cut], match="damaged")


def test_hnsw_array_counts_in_the_header():
    header, arrays = split(graph_payload())
    for value in (-1, "12", 1.5, None, 10**30):
        bad = copy.deepcopy(header)
        bad["arrays"]["element_levels"] = value
        refused(load, join(bad, arrays, recount=False), match="damaged")
    bad = copy.deepcopy(header)
    del bad["arrays"]["link_lists"]
    refused(load, join(bad, arrays, recount=False), match="damaged")


def test_hnsw_trailing_bytes():
    payload = graph_payload()
    refused(load, payload + b"\x00", match="trailing bytes")
    refused(load, payload + payload, match="trailing bytes")


def test_hnsw_bad_header_bytes():
    payload = graph_payload()
    header, arrays = split(payload)
    _, _, head_len = HEAD.unpack_from(payload)
    rest = payload[HEAD.size:]
    refused(load, b"XANNHNSW" + payload[8:], match="bad magic")
    refused(load, HEAD.pack(b"SANNHNSW", 2, head_len) + rest, match="newer")
    refused(load, HEAD.pack(b"SANNHNSW", 1, 2**64 - 1) + rest, match="header length")
    refused(load, HEAD.pack(b"SANNHNSW", 1, len(rest) + 1) + rest, match="header length")
    refused(load, HEAD.pack(b"SANNHNSW", 1, (1 << 20) + 1) + rest + bytes(1 << 20),
            match="header length")
    refused(load, HEAD.pack(b"SANNHNSW", 1, head_len - 1) + rest, match="damaged")
    for head in (b"not json", b"[1, 2]", b'{"scalars": 1}', b'{"scalars": {}}', b"{}",
                 b'{"scalars": {"a": [1]}, "arrays": {}}', b'{"scalars": {"a": {}}, "arrays": {}}'):
        refused(load, HEAD.pack(b"SANNHNSW", 1, len(head)) + head, match="damaged")
    for name in ("dim", "space", "max_M", "cur_element_count", "size_data_per_element"):
        bad = copy.deepcopy(header)
        del bad["scalars"][name]
        refused(load, join(bad, arrays),
                match="has space None" if name == "space" else f"field '{name}' is None")


def marked_payload() -> tuple[bytes, int]:
    """A payload whose every row carries hnswlib's deletion mark, as an old writer or a
    hostile one might leave it."""
    header, arrays = split(graph_payload())
    records = level0(header, arrays)
    records[:, hnsw_module._DELETE_MARK_BYTE] = 0x01
    header["scalars"]["has_deletions"] = True
    return join(header, arrays), header["scalars"]["cur_element_count"]


def test_hnsw_deletion_marks_in_a_payload_are_cleared_at_load():
    payload, n = marked_payload()
    graph = load(payload)
    graph.set_ef(n)
    labels, _ = graph.knn_query(datasets.clustered(3, DIM, seed=1, sample_seed=2), k=n)
    assert all(sorted(row) == list(range(n)) for row in labels.tolist())
    assert np.asarray(graph.get_items(np.arange(n))).shape == (n, DIM)
    context = PartitionContext(get_metric("l2"), DIM, {"hnswM": 8, "efConstruction": 40})
    index = HNSWIndex.load(StoredPartition(payload), context)
    assert not index.hidden.any()
    labels, _ = index.search(datasets.clustered(3, DIM, seed=1, sample_seed=2), n,
                             HNSWKnobs(ef_search=n))
    assert (labels >= 0).all()
    index.hide([0, 1])  # and rows can be hidden again (hnswlib refuses to mark a marked row)


def test_hnsw_graph_serialised_after_mark_deleted_loads_with_no_rows_hidden():
    n = 100
    graph = hnswlib.Index(space="l2", dim=DIM)
    graph.init_index(max_elements=n, M=8, ef_construction=40, random_seed=1)
    vectors = datasets.clustered(n, DIM, seed=1)
    graph.add_items(vectors, np.arange(n), num_threads=1)
    for label in range(0, n, 2):
        graph.mark_deleted(label)
    payload = graph_to_bytes(graph)
    header, arrays = split(payload)
    assert not level0(header, arrays)[:, hnsw_module._DELETE_MARK_BYTE].any()
    assert header["scalars"]["has_deletions"] is False
    graph.set_ef(n)
    still, _ = graph.knn_query(vectors[:1], k=n // 2)  # the source graph keeps its marks
    assert (still % 2 == 1).all()
    loaded = load(payload)
    loaded.set_ef(n)
    labels, _ = loaded.knn_query(vectors[:1], k=n)
    assert sorted(labels[0].tolist()) == list(range(n))


@pytest.mark.parametrize("name, value", [
    ("mult", 0.3), ("M", 9), ("ser_version", 2), ("ef_construction", 2**70), ("seed", -1),
    ("ef", -1), ("dim", DIM + 0.5), ("ef", _DELETE), ("mult", _DELETE),
], ids=["mult", "M", "ser_version", "huge-ef_construction", "negative-seed", "negative-ef",
        "float-dim", "missing-ef", "missing-mult"])
def test_hnsw_header_scalars_hnswlib_reads_are_checked(name, value):
    header, arrays = split(graph_payload())
    if value is _DELETE:
        del header["scalars"][name]
    else:
        header["scalars"][name] = value
    refused(load, join(header, arrays),
            match="M=9 but max_M=8" if name == "M" else f"header field '{name}' is")


@pytest.mark.parametrize("name", ["cur_element_count", "dim", "max_level"])
def test_hnsw_infinite_header_scalar(name):
    header, arrays = split(graph_payload())
    header["scalars"][name] = float("inf")
    refused(load, join(header, arrays), match="unreadable header (Infinity is not a number)")


def test_hnsw_header_nested_too_deeply():
    head = DEEP.encode()
    refused(load, HEAD.pack(b"SANNHNSW", 1, len(head)) + head, match="JSON nested too deeply")


CHILD = textwrap.dedent("""
    import sys
    import types

    # Import sparkann.index alone: the package's __init__ would load pyspark and sklearn.
    package = types.ModuleType("sparkann")
    package.__path__ = [sys.argv[3]]
    sys.modules["sparkann"] = package

    import numpy as np
    from sparkann.index import PartitionContext, StoredPartition
    from sparkann.index.hnsw import HNSWIndex, HNSWKnobs
    from sparkann.metrics import get_metric

    payload = open(sys.argv[1], "rb").read()
    context = PartitionContext(get_metric("l2"), int(sys.argv[2]), {"hnswM": 8,
                                                                    "efConstruction": 40})
    try:
        index = HNSWIndex.load(StoredPartition(payload), context)
    except ValueError as err:
        print("REFUSED", err)
        sys.exit(0)
    vectors = index.live_vectors(np.arange(index.count))
    index.search(vectors, 5, HNSWKnobs(ef_search=16))
    print("LOADED AND SEARCHED")
""")


PACKAGE_DIR = os.path.dirname(os.path.abspath(sparkann.__file__))


def refused_in_a_child(payload: bytes, tmp_path) -> None:
    """Load and search in a fresh interpreter: a crash there fails the test, not the run."""
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(DIM), PACKAGE_DIR],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the child died with {done.returncode}: {done.stderr[-500:]}"
    assert done.stdout.startswith("REFUSED"), done.stdout


def test_hnsw_child_process_check_passes_a_good_payload(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(graph_payload())
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(DIM), PACKAGE_DIR],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "LOADED AND SEARCHED" in done.stdout, done.stderr[-500:]
    payload = bytearray(graph_payload())
    payload[8] = 9
    refused_in_a_child(bytes(payload), tmp_path)


def test_hnsw_uninitialised_index_in_the_header(tmp_path):
    header, arrays = split(graph_payload())
    header["scalars"]["index_inited"] = False
    refused_in_a_child(join(header, arrays), tmp_path)


def test_hnsw_entry_point_below_the_top_level(tmp_path):
    header, arrays = split(graph_payload())
    levels = arrays["element_levels"]
    assert header["scalars"]["max_level"] >= 1
    header["scalars"]["enterpoint_node"] = int(np.flatnonzero(levels == 0)[0])
    refused_in_a_child(join(header, arrays), tmp_path)


def test_hnsw_upper_link_to_an_element_without_that_level(tmp_path):
    header, arrays = split(graph_payload())
    levels = arrays["element_levels"]
    entry = header["scalars"]["enterpoint_node"]
    first_block = int(np.maximum(levels[:entry], 0).sum())
    blocks = upper_links(header, arrays)
    top = blocks[first_block + levels[entry] - 1]  # the entry point's top-level links
    top[0], top[1] = 1, int(np.flatnonzero(levels == 0)[0])
    refused_in_a_child(join(header, arrays), tmp_path)


@pytest.mark.parametrize("space", ["l2", "cosine"])
@pytest.mark.parametrize("m", [2, 3, 16, 2048])
@pytest.mark.parametrize("n", [0, 1, 2, 50])
def test_hnsw_valid_graphs_of_any_size_load(n, m, space):
    vectors = datasets.clustered(max(n, 1), DIM, seed=3)[:n]
    graph = hnswlib.Index(space=space, dim=DIM)
    graph.init_index(max_elements=n, M=m, ef_construction=20, random_seed=n + m)
    if n:
        graph.add_items(vectors, np.arange(n), num_threads=2)
    loaded = graph_from_bytes(graph_to_bytes(graph), DIM, space)
    assert loaded.get_current_count() == n
    if n:
        np.testing.assert_array_equal(loaded.get_items(np.arange(n)), graph.get_items(np.arange(n)))
        # k=1: a graph this sparse may not reach all n rows from every query
        loaded.set_ef(n)
        graph.set_ef(n)
        np.testing.assert_array_equal(loaded.knn_query(vectors, k=1)[0],
                                      graph.knn_query(vectors, k=1)[0])
        loaded.resize_index(n + 3)
        loaded.add_items(vectors[:1].repeat(3, 0), np.arange(n, n + 3))
        assert graph_from_bytes(graph_to_bytes(loaded), DIM, space).get_current_count() == n + 3


def test_hnsw_index_round_trips_after_add_and_hide():
    context = PartitionContext(get_metric("l2"), DIM, {"hnswM": 4, "efConstruction": 20})
    vectors = datasets.clustered(80, DIM, seed=4)
    index = HNSWIndex.build(vectors[:50], context, seed=1, threads=2)
    index.add(vectors[50:], threads=2)
    index.hide([3, 60])
    back = HNSWIndex.load(index.store(), context)
    assert back.count == 80 and not back.hidden.any()
    np.testing.assert_allclose(back.live_vectors(np.arange(80)), vectors, rtol=1e-6)


def test_hnsw_mult_within_rounding_of_one_over_ln_m_loads():
    header, arrays = split(graph_payload())
    header["scalars"]["mult"] *= 1 + 1e-13
    assert load(join(header, arrays)).get_current_count() == 200


def test_hnsw_consistently_permuted_label_tables_load():
    header, arrays = split(graph_payload())
    order = np.random.default_rng(0).permutation(200)
    permuted = {**arrays, "label_lookup_external": arrays["label_lookup_external"][order],
                "label_lookup_internal": arrays["label_lookup_internal"][order]}
    assert load(join(header, permuted)).get_current_count() == 200


def _swapped(array: np.ndarray, i: int = 0, j: int = 1) -> np.ndarray:
    out = array.copy()
    out[[i, j]] = out[[j, i]]
    return out


def test_hnsw_label_tables_that_disagree_with_the_rows_are_refused():
    header, arrays = split(graph_payload())
    for table in ("label_lookup_external", "label_lookup_internal"):  # one table permuted
        broken = {**arrays, table: _swapped(arrays[table])}
        refused(load, join(header, broken), match="one to one")
    broken = {**arrays, "data_level0": arrays["data_level0"].copy()}  # two rows' labels swapped
    at = header["scalars"]["label_offset"]
    records = level0(header, broken)
    records[[0, 1], at:at + 8] = records[[1, 0], at:at + 8]
    refused(load, join(header, broken), match="one to one")


SCALARS = [
    ("index_inited", 0), ("index_inited", "true"), ("index_inited", _DELETE),
    ("ep_added", False), ("ep_added", 1), ("normalize", True), ("normalize", _DELETE),
    ("allow_replace_deleted", True), ("allow_replace_deleted", _DELETE),
    ("has_deletions", 0), ("has_deletions", _DELETE), ("ser_version", 0),
    ("ser_version", True), ("ser_version", _DELETE), ("M", 1), ("M", 8.0), ("M", _DELETE),
    ("max_M", True), ("mult", 1), ("mult", "0.48"), ("ef_construction", 7),
    ("ef_construction", _DELETE), ("ef", 2**64), ("ef", 10.0), ("seed", 2**64),
    ("seed", _DELETE), ("num_threads", -1), ("num_threads", 2**31), ("num_threads", _DELETE),
    ("cur_element_count", True), ("dim", "8"), ("max_level", 1.0), ("enterpoint_node", 2.0),
    ("max_elements", _DELETE), ("offset_level0", False), ("space", 5), ("space", _DELETE),
]


@pytest.mark.parametrize("name, value", SCALARS, ids=[
    f"{n}=missing" if v is _DELETE else f"{n}={v!r}" for n, v in SCALARS])
def test_hnsw_header_scalars_of_the_wrong_type_or_value(name, value, monkeypatch):
    header, arrays = split(graph_payload())
    if value is _DELETE:
        del header["scalars"][name]
    else:
        header["scalars"][name] = value
    monkeypatch.setattr(hnsw_module, "hnswlib", _Untouchable())
    refused(load, join(header, arrays),
            match="has space" if name == "space" else f"header field '{name}'")


@pytest.mark.parametrize("text", [b"NaN", b"-Infinity", b"1e400"])
def test_hnsw_non_finite_numbers_in_the_header(text):
    header, arrays = split(graph_payload())
    header["scalars"]["mult"] = 0.125
    head = json.dumps(header).encode().replace(b"0.125", text)
    body = b"".join(np.ascontiguousarray(arrays[name]).tobytes() for name in ARRAYS)
    refused(load, HEAD.pack(b"SANNHNSW", 1, len(head)) + head + body, match="damaged")


def test_hnsw_array_count_that_is_a_bool():
    header, arrays = split(graph_payload(1, 4))
    assert header["arrays"]["element_levels"] == 1
    header["arrays"]["element_levels"] = True
    refused(load, join(header, arrays, recount=False), match="damaged")


@pytest.mark.parametrize("fields", [{"max_level": 0}, {"enterpoint_node": 0},
                                    {"ep_added": True}], ids=repr)
def test_hnsw_empty_graph_needs_hnswlibs_empty_entry_point(fields):
    graph = hnswlib.Index(space="l2", dim=DIM)
    graph.init_index(max_elements=0, M=4, ef_construction=40, random_seed=1)
    header, arrays = split(graph_to_bytes(graph))
    assert load(join(header, arrays)).get_current_count() == 0
    header["scalars"].update(fields)
    refused(load, join(header, arrays), match="damaged")


def test_hnsw_upper_level_link_blocks_must_match_the_levels():
    header, arrays = split(graph_payload())
    levels = arrays["element_levels"]
    low = int(np.flatnonzero(levels == 0)[0])
    for change in (+1, -1):  # one level more or less than the blocks that are stored
        broken = {**arrays, "element_levels": levels.copy()}
        broken["element_levels"][low if change > 0 else int(np.argmax(levels > 0))] += change
        refused(load, join(header, broken), match="damaged")


@FUZZ
@given(data=st.data())
def test_hnsw_payload_with_flipped_array_bytes_loads_or_is_refused(data):
    payload = graph_payload(60, 4)
    _, _, head_len = HEAD.unpack_from(payload)
    start = HEAD.size + head_len  # the arrays; header scalars are covered above
    raw = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(start, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        load(bytes(raw))
    except ValueError as err:
        assert str(err)


# ================================================================ PQ formats

M, BITS = 4, 8


@cache
def pq_index(bits: int = BITS) -> tuple[PQIndex, PartitionContext]:
    vectors = datasets.clustered(300, DIM, seed=2)
    params = {"pqSubvectors": M, "pqBits": bits, "pqCodebook": "partition", "rerankK": 0}
    context = PartitionContext(get_metric("l2"), DIM, params, vectors.mean(0))
    return PQIndex.build(vectors, context, seed=0, threads=1), context


PQ_HEAD = struct.Struct("<8sQ")
CB_HEAD = struct.Struct("<8sIII")


def pq_payload(head: dict | bytes, codes: bytes, magic=b"SANNPQ02", head_len=None) -> bytes:
    head = head if isinstance(head, bytes) else json.dumps(head).encode()
    return PQ_HEAD.pack(magic, len(head) if head_len is None else head_len) + head + codes


def load_pq(payload: bytes | None = None, codebook: bytes | None = None, bits: int = BITS):
    index, context = pq_index(bits)
    stored = index.store()
    return PQIndex.load(StoredPartition(stored.payload if payload is None else payload,
                                        stored.codebook if codebook is None else codebook),
                        context)


@pytest.mark.parametrize("bits", [4, 8])
def test_pq_formats_round_trip(bits):
    index, _ = pq_index(bits)
    loaded = load_pq(bits=bits)
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.codewords, index.codewords)


def codes_of(bits=BITS) -> bytes:
    return pq_index(bits)[0].codes.tobytes()


PAYLOADS = [
    ("wrong m", pq_payload({"n": 300, "m": 8, "nbits": 8}, codes_of()), "m=8, bits=8"),
    ("wrong bits", pq_payload({"n": 300, "m": 4, "nbits": 4}, codes_of()), "m=4, bits=4"),
    ("one code byte short", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of()[:-1]),
     "code bytes"),
    ("one code byte more", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of() + b"\x00"),
     "code bytes"),
    ("more rows than codes", pq_payload({"n": 301, "m": 4, "nbits": 8}, codes_of()),
     "code bytes"),
    ("huge n", pq_payload({"n": 10**18, "m": 4, "nbits": 8}, codes_of()), "code bytes"),
    ("negative n", pq_payload({"n": -1, "m": 4, "nbits": 8}, b""), "damaged"),
    ("n as text", pq_payload({"n": "many", "m": 4, "nbits": 8}, codes_of()), "damaged"),
    ("missing nbits", pq_payload({"n": 300, "m": 4}, codes_of()), "damaged"),
    ("header a list", pq_payload(b"[300, 4, 8]", codes_of()), "damaged"),
    ("header not json", pq_payload(b"{n: 300}", codes_of()), "damaged"),
    ("older magic", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), magic=b"SANNPQ01"),
     "damaged"),
    ("newer magic", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), magic=b"SANNPQ03"),
     "newer format; upgrade sparkann"),
    ("much newer magic", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(),
                                    magic=b"SANNPQ09"), "upgrade sparkann"),
    ("other magic", pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), magic=b"SANNPQ0X"),
     "damaged"),
    ("n a float", pq_payload({"n": 300.0, "m": 4, "nbits": 8}, codes_of()), "damaged"),
    ("m a float", pq_payload({"n": 300, "m": 4.5, "nbits": 8}, codes_of()), "damaged"),
    ("nbits a bool", pq_payload({"n": 300, "m": 4, "nbits": True}, codes_of()), "damaged"),
    ("n as digits", pq_payload({"n": "300", "m": 4, "nbits": 8}, codes_of()), "damaged"),
    ("n NaN", pq_payload(b'{"n": NaN, "m": 4, "nbits": 8}', codes_of()), "damaged"),
    ("n overflowing to infinity", pq_payload(b'{"n": 1e400, "m": 4, "nbits": 8}', codes_of()),
     "damaged"),
    ("header length past the end",
     pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), head_len=10**6), "damaged"),
    ("header length beyond uint63",
     pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), head_len=2**64 - 1), "damaged"),
    ("header length above the limit",
     pq_payload(b" " * 70_000 + b'{"n": 0, "m": 4, "nbits": 8}', b""), "damaged"),
    ("header length short",
     pq_payload({"n": 300, "m": 4, "nbits": 8}, codes_of(), head_len=10), "damaged"),
    ("empty", b"", "damaged"),
]


@pytest.mark.parametrize("payload, match", [(p, m) for _, p, m in PAYLOADS],
                         ids=[n for n, _, _ in PAYLOADS])
def test_pq_damaged_payloads(payload, match):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(load_pq, payload, match=match)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown_kb < 100_000, f"refusing the payload grew the process by {grown_kb} kB"


@pytest.mark.parametrize("key", ["n", "m", "nbits"])
def test_pq_payload_with_an_infinite_count(key):
    head = {"n": 300, "m": 4, "nbits": 8, key: float("inf")}
    refused(load_pq, pq_payload(head, codes_of()), match="PQ payload is damaged: unreadable header")


def test_pq_payload_header_nested_too_deeply():
    refused(load_pq, pq_payload(b"[" * 60_000, b""),
            match="PQ payload is damaged: unreadable header")


def codebook_bytes(m=M, ksub=1 << BITS, dsub=DIM // M, words=None, magic=b"SANNPQCB") -> bytes:
    if words is None:
        words = pq_index()[0].codewords.tobytes()
    return CB_HEAD.pack(magic, m, ksub, dsub) + words


def nan_words(value) -> bytes:
    words = pq_index()[0].codewords.copy()
    words[1, 17, 0] = value
    return words.tobytes()


CODEBOOKS = [
    ("wrong m", codebook_bytes(m=2, dsub=4), "does not match"),
    ("huge m", codebook_bytes(m=2**32 - 1), "does not match"),
    ("wrong bits", codebook_bytes(ksub=16), "does not match"),
    ("ksub not a power of two", codebook_bytes(ksub=255), "does not match"),
    ("wrong width", codebook_bytes(dsub=3), "does not match"),
    ("huge dsub", codebook_bytes(m=M, dsub=2**32 - 1), "does not match"),
    ("bad magic", codebook_bytes(magic=b"SANNPQXX"), "does not match"),
    ("one byte short", codebook_bytes()[:-1], "wrong length"),
    ("one byte more", codebook_bytes() + b"\x00", "wrong length"),
    ("header only", codebook_bytes(words=b""), "wrong length"),
    ("shorter than the header", codebook_bytes()[:CB_HEAD.size - 1], "shorter than its header"),
    ("NaN codeword", codebook_bytes(words=nan_words(np.nan)), "non-finite"),
    ("infinite codeword", codebook_bytes(words=nan_words(np.inf)), "non-finite"),
    ("-infinite codeword", codebook_bytes(words=nan_words(-np.inf)), "non-finite"),
]


@pytest.mark.parametrize("codebook, match", [(c, m) for _, c, m in CODEBOOKS],
                         ids=[n for n, _, _ in CODEBOOKS])
def test_pq_damaged_codebooks(codebook, match):
    refused(load_pq, None, codebook, match=match)
    refused(codebook_from_bytes, codebook, M, BITS, DIM, match=match)


def test_pq_codebook_for_another_index():
    codebook = codebook_to_bytes(pq_index()[0].codewords)
    for m, bits, width in ((2, 8, DIM), (4, 4, DIM), (4, 8, 12), (8, 8, DIM)):
        refused(codebook_from_bytes, codebook, m, bits, width, match=f"m={m}, bits={bits}")


@FUZZ
@given(data=st.data(), part=st.sampled_from(["payload", "codebook"]))
def test_pq_formats_with_flipped_bytes_load_or_are_refused(data, part):
    stored = pq_index()[0].store()
    raw = bytearray(stored.payload if part == "payload" else stored.codebook)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        if part == "payload":
            pq_module._codes_from_payload(bytes(raw), M, BITS)
        else:
            codebook_from_bytes(bytes(raw), M, BITS, DIM)
    except ValueError as err:
        assert str(err)


# ============================================================ files on disk


def test_a_damaged_centroid_graph_is_an_index_format_error():
    from sparkann.loader import LoadedIndex

    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((2, DIM)).astype(np.float32)
    for graph in (graph_payload(), graph_payload()[:100]):  # other centroids; truncated
        meta = Meta(centroids, np.array([1, 1]), graph)
        refused(LoadedIndex.create, good_manifest(), meta, match="centroid graph is damaged",
                error=IndexFormatError)


def test_a_missing_meta_file_is_an_index_format_error(tmp_path):
    from sparkann.loader import read_index_file

    refused(read_index_file, str(tmp_path / "meta" / "gone.bin"), 1 << 20, match="unreadable",
            error=IndexFormatError)
    (tmp_path / "big.bin").write_bytes(b"x" * 100)
    refused(read_index_file, str(tmp_path / "big.bin"), 10,
            match="holds 100 bytes, more than the 10", error=IndexFormatError)


def test_parquet_strings_that_are_not_utf8_are_refused_on_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparkann.storage import tables

    bad = pa.array([b"\xd7\xff"], pa.binary()).view(pa.string())
    path = str(tmp_path / "part.parquet")
    pq.write_table(pa.table({"pid": pa.array([0], pa.int32()), "ids": [[1, 2]],
                             "checksum": bad}), path)
    refused(tables.read_partition_file, path, ["ids", "checksum"], 0, match="Invalid UTF8",
            error=IndexFormatError)
    pq.write_table(pa.table({"labels": [[1]], "count": [1], "checksum": bad}), path)
    refused(tables.read_delete_file, path, match="unreadable", error=IndexFormatError)
    pq.write_table(pa.table({"id": bad, "partition_id": [0]}), path)
    refused(tables.read_locations_file, path, file_sha(path), match="unreadable",
            error=IndexFormatError)


def partition_rows(pids):
    import pyarrow as pa

    return pa.table({"pid": pa.array(pids, pa.int32()),
                     "ids": pa.array([[10 * p, 10 * p + 1] for p in pids], pa.list_(pa.int64()))})


def test_a_file_of_several_partitions_gives_each_its_own_row(tmp_path):
    import pyarrow.parquet as pq

    from sparkann.storage import tables

    path = str(tmp_path / "part.parquet")
    pq.write_table(partition_rows([4, 9, 2]), path, row_group_size=1)  # as the writer does
    for pid in (4, 9, 2):
        assert tables.read_partition_file(path, ["ids"], pid).column("ids").to_pylist() == [
            [10 * pid, 10 * pid + 1]]
    assert tables.row_groups_of(pq.ParquetFile(path).metadata, 9) == [1]  # one group read
    pq.write_table(partition_rows([4, 9, 2]), path)  # one row group: still found, by value
    assert tables.read_partition_file(path, ["ids"], 2).column("ids").to_pylist() == [[20, 21]]


@pytest.mark.parametrize("pids,pid,reason", [
    ([4, 9, 9], 9, "holds 2 rows of it, not 1"),  # a row twice
    ([4, 9], 3, "holds 0 rows of it, not 1"),  # a partition the file does not hold
    ([], 0, "holds 0 rows of it, not 1")])
def test_a_partition_file_without_exactly_one_row_of_the_partition_is_refused(
        tmp_path, pids, pid, reason):
    import pyarrow.parquet as pq

    from sparkann.storage import tables

    path = str(tmp_path / "part.parquet")
    pq.write_table(partition_rows(pids), path, row_group_size=1)
    refused(tables.read_partition_file, path, ["ids"], pid, match=f"partition {pid} is "
            f"damaged: its file {reason}", error=IndexFormatError)


def test_a_partition_file_whose_pid_column_is_not_integers_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparkann.storage import tables

    path = str(tmp_path / "part.parquet")
    pq.write_table(pa.table({"pid": ["0"], "ids": [[1]]}), path)
    refused(tables.read_partition_file, path, ["ids"], 0, match="pid column is not of "
            "integers", error=IndexFormatError)
    pq.write_table(pa.table({"ids": [[1]]}), path)
    refused(tables.read_partition_file, path, ["ids"], 0, match="has no pid column",
            error=IndexFormatError)


def file_sha(path) -> str:
    from sparkann.storage.format import sha256

    with open(path, "rb") as handle:
        return sha256(handle.read())


def test_an_id_location_file_must_match_its_checksum(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparkann.storage import tables

    path = str(tmp_path / "part.parquet")
    pq.write_table(pa.table({"id": [1, 2], "partition_id": pa.array([0, 1], pa.int32())}), path)
    assert tables.read_locations_file(path, file_sha(path)).num_rows == 2
    pq.write_table(pa.table({"id": [1, 2], "partition_id": pa.array([0, 2], pa.int32())}), path)
    refused(tables.read_locations_file, path, "00" * 32, match="checksum does not match",
            error=IndexFormatError)
    refused(tables.read_locations_file, str(tmp_path / "gone.parquet"), "00" * 32,
            match="unreadable", error=IndexFormatError)


INCONSISTENT = "id-location buckets are inconsistent"


@pytest.mark.parametrize("mutate, reason", [
    (edit(**{"locations.sha256": [["ef" * 32], []]}), INCONSISTENT),
    (edit(**{"locations.sha256": [["ef" * 32]]}), INCONSISTENT),
    (edit(**{"locations.sha256.0.0": 5}), "field location checksum is not a string"),
    (edit(**{"locations.sha256": _DELETE}), "KeyError('sha256')"),
    (edit(**{"locations.files.1.0": "locations/b=0.parquet", "locations.files.0": [
        "locations/b=0.parquet", "locations/b=0.parquet"], "locations.sha256.0": ["a", "b"]}),
     INCONSISTENT),
], ids=["shorter", "fewer buckets", "not text", "missing", "a file twice"])
def test_id_location_checksums_must_match_the_files(mutate, reason):
    refused(parse, mutate(good_doc()), match=reason, error=IndexFormatError)


def test_payload_digests_frame_each_part():
    from sparkann.storage.tables import digests

    ids = __import__("pyarrow").array([1, 2])
    moved = [digests(StoredPartition(p, c), ids)["payload_sha256"]
             for p, c in ((b"abc", b"def"), (b"abcd", b"ef"), (b"", b"abcdef"))]
    assert len(set(moved)) == 3
