"""The search memory model against measured memory. No Spark.

For each index type, partitions are built with the index classes directly, stored,
and loaded from fresh copies of their stored bytes, as a search task loads them; the
resident-memory growth per loaded partition is the measured loaded memory. The type's
declared model (:meth:`PartitionIndex.loaded_bytes`, which the search planner uses)
and the index's own ``memory_bytes`` (which the worker cache counts) must both be
within 25% of it, so a change in the index types' memory or in their model fails
here.
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import psutil
import pytest

from sparkann.index import REGISTRY, PartitionContext, StoredPartition
from sparkann.loader import CACHE_CONF
from sparkann.metrics import get_metric
from sparkann.search.plan import choose_strategy, memory_needed
from sparkann.storage.format import Manifest, Partitions

ROOT = Path(__file__).resolve().parents[1]
N, SMALL, DIM, COPIES, TOLERANCE = 8000, 2000, 32, 3, 0.25

CASES = {
    "hnsw": ("hnsw", {"hnswM": 16, "efConstruction": 40}, False),
    "hnsw_sq8": ("hnsw_sq8", {"hnswM": 16, "efConstruction": 40}, False),
    "pq8": ("pq", {"pqSubvectors": 16, "pqBits": 8, "pqCodebook": "global", "rerankK": 0},
            False),
    "pq8-vectors": ("pq", {"pqSubvectors": 16, "pqBits": 8, "pqCodebook": "global",
                           "rerankK": 1}, True),
    "pq8-partition-codebook": ("pq", {"pqSubvectors": 8, "pqBits": 8,
                                      "pqCodebook": "partition", "rerankK": 0}, False),
    "pq4": ("pq", {"pqSubvectors": 16, "pqBits": 4, "pqCodebook": "partition",
                   "rerankK": 0}, False),
}


def default_params(cls) -> dict:
    from sparkann import ANNIndex

    estimator = ANNIndex()
    return {name: estimator.getOrDefault(name) for name in cls.build_params
            if estimator.isDefined(name)}


# every other registered type, with the estimator's defaults
CASES.update({name: (name, default_params(cls), False) for name, cls in sorted(REGISTRY.items())
              if name not in {case[0] for case in CASES.values()}})


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@cache
def data() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)


@cache
def built(label: str, rows: int):
    name, params, _ = CASES[label]
    cls, metric, base = REGISTRY[name], get_metric("l2"), data()[:rows]
    centroid = data().mean(0)
    context = PartitionContext(metric, DIM, params, centroid)
    sample = data()[:2048]  # a global codebook is trained on the driver's sample
    shared = cls.train_shared(sample, sample - centroid, context, seed=0)
    context = PartitionContext(metric, DIM, params, centroid, shared)
    return cls, context, cls.build(base, context, seed=0, threads=1).store()


def resident() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def fresh(data):
    """A copy of stored bytes, as read from an index file (``bytes(b)`` is ``b``)."""
    return None if data is None else bytes(bytearray(data))


def measured(label: str, rows: int) -> tuple[float, int]:
    """:func:`measured_here` in a fresh interpreter: in a long-lived test worker the
    heap holds freed blocks that loading reuses, so its resident growth runs low."""
    done = subprocess.run([sys.executable, "-m", "tests.test_memory_model", label, str(rows)],
                          cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    grown, reported = json.loads(done.stdout.strip().splitlines()[-1])
    return grown, reported


def measured_here(label: str, rows: int) -> tuple[float, int]:
    """Resident bytes one loaded partition holds (with its ids, as the worker cache
    keeps it), and the ``memory_bytes`` + ids it reports."""
    cls, context, stored = built(label, rows)
    with_vectors = CASES[label][2]

    def load():
        copy = StoredPartition(fresh(stored.payload), fresh(stored.codebook),
                               fresh(stored.vectors), stored.sq_error)
        index = cls.load(copy, context, with_vectors)  # keeps what it needs of the copy
        ids = np.arange(index.count, dtype=np.int64)
        index.hide(np.empty(0, np.int64))
        return index, ids

    warm = load()  # one-time allocations (faiss, OpenMP, the allocator) are not counted
    del warm
    before = resident()
    loaded = [load() for _ in range(COPIES)]
    grown = (resident() - before) / COPIES
    reported = loaded[0][0].memory_bytes() + loaded[0][1].nbytes
    del loaded
    return grown, reported


def sizes(label: str, rows: int) -> tuple[int, int]:
    """Stored bytes (payload and codebook, as the manifest counts them) and the bytes of
    the exact vectors a search loads beside them."""
    _, _, stored = built(label, rows)
    vectors = len(stored.vectors) if CASES[label][2] and stored.vectors is not None else 0
    return len(stored.payload) + len(stored.codebook), vectors


@pytest.mark.parametrize("label", list(CASES))
def test_declared_memory_matches_the_measured_memory(label):
    cls, context, _ = built(label, N)
    grown, reported = measured(label, N)
    stored, vectors = sizes(label, N)
    model = cls.loaded_bytes(stored, 1, context.params, DIM) + vectors
    # the factor is the slope: loaded bytes per stored byte between two partition sizes,
    # without what every partition holds whatever its size
    small_grown, _ = measured(label, SMALL)
    small_stored, small_vectors = sizes(label, SMALL)
    factor = ((grown - vectors) - (small_grown - small_vectors)) / (stored - small_stored)
    declared = cls.loaded_bytes_factor(context.params, DIM)
    where = (f"{label}: stored {stored / N:.1f} B/row; loaded {grown / N:.1f} B/row measured, "
             f"{model / N:.1f} modelled, {reported / N:.1f} by memory_bytes; loaded bytes "
             f"per stored byte {factor:.2f} measured, {declared:.2f} declared")
    print(where)
    assert abs(declared - factor) <= TOLERANCE * factor, where
    assert abs(model - grown) <= TOLERANCE * grown, where
    assert abs(reported - grown) <= TOLERANCE * grown, where


def test_pq_loaded_factor_is_near_three_for_byte_codes():
    """PQ's loaded memory is several times its stored codes, unlike HNSW's."""
    params = CASES["pq8"][1]
    assert 2.5 < REGISTRY["pq"].loaded_bytes_factor(params, DIM) < 3.5
    assert REGISTRY["pq"].loaded_bytes_factor(CASES["pq4"][1], DIM) > 3.5
    assert REGISTRY["hnsw_sq8"].loaded_bytes_factor(CASES["hnsw_sq8"][1], DIM) < 1.2


class _Conf:
    def __init__(self, values: dict):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class _Session:
    def __init__(self, values: dict):
        self.conf = _Conf(values)


def manifest(index_type: str, params: dict, rows: int, stored: int, partitions: int = 4):
    return Manifest(
        root="/tmp/index", version=1, index_type=index_type, metric="l2", dim=DIM,
        id_type="long", build_spec={"numPartitions": partitions, **params}, user_set=[],
        meta_file="meta/m.bin", meta_sha256="ab" * 32,
        partitions=Partitions(
            files=[f"data/partition_id={p}/part.parquet" for p in range(partitions)],
            rows=[rows // partitions] * partitions,
            payload_bytes=[stored // partitions] * partitions,
            checksums=["c"] * partitions, sq_errors=[0.0] * partitions,
            deletes=[[] for _ in range(partitions)]))


def test_planner_uses_the_index_types_memory():
    """A PQ index whose stored bytes fit the worker cache with room to spare but whose
    loaded partitions do not is searched by partition, not locally."""
    cache_bytes = 1 << 30
    params = CASES["pq8"][1]
    stored = int(cache_bytes / 2)  # 16-byte codes: about 3x that once loaded
    pq = manifest("pq", params, rows=stored // 16, stored=stored)
    needed = memory_needed(pq, with_vectors=False)
    assert needed > 2.5 * stored
    session = _Session({CACHE_CONF: str(cache_bytes)})
    assert choose_strategy(session, pq, "auto", "task", False) == "partition"
    # the same stored bytes of HNSW (about 1.2x once loaded) are searched locally
    hnsw = manifest("hnsw", CASES["hnsw"][1], rows=stored // 288, stored=stored)
    assert memory_needed(hnsw, with_vectors=False) < cache_bytes
    assert choose_strategy(session, hnsw, "auto", "task", False) == "local"
    # exact vectors for re-ranking are counted once, beside the index
    with_vectors = memory_needed(pq, with_vectors=True)
    assert with_vectors - needed == pq.num_vectors * DIM * 4


if __name__ == "__main__":  # one measurement, for :func:`measured`
    import faiss

    faiss.omp_set_num_threads(1)
    print(json.dumps(measured_here(sys.argv[1], int(sys.argv[2]))))
