"""Pure helpers: merging candidates into top-k lists (sparkann.search.topk), packed
lists (sparkann.search.binary) and the
digests, rows and buckets of the index tables (sparkann.storage.tables). No Spark."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkann.index import StoredPartition
from sparkann.search.binary import packed_lists, packed_rows, unpacked_lists, unpacked_rows
from sparkann.search.topk import (
    Candidates,
    UnbalancedQuery,
    first_of_each,
    key_groups,
    last_key_start,
    query_neighbours,
    top_k_lists,
)
from sparkann.storage import tables
from sparkann.storage.format import sha256

FAST = settings(max_examples=50, deadline=None, derandomize=True)


def as_lists(array: pa.Array) -> list[list[tuple]]:
    return [[(n["id"], n["distance"]) for n in row] for row in array.to_pylist()]


# ------------------------------------------------------------------- top-k


def test_top_k_lists_orders_by_distance_then_arrival():
    rows = np.array([0, 0, 2, 0, 2, 0])
    dists = np.array([0.5, 0.25, 0.75, 0.25, 0.5, 1.0], np.float32)
    ids = pa.array([10, 11, 12, 13, 14, 15], pa.int64())
    lists = top_k_lists(3, rows, dists, ids, 3)
    assert lists.type == pa.list_(pa.struct([("id", pa.int64()), ("distance", pa.float32())]))
    assert as_lists(lists) == [[(11, 0.25), (13, 0.25), (10, 0.5)], [], [(14, 0.5), (12, 0.75)]]
    assert as_lists(top_k_lists(2, rows[:0], dists[:0], ids[:0], 3)) == [[], []]


@FAST
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), max_size=40),
       st.integers(1, 8))
def test_top_k_lists_matches_a_stable_sort(candidates, k):
    rows = np.array([r for r, _ in candidates], np.int64)
    dists = np.array([d / 2 for _, d in candidates], np.float32)
    ids = pa.array([f"id{i}" for i in range(len(candidates))], pa.string())
    expected = [sorted(((f"id{i}", float(dists[i])) for i in range(len(rows)) if rows[i] == q),
                       key=lambda pair: pair[1])[:k] for q in range(5)]
    assert as_lists(top_k_lists(5, rows, dists, ids, k)) == expected


def test_candidates_merge_partitions_skipping_missing_labels():
    candidates = Candidates(3, pa.int64())
    candidates.add(np.array([0, 2]), np.array([[1, 0, -1], [2, -1, -1]]),
                   np.array([[0.75, 0.125, np.inf], [0.25, np.inf, np.inf]], np.float32),
                   pa.array([100, 101, 102]))
    candidates.add(np.array([0]), np.array([[0, 1]]), np.array([[0.25, np.inf]], np.float32),
                   pa.array([200, 201], pa.int32()))
    candidates.add(np.array([1]), np.array([[-1, -1]]), np.full((1, 2), np.inf, np.float32),
                   pa.array([300]))
    candidates.add_found(np.array([1, 1]), np.array([0.5, np.nan], np.float32),
                         pa.array([400, 401]))
    assert as_lists(candidates.best(2)) == [[(100, 0.125), (200, 0.25)], [(400, 0.5)],
                                            [(102, 0.25)]]


def test_candidates_exclude_each_querys_own_id():
    candidates = Candidates(2, pa.string())
    candidates.add(np.array([0, 1]), np.array([[0, 1], [1, 0]]),
                   np.array([[0.0, 0.5], [0.0, 0.5]], np.float32), pa.array(["a", "b"]))
    assert as_lists(candidates.best(2, pa.array(["a", None]))) == [[("b", 0.5)],
                                                                    [("b", 0.0), ("a", 0.5)]]


def test_candidates_refuse_a_label_without_an_id():
    candidates = Candidates(1, pa.int64())
    with pytest.raises(ValueError, match="a row label has no id"):
        candidates.add(np.array([0]), np.array([[0, 2]]), np.zeros((1, 2), np.float32),
                       pa.array([7, 8]))


def test_no_candidates_give_empty_lists():
    assert as_lists(Candidates(3, pa.string()).best(5)) == [[], [], []]


# ------------------------------------------------------ records met by key

ROW = -1


def lists_of(values: list, arrow_type: pa.DataType) -> pa.Array:
    return pa.array(values, pa.list_(arrow_type))


def met(records: list[tuple], k: int = 2, id_type: pa.DataType = pa.int64()):
    """query_neighbours of records (key, kind, bucket, need, cover, ids, dists): the
    neighbour lists of the row records, by row position."""
    def column(i, dtype=np.int64):
        return np.array([r[i] for r in records], dtype)

    keys = [r[0] for r in records]
    rows, lists = query_neighbours(
        np.array([key[0] for key in keys], np.int64), np.array([key[1] for key in keys],
                                                               np.int64),
        column(1), column(2), column(3), column(4), lists_of([r[5] for r in records], id_type),
        lists_of([r[6] for r in records], pa.float32()), k, ROW)
    return dict(zip(rows.tolist(), as_lists(lists)))


def test_key_groups_and_the_last_key():
    k1, k2 = np.array([5, -3, 5, 5, -3]), np.array([1, 2, 0, 1, 2])
    groups, n = key_groups(k1, k2)
    assert n == 3 and groups.tolist() == [2, 0, 1, 2, 0]
    assert key_groups(k1[:0], k2[:0])[1] == 0
    assert last_key_start(np.array([1, 1, 2, 2, 2]), np.array([0, 0, 7, 7, 7])) == 2
    assert last_key_start(np.array([1, 1, 2]), np.array([0, 1, 1])) == 2
    assert last_key_start(np.array([4, 4]), np.array([1, 1])) == 0
    assert last_key_start(np.array([], np.int64), np.array([], np.int64)) == 0


def test_first_of_each_keeps_arrival_order_within_a_tuple():
    a, b = np.array([2, 1, 2, 1, 2]), np.array([0, 5, 0, 5, 1])
    assert first_of_each(a, b).tolist() == [1, 0, 4]
    assert first_of_each(a[:0], b[:0]).tolist() == []


def test_rows_meet_their_candidates_ties_by_partition_then_list_order():
    records = [
        ((1, 1), 3, -1, 0, 1, [30, 31], [0.5, 0.75]),
        ((2, 9), ROW, -1, 1, 0, [], []),
        ((1, 1), ROW, -1, 2, 0, [], []),
        ((2, 9), 0, -1, 0, 1, [7], [0.25]),
        ((1, 1), 1, -1, 0, 1, [10, 11], [0.5, 0.5]),
    ]
    assert met(records) == {1: [(7, 0.25)], 2: [(10, 0.5), (11, 0.5)]}
    assert met(records, k=5)[2] == [(10, 0.5), (11, 0.5), (30, 0.5), (31, 0.75)]


def test_duplicate_rows_share_candidates_sent_once_per_partition_and_bucket():
    key = (4, 4)
    records = [
        (key, ROW, -1, 2, 0, [], []), (key, ROW, -1, 2, 0, [], []),
        (key, 2, -1, 0, 1, ["a", "b"], [0.125, 0.25]),
        (key, 2, -1, 0, 1, ["a", "b"], [0.125, 0.25]),
        (key, 5, 0, 0, 1, ["c"], [0.0]), (key, 5, 3, 0, 1, ["d"], [0.1875]),
    ]
    found = met(records, k=3, id_type=pa.string())
    assert found == {0: [("c", 0.0), ("a", 0.125), ("d", 0.1875)],
                     1: [("c", 0.0), ("a", 0.125), ("d", 0.1875)]}


def test_fewer_candidates_than_k_and_none_at_all():
    records = [((1, 2), ROW, -1, 1, 0, [], []), ((1, 2), 0, -1, 0, 1, [], []),
               ((3, 4), ROW, -1, 1, 0, [], []), ((3, 4), 6, -1, 0, 1, [2**40], [1.0]),
               ((5, 6), ROW, -1, 0, 0, [], [])]
    assert met(records, k=10) == {0: [], 2: [(2**40, 1.0)], 4: []}


def test_coverage_records_count_without_candidates():
    records = [((1, 1), ROW, -1, 3, 0, [], []), ((1, 1), 0, 0, 0, 2, [8], [0.5]),
               ((1, 1), -3, 0, 0, 1, [], [])]
    assert met(records) == {0: [(8, 0.5)]}


@pytest.mark.parametrize("records", [
    [((1, 1), ROW, -1, 2, 0, [], []), ((1, 1), 0, -1, 0, 1, [8], [0.5])],  # a probe lost
    [((1, 1), 0, -1, 0, 1, [8], [0.5])],  # no row record
    [((1, 1), ROW, -1, 1, 0, [], []), ((1, 1), 0, -1, 0, 1, [8], [0.5]),
     ((1, 1), 1, -1, 0, 1, [9], [0.5])],  # one probe too many
])
def test_records_that_do_not_add_up_are_refused(records):
    with pytest.raises(UnbalancedQuery):
        met(records)


def test_no_records():
    assert met([]) == {}


# ---------------------------------------------------------------- packing


def test_packed_rows_round_trip_sliced():
    matrix = np.arange(12, dtype=np.float32).reshape(4, 3)
    packed = packed_rows(matrix)
    assert packed.type == pa.binary() and packed[1].as_py() == matrix[1].tobytes()
    assert np.array_equal(unpacked_rows(packed.slice(1, 2), 3), matrix[1:3])
    assert unpacked_rows(packed_rows(matrix[:0]), 3).shape == (0, 3)


@pytest.mark.parametrize("value_type", [pa.int64(), pa.float32()])
def test_packed_lists_round_trip_with_nulls_empties_and_slices(value_type):
    lists = pa.array([[1, 2], None, [3], [], [4, 5, 6]], pa.list_(value_type))
    for part in (lists, lists.slice(1), lists.slice(2, 2), lists.slice(5)):
        packed = packed_lists(part)
        assert packed.type == pa.binary()
        assert unpacked_lists(packed, value_type).to_pylist() == part.to_pylist()
        assert unpacked_lists(packed.slice(1), value_type).to_pylist() == part[1:].to_pylist()


def test_lists_of_strings_stay_lists():
    lists = pa.array([["a", "bc"], None], pa.list_(pa.string()))
    assert packed_lists(lists) is lists
    assert unpacked_lists(lists, pa.string()) is lists
    assert unpacked_lists(pa.nulls(2, pa.binary()), pa.int64()).to_pylist() == [None, None]


# ---------------------------------------------------------------- digests


def test_ids_digest_is_canonical():
    longs = tables.ids_digest(pa.array([1, -2, 3], pa.int64()))
    assert longs == np.array([1, -2, 3], "<i8").tobytes()
    assert tables.ids_digest(pa.array([1, -2, 3], pa.int32())) == longs
    assert tables.ids_digest(pa.chunked_array([[1], [-2, 3]])) == longs
    assert tables.ids_digest(pa.array([0, 1, -2, 3])[1:]) == longs
    strings = tables.ids_digest(pa.array(["ab", "c"]))
    assert tables.ids_digest(pa.array(["ab", "c"], pa.large_string())) == strings
    assert tables.ids_digest(pa.array(["x", "ab", "c"])[1:]) == strings
    assert tables.ids_digest(pa.chunked_array([["ab"], ["c"]])) == strings
    assert tables.ids_digest(pa.array(["a", "bc"])) != strings  # the boundaries count
    assert tables.ids_digest(pa.array([], pa.string())) == np.zeros(1, "<i8").tobytes()


def stored(vectors: bytes | None = b"\x00" * 16) -> StoredPartition:
    return StoredPartition(payload=b"payload", codebook=b"codebook", vectors=vectors,
                           sq_error=2.5)


def test_digests_and_combined_checksum():
    ids = pa.array([5, 6])
    parts = tables.digests(stored(), ids)
    framed = sha256(len(b"payload").to_bytes(8, "little"), b"payload",
                    len(b"codebook").to_bytes(8, "little"), b"codebook")
    assert parts == {"payload_sha256": framed,
                     "ids_sha256": sha256(tables.ids_digest(ids)),
                     "vectors_sha256": sha256(b"\x00" * 16)}
    assert tables.digests(stored(None), ids)["vectors_sha256"] == ""
    combined = tables.combined_checksum(parts)
    assert combined == sha256("|".join(parts[k] for k in (
        "payload_sha256", "ids_sha256", "vectors_sha256")).encode())
    assert tables.combined_checksum(tables.digests(stored(), pa.array([5, 7]))) != combined
    other = StoredPartition(b"payloa", b"dcodebook", b"\x00" * 16)
    assert tables.digests(other, ids)["payload_sha256"] != parts["payload_sha256"]  # each
    # part is framed by its length: no byte can move from the payload to the codebook


@pytest.mark.parametrize("ids", [pa.array([3, 1, 2], pa.int64()), pa.array(["c", "a", "b"]),
                                 pa.chunked_array([[3], [1, 2]])])
@pytest.mark.parametrize("vectors", [None, b"\x01" * 24])
def test_partition_row_round_trip(ids, vectors):
    part = stored(vectors)
    row = tables.partition_row(7, ids, part)
    assert row.num_rows == 1 and set(tables.INDEX_COLUMNS) <= set(row.column_names)
    facts = {name: row.column(name)[0].as_py() for name in tables.INDEX_FACTS}
    assert facts["partition_id"] == 7 and row.column("pid")[0].as_py() == 7
    assert facts["num_rows"] == len(ids)
    assert facts["payload_bytes"] == len(part.payload) + len(part.codebook)
    assert facts["checksum"] == tables.combined_checksum(tables.digests(part, ids))
    back, back_ids = tables.stored_from_row(row)
    assert back == part
    combined = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    assert back_ids.to_pylist() == combined.to_pylist()


def test_stored_from_a_row_without_optional_columns():
    row = tables.partition_row(0, pa.array([1]), stored()).drop_columns(["codebook", "vectors",
                                                                         "sq_error"])
    back, _ = tables.stored_from_row(row)
    assert back == StoredPartition(payload=b"payload", codebook=b"", vectors=None, sq_error=0.0)


def test_labels_checksum_ignores_order():
    assert tables.labels_checksum(np.array([5, 1, 3])) == tables.labels_checksum([1, 3, 5])
    assert tables.labels_checksum([1, 3, 5]) == sha256(np.array([1, 3, 5], "<i4").tobytes())
    assert tables.labels_checksum([1, 3]) != tables.labels_checksum([1, 3, 5])


# ---------------------------------------------------------------- buckets

MASK = (1 << 64) - 1


def splitmix64(value: int) -> int:
    x = (value + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


LONGS = [0, 1, -1, 42, 2**63 - 1, -(2**63), 123456789012345]


@pytest.mark.parametrize("buckets", [2, 7, 1 << 20])
def test_id_buckets_of_long_ids_are_splitmix64(buckets):
    got = tables.id_buckets(pa.array(LONGS, pa.int64()), buckets)
    assert got.dtype == np.int32
    assert got.tolist() == [splitmix64(v & MASK) % buckets for v in LONGS]
    small = [v for v in LONGS if -(2**31) <= v < 2**31]
    assert (tables.id_buckets(pa.array(small, pa.int32()), buckets).tolist()
            == tables.id_buckets(pa.array(small, pa.int64()), buckets).tolist())
    assert (tables.id_buckets(pa.chunked_array([LONGS[:2], LONGS[2:]]), buckets).tolist()
            == got.tolist())


@pytest.mark.parametrize("buckets", [3, 1000])
def test_id_buckets_of_string_ids_are_blake2b(buckets):
    ids = ["", "a", "user-17", "\u00e9t\u00e9"]
    expected = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                % buckets for s in ids]
    assert tables.id_buckets(pa.array(ids), buckets).tolist() == expected
    assert tables.id_buckets(pa.array(ids, pa.large_string()), buckets).tolist() == expected


def test_id_buckets_spread_and_single_bucket():
    ids = pa.array(np.arange(20_000))
    counts = np.bincount(tables.id_buckets(ids, 8), minlength=8)
    assert counts.min() > 0.9 * counts.mean()
    assert not tables.id_buckets(ids, 1).any()
