"""The memory-bound index type: HNSW over 8-bit scalar-quantized vectors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import neighbor_ids, vectors_frame

from sparkann import ANNIndex, datasets, exact
from sparkann.index import PartitionContext
from sparkann.index.hnsw import HNSWKnobs
from sparkann.index.hnsw_sq import HNSWSQIndex
from sparkann.metrics import get_metric

DIM = 16
PARAMS = {"hnswM": 8, "efConstruction": 80}


@pytest.fixture(scope="module")
def built():
    context = PartitionContext(get_metric("l2"), DIM, PARAMS)
    base = datasets.clustered(1500, DIM, seed=4)
    return context, base, HNSWSQIndex.build(base, context, seed=0, threads=1)


def split(payload: bytes) -> tuple[dict, dict]:
    """A payload's header and arrays, to damage one and put it back together."""
    (length,) = struct.unpack("<Q", payload[8:16])
    head = json.loads(payload[16:16 + length])
    arrays, offset = {}, 16 + length
    for name, dtype in (("levels", np.int32), ("offsets", np.int64), ("neighbors", np.int32),
                        ("trained", np.float32), ("codes", np.uint8)):
        size = head["lengths"][name] * np.dtype(dtype).itemsize
        arrays[name] = np.frombuffer(payload[offset:offset + size], dtype).copy()
        offset += size
    return head, arrays


def join(head: dict, arrays: dict) -> bytes:
    head = {**head, "lengths": {name: int(a.size) for name, a in arrays.items()}}
    text = json.dumps(head, sort_keys=True).encode()
    return b"SANNHSQ1" + struct.pack("<Q", len(text)) + text + b"".join(
        a.tobytes() for a in arrays.values())


def load(context, payload):
    from sparkann.index import StoredPartition

    return HNSWSQIndex.load(StoredPartition(payload), context)


def test_a_quarter_of_the_vector_memory_and_a_round_trip(built):
    context, base, index = built
    assert index.memory_bytes() < 0.6 * len(base) * DIM * 4 + 200 * len(base)
    payload = index.store().payload
    assert join(*split(payload)) == payload
    again = load(context, payload)
    knobs = HNSWKnobs(ef_search=64)
    for a, b in zip(index.search(base[:20], 10, knobs), again.search(base[:20], 10, knobs)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage, message", [
    (lambda h, a: a["neighbors"].__setitem__(5, 10_000), "links out of range"),
    (lambda h, a: a["offsets"].__setitem__(3, a["offsets"][3] + 1), "offsets"),
    (lambda h, a: h.__setitem__("entry", 10_000), "entry point"),
    (lambda h, a: h.__setitem__("maxLevel", h["maxLevel"] + 1), "entry point"),
    (lambda h, a: a["levels"].__setitem__(0, 99), "levels out of range"),
    (lambda h, a: h.__setitem__("n", 10 ** 12), "lengths"),
    (lambda h, a: h.__setitem__("dim", 8), "dim=8"),
    (lambda h, a: a["trained"].__setitem__(0, np.nan), "non-finite"),
    (lambda h, a: h.__setitem__("efConstruction", 1 << 31), "unreadable header"),
    (lambda h, a: h.__setitem__("efConstruction", -1), "unreadable header"),
])
def test_damaged_payloads_are_refused_before_faiss_sees_them(built, damage, message):
    context, _, index = built
    head, arrays = split(index.store().payload)
    damage(head, arrays)
    with pytest.raises(ValueError, match=message):
        load(context, join(head, arrays))


def test_links_to_nodes_below_their_level_are_refused(built):
    context, _, index = built
    head, arrays = split(index.store().payload)
    levels, offsets = arrays["levels"], arrays["offsets"]
    top = int(np.flatnonzero(levels >= 2)[0])  # a node with an upper level
    low = int(np.flatnonzero(levels == 1)[0])  # a node on the bottom level only
    base_slots = 2 * PARAMS["hnswM"]  # faiss keeps 2M bottom-level links, then M per level
    arrays["neighbors"][offsets[top] + base_slots] = low  # its first level-1 link
    with pytest.raises(ValueError, match="below their level"):
        load(context, join(head, arrays))


def test_truncated_and_trailing_bytes(built):
    context, _, index = built
    payload = index.store().payload
    for broken in (payload[:-10], payload + b"\x00", payload[:12], b"SANNHSQ9" + payload[8:]):
        with pytest.raises(ValueError):
            load(context, broken)


def test_fit_and_search_with_hnsw_sq8(spark):
    base = datasets.clustered(5000, 32, seed=8)
    queries = datasets.clustered(150, 32, seed=8, sample_seed=3)
    model = ANNIndex(indexType="hnsw_sq8", numPartitions=4, seed=1).fit(vectors_frame(spark, base))
    plain = ANNIndex(numPartitions=4, seed=1, targetRecall=0).fit(vectors_frame(spark, base))
    assert model.summary()["calibration"]["reached"]
    found = neighbor_ids(model.transform(vectors_frame(spark, queries, id_name="qid")).collect(),
                         "qid")
    assert exact.recall_at_k(found, exact.knn(base, queries, 10)[0], 10) >= 0.93
    # a quarter of the vector bytes; the graph's links are the rest (less at higher dims)
    assert model.summary()["indexBytes"] < 0.7 * plain.summary()["indexBytes"]
    deleted = model.delete(list(range(100)))
    rows = deleted.transform(vectors_frame(spark, base[:100])).collect()
    assert not {n.id for r in rows for n in r.neighbors} & set(range(100))
