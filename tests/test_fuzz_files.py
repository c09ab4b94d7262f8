"""Mutated index files of every type, fed to every reader in a separate process.

Small valid indexes (hnsw with a centroid graph, hnsw_sq8, pq 8-bit with exact
vectors, pq 4-bit with a global codebook) are written as files the way a build
writes them: manifest, meta file, partition files, a delete file and id-location
files. Each case mutates one of them (bytes, a JSON header field, a numeric word,
a column), re-signs the checksums most of the time (a hostile writer can), then
loads the index, routes and searches queries (plain and subset), reads every
id-location bucket and every partition as an update does. Every case must end in
success or :class:`IndexFormatError`: never another exception, a signal or a hang.

The readers run in a worker process, so a crash fails the test instead of killing
pytest; a crashed or hung worker is replaced and the run goes on (checked by a
worker told to crash and to hang). The default tier runs 40 cases; the heavy tier runs
``SPARKANN_FUZZ_CASES`` (default 300); ``SPARKANN_FUZZ_SEED`` picks others.

    python tests/test_fuzz_files.py worker DIR FIRST COUNT SEED   (what the test runs)
"""

from __future__ import annotations

import copy
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pytest

CASES = int(os.environ.get("SPARKANN_FUZZ_CASES", "300"))  # the heavy tier's run
SHORT_CASES = 40  # the default tier's run, with another seed
SEED = int(os.environ.get("SPARKANN_FUZZ_SEED", "1"))
CASE_TIMEOUT = 30.0  # seconds one case may take before it counts as a hang
INJECT = "SPARKANN_FUZZ_INJECT"  # "5=crash,9=hang": the worker fails so on those cases
MEMORY_LIMIT = 3 << 30  # the worker's address space: a huge allocation fails, not the host
DIM = 8
ROWS = 240
BASES = ("hnsw", "hnsw_sq8", "pq8", "pq4")
INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 1 << 15, (1 << 16) - 1, (1 << 31) - 1,
                    1 << 31, -(1 << 31), (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 53, 1 << 62,
                    (1 << 63) - 1, -(1 << 63), (1 << 64) - 1, 1 << 64, 10**30]
INTERESTING_JSON = INTERESTING_INTS + [
    0.5, -0.0, 1e308, float("inf"), float("nan"), "", "x", "hnsw", "pq", "hnsw_sq8", "l2",
    "ip", "cosine", "long", "string", None, True, False, [], {}, [1, 2], {"a": 1}]


# ------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """One valid index, as values from which its files are written."""

    doc: dict  # the manifest document (checksums filled in when written)
    meta: bytes
    parts: list[dict]  # per partition: ids, payload, codebook, vectors, sq_error
    deletes: dict[int, np.ndarray]  # partition -> deleted labels
    locations: list[tuple[np.ndarray, np.ndarray]]  # per bucket: ids, partition ids
    sign: dict = field(default_factory=dict)  # which checksums to recompute


def build_corpus(base: str) -> Corpus:
    from sparkann import ANNIndex, datasets
    from sparkann.index import PartitionContext, index_type
    from sparkann.metrics import get_metric
    from sparkann.partitioning.router import build_centroid_graph, rank_brute_force
    from sparkann.storage.format import FORMAT_VERSION, SECTIONS, Meta, split_params
    from sparkann.storage.tables import id_buckets

    kind = {"hnsw": "hnsw", "hnsw_sq8": "hnsw_sq8"}.get(base, "pq")
    options = {"indexType": kind, "hnswM": 8, "efConstruction": 32, "pqSubvectors": 4,
               "pqBits": 4 if base == "pq4" else 8, "rerankK": 20 if base == "pq8" else 0,
               "pqCodebook": "global" if base == "pq4" else "partition"}
    params = {**ANNIndex(**options).param_values(), "numPartitions": 3,
              "maxPartitionRows": 1000, "efSearch": 16, "numProbes": 2, "balanceAtBuild": 1.2}
    metric = get_metric("l2")
    vectors = datasets.clustered(ROWS, DIM, seed=3).astype(np.float32)
    centroids = vectors[[0, 80, 160]].copy()
    nearest = rank_brute_force(vectors, centroids, "l2", 1)[0][:, 0]
    cls = index_type(kind)
    residuals = vectors - centroids[nearest]
    shared = cls.train_shared(vectors, residuals, PartitionContext(metric, DIM, params), 0)
    graph = build_centroid_graph(centroids, metric, 0) if base == "hnsw" else b""
    meta = Meta(centroids, np.ones(3, np.int64), graph, shared).to_bytes()
    parts = []
    for pid in range(3):
        rows = np.flatnonzero(nearest == pid)
        context = PartitionContext(metric, DIM, params, centroids[pid], shared)
        stored = cls.build(vectors[rows], context, seed=pid, threads=1).store()
        parts.append({"ids": rows.astype(np.int64), "payload": stored.payload,
                      "codebook": stored.codebook, "vectors": stored.vectors,
                      "sq_error": stored.sq_error})
    ids = np.arange(ROWS, dtype=np.int64)
    buckets = id_buckets(__import__("pyarrow").array(ids), 2)
    pid_of = np.empty(ROWS, np.int32)
    for pid, part in enumerate(parts):
        pid_of[part["ids"]] = pid
    locations = [(ids[buckets == b], pid_of[buckets == b]) for b in range(2)]
    doc = {"format": "sparkann-index", "formatVersion": FORMAT_VERSION, "version": 1,
           "baseVersion": 0,
           "indexType": kind, "metric": "l2", "dim": DIM, "idType": "long",
           **{SECTIONS[name]: values for name, values in split_params(kind, params, []).items()},
           "userSet": [], "meta": {"file": "", "sha256": ""},
           "partitions": {"files": [], "rows": [], "payloadBytes": [], "checksums": [],
                          "sqErrors": [], "deletes": [[] for _ in parts]},
           "locations": {"buckets": 2, "files": [[], []], "sha256": [[], []]}, "calibration": {},
           "buildSeconds": {}}
    return Corpus(doc, meta, parts, {0: np.array([0, 3], np.int64)}, locations)


def run_name() -> str:
    return uuid.uuid4().hex


def write_parquet(table, root: str, relative: str) -> None:
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(os.path.join(root, relative)), exist_ok=True)
    pq.write_table(table, os.path.join(root, relative))


def write_index(corpus: Corpus, root: str) -> dict:
    """Write the corpus's files under ``root``; returns the manifest document with every
    file and (where ``sign`` says so, by default everywhere) checksum filled in."""
    import pyarrow as pa

    from sparkann.index import StoredPartition
    from sparkann.storage import tables
    from sparkann.storage.format import sha256

    doc, sign = copy.deepcopy(corpus.doc), corpus.sign
    doc["meta"]["file"] = f"meta/{run_name()}.bin"
    with open(os.path.join(_made(root, "meta"), doc["meta"]["file"][5:]), "wb") as out:
        out.write(corpus.meta)
    doc["meta"]["sha256"] = sha256(corpus.meta if sign.get("meta", True) else b"original")
    run, p = run_name(), doc["partitions"]
    for pid, part in enumerate(corpus.parts):
        stored = StoredPartition(part["payload"], part["codebook"], part["vectors"],
                                 part["sq_error"])
        row = tables.partition_row(pid, pa.array(part["ids"], pa.int64()), stored)
        relative = f"data/{run}/partition_id={pid}/part-0.parquet"
        write_parquet(row, root, relative)
        checksum = row.column("checksum")[0].as_py()
        p["files"].append(relative)
        p["rows"].append(len(part["ids"]))
        p["payloadBytes"].append(len(part["payload"]) + len(part["codebook"]))
        p["checksums"].append(checksum if sign.get(f"part{pid}", True) else "0" * 64)
        p["sqErrors"].append(part["sq_error"])
    for pid, labels in corpus.deletes.items():
        relative = f"deletes/{run_name()}/partition_id={pid}/part-0.parquet"
        labels32 = np.asarray(labels).astype(np.int32)
        write_parquet(pa.table({"pid": pa.array([pid], pa.int32()),
                                "labels": [labels32.tolist()],
                                "count": pa.array([len(labels32)], pa.int64()),
                                "checksum": [tables.labels_checksum(labels32)]}), root, relative)
        if sign.get("deletes", True):
            p["deletes"][pid].append({"file": relative, "count": len(labels32),
                                      "sha256": tables.labels_checksum(labels32)})
        else:
            p["deletes"][pid].append({"file": relative, "count": 2,
                                      "sha256": tables.labels_checksum(np.array([0, 3]))})
    run = run_name()
    for bucket, (ids, pids) in enumerate(corpus.locations):
        relative = f"locations/{run}/bucket={bucket}/part-0.parquet"
        write_parquet(pa.table({"id": ids, "partition_id": pids}), root, relative)
        doc["locations"]["files"][bucket].append(relative)
        with open(os.path.join(root, relative), "rb") as handle:
            data = handle.read() if sign.get("locations", True) else b"original"
        doc["locations"]["sha256"][bucket].append(sha256(data))
    return doc


def _made(root: str, name: str) -> str:
    os.makedirs(os.path.join(root, name), exist_ok=True)
    return os.path.join(root, name)


def write_manifest(root: str, text: bytes) -> None:
    with open(os.path.join(_made(root, "manifests"), "v00000001.json"), "wb") as out:
        out.write(text)


# ------------------------------------------------------------- the readers


def read_everything(root: str, text: bytes, rng: np.random.Generator) -> str:
    """Load, route, search (plain and subset), read every id-location bucket and every
    partition as an update does. "ok", or "refused" for an IndexFormatError."""
    from sparkann import loader
    from sparkann.storage.format import IndexFormatError

    loader.CACHE.clear()
    try:
        _read(root, text, rng)
    except IndexFormatError as err:
        if not str(err).strip():
            raise AssertionError("an IndexFormatError without a message") from None
        return "refused"
    return "ok"


def _read(root: str, text: bytes, rng: np.random.Generator) -> None:
    import pyarrow as pa

    from sparkann import loader
    from sparkann.search.local import answer_batch
    from sparkann.search.plan import SearchPlan
    from sparkann.storage.format import sha256

    handle = loader.IndexHandle(root, 1, sha256(text))
    index = loader.open_index(handle)
    manifest = index.manifest
    with_vectors = index.cls.keeps_vectors(manifest.spec.params)
    knobs = index.cls.search_knobs({"efSearch": 16, "rerankK": 20 if with_vectors else 0})
    plan = SearchPlan(handle=handle, id_type=manifest.id_type, dim=manifest.dim,
                      vector_col="vector", neighbors_col="neighbors", k=5, num_probes=2,
                      probe_epsilon=0.0, knobs=knobs, with_vectors=with_vectors,
                      allowed_col="allowed", exclude_self=False, id_col="id",
                      strategy="local", reads="task", location_buckets=2)
    queries = rng.standard_normal((4, DIM)).astype(np.float32) * 3
    vectors = pa.array(list(queries), pa.list_(pa.float32()))
    allowed = pa.array([None, [1, 2, 100, 200], None, list(range(0, ROWS, 7))],
                       pa.list_(pa.int64()))
    answer_batch(index, plan, vectors, allowed, pa.array([0, 1, 2, 3], pa.int64()),
                 pa.nulls(4, pa.int32()), knobs)
    if manifest.locations is not None:
        for bucket in range(manifest.locations.buckets):
            loader.location_map(index, bucket)
    for pid, file in enumerate(manifest.partitions.files):
        if file:
            part = loader.fresh_partition(index, pid, with_vectors)
            if with_vectors or manifest.index_type != "pq":  # PQ codes alone have none
                hidden = loader.deleted_labels(index, pid)
                part.index.live_vectors(np.setdiff1d(np.arange(part.index.count), hidden)[:3])
            part.index.add(queries[:2], threads=1)


# ------------------------------------------------------------- mutations


def mutate_case(corpora: dict, case: int, seed: int) -> tuple[str, Corpus, object, str]:
    """(base, corpus, manifest mutation or None, what was mutated) of case ``case``."""
    rng = np.random.default_rng([seed, case])
    base = BASES[case % len(BASES)]
    corpus = copy.deepcopy(corpora[base])
    target = str(rng.choice(TARGETS))
    manifest_change = None
    if case < len(BASES):  # the first case of each base: no mutation at all
        return base, corpus, None, "none"
    if target.startswith("manifest"):
        manifest_change = target
    elif target != "parquet-bytes":  # that one damages a written file
        MUTATORS[target](corpus, rng)
        corpus.sign = {"meta": rng.random() < 0.95, "deletes": rng.random() < 0.9,
                       "locations": rng.random() < 0.9,
                       **{f"part{p}": rng.random() < 0.95 for p in range(3)}}
    return base, corpus, manifest_change, target


def mutated_manifest(doc: dict, change: str | None, rng: np.random.Generator) -> bytes:
    if change is None:
        return json.dumps(doc).encode()
    if change == "manifest-bytes":
        return flip_bytes(json.dumps(doc).encode(), rng)
    for _ in range(int(rng.integers(1, 3))):
        mutate_json(doc, rng)
    return json.dumps(doc).encode()


def mutate_json(doc, rng: np.random.Generator) -> None:
    """Replace, drop or resize one randomly chosen value inside ``doc``."""
    paths = list(json_paths(doc))
    parent, key = paths[int(rng.integers(len(paths)))]
    roll = rng.random()
    if roll < 0.1 and isinstance(parent, dict):
        del parent[key]
    elif roll < 0.2 and isinstance(parent[key], list) and parent[key]:
        values = parent[key]
        parent[key] = values[:-1] if rng.random() < 0.5 else values + values[-1:]
    else:
        parent[key] = copy.deepcopy(pick(rng, INTERESTING_JSON))


def json_paths(node):
    """(parent, key) of every value inside a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        yield node, key
        if isinstance(value, (dict, list)):
            yield from json_paths(value)


def pick(rng: np.random.Generator, values: list):
    """One of ``values``, as the Python object it is (no numpy conversion)."""
    return values[int(rng.integers(len(values)))]


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    raw = bytearray(data)
    roll = rng.random()
    if roll < 0.1 and raw:
        return bytes(raw[:int(rng.integers(len(raw)))])
    if roll < 0.15:
        return bytes(raw) + rng.bytes(int(rng.integers(1, 64)))
    for _ in range(int(rng.integers(1, 5))):
        if raw:
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
    return bytes(raw)


def set_word(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """An interesting 4- or 8-byte integer written at an aligned offset past ``start``."""
    width = 4 if rng.random() < 0.5 else 8
    slots = (len(data) - start) // width
    if slots <= 0:
        return data
    at = start + width * int(rng.integers(slots))
    value = pick(rng, INTERESTING_INTS)
    word = (value % (1 << (8 * width))).to_bytes(width, "little")
    return data[:at] + word + data[at + width:]


# Formats with a JSON header: (offset of its length field, its struct, header start).
JSON_HEADERS = {"meta": ("<Q", 12, 20), "hnsw": ("<Q", 12, 20), "hnsw_sq8": ("<Q", 8, 16),
                "pq": ("<Q", 8, 16)}


def mutate_json_header(data: bytes, layout: tuple, rng: np.random.Generator) -> bytes:
    fmt, at, start = layout
    (length,) = struct.unpack_from(fmt, data, at)
    head = json.loads(data[start:start + length])
    mutate_json(head, rng)
    text = json.dumps(head).encode()
    return data[:at] + struct.pack(fmt, len(text)) + data[at + 8:start] + text \
        + data[start + length:]


def body_start(data: bytes, layout: tuple) -> int:
    fmt, at, start = layout
    return start + struct.unpack_from(fmt, data, at)[0]


def payload_format(corpus: Corpus) -> str:
    return {"hnsw": "hnsw", "hnsw_sq8": "hnsw_sq8"}.get(corpus.doc["indexType"], "pq")


def mutate_payload(corpus: Corpus, rng: np.random.Generator) -> None:
    part = corpus.parts[int(rng.integers(3))]
    layout = JSON_HEADERS[payload_format(corpus)]
    roll = rng.random()
    if roll < 0.4:
        part["payload"] = mutate_json_header(part["payload"], layout, rng)
    elif roll < 0.8:
        for _ in range(int(rng.integers(1, 4))):
            part["payload"] = set_word(part["payload"], body_start(part["payload"], layout), rng)
    else:
        part["payload"] = flip_bytes(part["payload"], rng)


def mutate_codebook(corpus: Corpus, rng: np.random.Generator) -> None:
    part = corpus.parts[int(rng.integers(3))]
    if not part["codebook"]:
        return mutate_payload(corpus, rng)
    if rng.random() < 0.5:
        at = 8 + 4 * int(rng.integers(3))  # m, ksub, dsub
        value = pick(rng, INTERESTING_INTS) % (1 << 32)
        part["codebook"] = part["codebook"][:at] + struct.pack("<I", value) \
            + part["codebook"][at + 4:]
    else:
        part["codebook"] = flip_bytes(part["codebook"], rng)


def mutate_vectors(corpus: Corpus, rng: np.random.Generator) -> None:
    part = corpus.parts[int(rng.integers(3))]
    if part["vectors"] is None:
        return mutate_ids(corpus, rng)
    if rng.random() < 0.3:
        values = np.frombuffer(part["vectors"], np.float32).copy()
        values[int(rng.integers(len(values)))] = pick(rng, [np.nan, np.inf, -np.inf, 1e38])
        part["vectors"] = values.tobytes()
    else:
        part["vectors"] = flip_bytes(part["vectors"], rng)


def mutate_ids(corpus: Corpus, rng: np.random.Generator) -> None:
    part = corpus.parts[int(rng.integers(3))]
    ids = part["ids"].copy()
    roll = rng.random()
    if roll < 0.3:
        part["ids"] = ids[:-1] if rng.random() < 0.5 else np.append(ids, ids[:1])
    elif roll < 0.6:
        ids[int(rng.integers(len(ids)))] = ids[int(rng.integers(len(ids)))]  # a duplicate
        part["ids"] = ids
    else:
        ids[int(rng.integers(len(ids)))] = pick(rng, INTERESTING_INTS) % (1 << 63)
        part["ids"] = ids


def mutate_meta(corpus: Corpus, rng: np.random.Generator) -> None:
    from sparkann.storage.format import Meta

    roll = rng.random()
    if roll < 0.3:
        corpus.meta = mutate_json_header(corpus.meta, JSON_HEADERS["meta"], rng)
    elif roll < 0.55:
        meta = Meta.from_bytes(corpus.meta, DIM)
        counts = meta.shard_counts.copy()
        for _ in range(int(rng.integers(1, 4))):
            counts[int(rng.integers(3))] = pick(rng, INTERESTING_INTS) % (1 << 63) \
                - (1 << 63 if rng.random() < 0.2 else 0)
        corpus.meta = Meta(meta.centroids, counts.astype(np.int64), meta.centroid_graph,
                           meta.shared).to_bytes()
    elif roll < 0.8:
        meta = Meta.from_bytes(corpus.meta, DIM)
        graph, shared = meta.centroid_graph, meta.shared
        if graph and rng.random() < 0.7:
            layout = JSON_HEADERS["hnsw"]
            graph = mutate_json_header(graph, layout, rng) if rng.random() < 0.4 \
                else set_word(graph, body_start(graph, layout), rng)
        elif shared:
            shared = flip_bytes(shared, rng)
        corpus.meta = Meta(meta.centroids, meta.shard_counts, graph, shared).to_bytes()
    else:
        corpus.meta = flip_bytes(corpus.meta, rng)


def mutate_deletes(corpus: Corpus, rng: np.random.Generator) -> None:
    labels = corpus.deletes[0].copy()
    roll = rng.random()
    if roll < 0.5:
        labels[int(rng.integers(len(labels)))] = pick(
            rng, [-1, -(1 << 31), (1 << 31) - 1, 1 << 20, len(corpus.parts[0]["ids"]), 0])
    elif roll < 0.75:
        labels = np.append(labels, labels[:1])
    else:
        labels = np.arange(len(corpus.parts[0]["ids"]) + int(rng.integers(0, 2)))
    corpus.deletes[0] = labels


def mutate_locations(corpus: Corpus, rng: np.random.Generator) -> None:
    bucket = int(rng.integers(2))
    ids, pids = (a.copy() for a in corpus.locations[bucket])
    at = int(rng.integers(len(ids)))
    if rng.random() < 0.6:
        pids[at] = pick(rng, [-1, 3, 1 << 20, -(1 << 31), (1 << 31) - 1])
    else:
        ids[at] = pick(rng, INTERESTING_INTS) % (1 << 63)
    corpus.locations[bucket] = (ids, pids)


MUTATORS = {"payload": mutate_payload, "codebook": mutate_codebook, "vectors": mutate_vectors,
            "ids": mutate_ids, "meta": mutate_meta, "deletes": mutate_deletes,
            "locations": mutate_locations}
TARGETS = [*MUTATORS, "manifest-json", "manifest-json", "manifest-bytes", "parquet-bytes"]


def damage_a_parquet_file(root: str, rng: np.random.Generator) -> None:
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.endswith(".parquet"))
    path = files[int(rng.integers(len(files)))]
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as out:
        out.write(flip_bytes(data, rng))


# ------------------------------------------------------------- the worker


def worker(directory: str, first: int, count: int, seed: int) -> None:
    """Run cases ``first .. first + count - 1``, announcing each before it runs."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    import faiss

    faiss.omp_set_num_threads(1)
    corpora = {base: build_corpus(base) for base in BASES}
    injected = dict(part.split("=") for part in os.environ.get(INJECT, "").split(",") if part)
    for case in range(first, first + count):
        print(f"CASE {case}", flush=True)
        if injected.get(str(case)) == "crash":  # the harness's own check: see below
            os.kill(os.getpid(), signal.SIGSEGV)
        if injected.get(str(case)) == "hang":
            time.sleep(3600)
        base, target = BASES[case % len(BASES)], "?"
        rng = np.random.default_rng([seed, case, 1])
        root = os.path.join(directory, f"case-{case}")
        try:
            base, corpus, change, target = mutate_case(corpora, case, seed)
            doc = write_index(corpus, root)
            text = mutated_manifest(doc, change, rng)
            write_manifest(root, text)
            if target == "parquet-bytes":
                damage_a_parquet_file(root, rng)
            outcome = read_everything(root, text, rng)
        except Exception as err:  # anything but IndexFormatError is a finding
            outcome = f"error {base} {target}: {type(err).__name__}: {err}"[:500]
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if case < len(BASES) and outcome != "ok":
            outcome = f"error {base}: the unmutated index did not load: {outcome}"
        print(f"DONE {case} {base} {target} {outcome}".replace("\n", " "), flush=True)


# ------------------------------------------------------------- the test


@dataclass
class Run:
    outcomes: dict = field(default_factory=dict)  # case -> outcome line
    findings: list = field(default_factory=list)  # crashes, hangs, unexpected errors


def run_cases(total: int, seed: int, directory: str) -> Run:
    """Run ``total`` cases in worker processes, replacing a worker that dies or hangs."""
    run, next_case = Run(), 0
    while next_case < total:
        next_case = _run_worker(run, next_case, total, seed, directory)
    return run


def _run_worker(run: Run, first: int, total: int, seed: int, directory: str) -> int:
    """One worker from case ``first`` on; returns the case to go on from."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    errors = open(os.path.join(directory, f"worker-{first}.err"), "w+")
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "worker", directory, str(first),
         str(total - first), str(seed)], stdout=subprocess.PIPE, stderr=errors, env=env)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    current, pending = None, b""
    deadline = time.monotonic() + CASE_TIMEOUT + 60  # start-up: imports and corpora
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                run.findings.append(f"case {current}: no answer in {CASE_TIMEOUT} s (a hang)")
                return total if current is None else current + 1
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 1 << 16)  # unbuffered: select stays true
            if not chunk:
                return _worker_ended(run, process, errors, current, total)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                kind, case, *rest = line.decode().split(" ", 2)
                deadline = time.monotonic() + CASE_TIMEOUT
                if kind == "CASE":
                    current = int(case)
                elif kind == "DONE":
                    run.outcomes[int(case)] = rest[0].strip()
                    if rest[0].split(" ")[2:3] == ["error"]:
                        run.findings.append(f"case {case}: {rest[0].strip()}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        errors.close()


def _worker_ended(run: Run, process, errors, current, total: int) -> int:
    code = process.wait()
    errors.seek(0)
    tail = errors.read()[-1500:]
    if current is None:
        run.findings.append(f"the worker exited with {code} before its first case: {tail}")
        return total
    if current in run.outcomes:
        return current + 1 if current + 1 < total and code != 0 else total
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    run.findings.append(f"case {current}: the worker died with {how}: {tail}")
    return current + 1


@pytest.mark.parametrize("cases", [
    SHORT_CASES, pytest.param(CASES, marks=pytest.mark.heavy)], ids=["short", "long"])
def test_mutated_index_files_load_or_are_refused(tmp_path, cases):
    started = time.perf_counter()
    run = run_cases(cases, SEED + (cases == SHORT_CASES), str(tmp_path))
    seconds = time.perf_counter() - started
    results = [line.rsplit(" ", 1)[-1] for line in run.outcomes.values()]
    counts = {name: results.count(name) for name in ("ok", "refused")}
    print(f"\n{len(run.outcomes)} of {cases} mutations in {seconds:.1f} s: {counts}; "
          f"{len(run.findings)} findings")
    assert run.findings == [], "\n".join(run.findings)
    assert len(run.outcomes) == cases
    assert counts["refused"] > cases // 4 and counts["ok"] >= len(BASES)


def test_a_crash_or_a_hang_is_a_finding_and_the_run_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT, "2=crash,4=hang")
    monkeypatch.setattr(sys.modules[__name__], "CASE_TIMEOUT", 5.0)
    run = run_cases(7, SEED, str(tmp_path))
    assert sorted(run.outcomes) == [0, 1, 3, 5, 6]
    assert [f.split(":")[0] for f in run.findings] == ["case 2", "case 4"]
    assert "signal 11" in run.findings[0] and "a hang" in run.findings[1]


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
