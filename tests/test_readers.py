"""Tests for sparkann.readers and benchmarks/shared_data.py (pure numpy; no Spark)."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import shared_data  # benchmarks/shared_data.py, on sys.path through conftest
from shared_data import default_data_root, load_dataset

from sparkann import readers
from sparkann.readers import (
    read_bvecs,
    read_fvecs,
    read_hdf5,
    read_idx,
    read_idx_vectors,
    read_ivecs,
    read_vectors,
    write_fvecs,
    write_ivecs,
)

DATA_ROOT = default_data_root()


def _needs_data(name: str):
    """Skip unless the shared data folder holds dataset ``name``."""
    present = DATA_ROOT is not None and (Path(DATA_ROOT) / name).is_dir()
    return pytest.mark.skipif(not present, reason=f"shared data {name!r} not available")


def _write_idx(path: Path, array: np.ndarray, type_code: int, compress: bool) -> None:
    """Write ``array`` as an idx file (big-endian), optionally gzip-compressed."""
    be = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim])
    header += struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(be[type_code]).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


# --------------------------------------------------------------------------
# fvecs / ivecs / bvecs
# --------------------------------------------------------------------------


def test_fvecs_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 5)).astype(np.float32)
    p = tmp_path / "x.fvecs"
    write_fvecs(p, x)
    assert p.stat().st_size == 37 * (4 + 5 * 4)
    y = read_fvecs(p)
    assert y.dtype == np.float32 and y.shape == (37, 5)
    np.testing.assert_array_equal(x, y)
    assert y.flags.c_contiguous and y.flags.writeable


def test_ivecs_round_trip(tmp_path: Path) -> None:
    x = np.arange(-30, 30, dtype=np.int64).reshape(6, 10)
    p = tmp_path / "x.ivecs"
    write_ivecs(str(p), x)
    y = read_ivecs(str(p))
    assert y.dtype == np.int32 and y.shape == (6, 10)
    np.testing.assert_array_equal(x, y)


def test_fvecs_layout_matches_spec(tmp_path: Path) -> None:
    # Hand-built records: little-endian int32 d, then d float32.
    p = tmp_path / "hand.fvecs"
    p.write_bytes(
        struct.pack("<i3f", 3, 1.0, 2.0, 3.0) + struct.pack("<i3f", 3, 4, 5, 6)
    )
    np.testing.assert_array_equal(read_fvecs(p), [[1, 2, 3], [4, 5, 6]])


def test_bvecs_read(tmp_path: Path) -> None:
    rows = [bytes([0, 1, 2, 255]), bytes([9, 8, 7, 6])]
    p = tmp_path / "x.bvecs"
    p.write_bytes(b"".join(struct.pack("<i", 4) + r for r in rows))
    y = read_bvecs(p)
    assert y.dtype == np.uint8 and y.shape == (2, 4)
    np.testing.assert_array_equal(y, [[0, 1, 2, 255], [9, 8, 7, 6]])
    np.testing.assert_array_equal(read_bvecs(p, count=1), [[0, 1, 2, 255]])


@pytest.mark.parametrize(
    "count, expected", [(0, 0), (1, 1), (4, 4), (10, 10), (99, 10)]
)
def test_count_limits_rows(tmp_path: Path, count: int, expected: int) -> None:
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    p = tmp_path / "x.fvecs"
    write_fvecs(p, x)
    y = read_fvecs(p, count=count)
    assert y.shape == (expected, 3)
    np.testing.assert_array_equal(y, x[:expected])
    gt = tmp_path / "x.ivecs"
    write_ivecs(gt, x.astype(np.int32))
    assert read_ivecs(gt, count=count).shape == (expected, 3)


def test_negative_count_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.fvecs"
    write_fvecs(p, np.ones((2, 2)))
    with pytest.raises(ValueError, match="count"):
        read_fvecs(p, count=-1)


def test_truncated_fvecs_raises(tmp_path: Path) -> None:
    p = tmp_path / "x.fvecs"
    write_fvecs(p, np.ones((4, 8), dtype=np.float32))
    data = p.read_bytes()
    bad = tmp_path / "trunc.fvecs"
    bad.write_bytes(data[:-3])
    with pytest.raises(
        ValueError, match=r"trunc\.fvecs.*truncated or not a fvecs file"
    ):
        read_fvecs(bad)


def test_tiny_file_raises(tmp_path: Path) -> None:
    p = tmp_path / "tiny.fvecs"
    p.write_bytes(b"\x01\x00")
    with pytest.raises(ValueError, match="truncated"):
        read_fvecs(p)


def test_inconsistent_dims_raise(tmp_path: Path) -> None:
    # Two records of equal byte size but a wrong dimension in the second one.
    p = tmp_path / "x.ivecs"
    p.write_bytes(struct.pack("<i2i", 2, 1, 2) + struct.pack("<i2i", 7, 3, 4))
    with pytest.raises(ValueError, match="vector 1 has dimension 7"):
        read_ivecs(p)


@pytest.mark.parametrize("d", [0, -5])
def test_nonpositive_dim_raises(tmp_path: Path, d: int) -> None:
    p = tmp_path / "x.fvecs"
    p.write_bytes(struct.pack("<i", d) * 4)
    with pytest.raises(ValueError, match="dimension"):
        read_fvecs(p)


def test_empty_file_gives_empty_array(tmp_path: Path) -> None:
    p = tmp_path / "empty.fvecs"
    p.write_bytes(b"")
    y = read_fvecs(p)
    assert y.shape == (0, 0) and y.dtype == np.float32


def test_write_validates_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        write_fvecs(tmp_path / "a.fvecs", np.ones(3))
    with pytest.raises(ValueError, match="d > 0"):
        write_fvecs(tmp_path / "a.fvecs", np.ones((3, 0)))
    with pytest.raises(TypeError):
        write_ivecs(tmp_path / "a.ivecs", np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="int32"):
        write_ivecs(tmp_path / "a.ivecs", np.array([[2**40]], dtype=np.int64))


# --------------------------------------------------------------------------
# idx
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_idx_uint8_images(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    # Name without .gz even when compressed: detection is by magic bytes.
    p = tmp_path / "imgs-idx3-ubyte"
    _write_idx(p, imgs, 0x08, compress)
    y = read_idx(p)
    assert y.dtype == np.uint8 and y.shape == (5, 4, 3)
    np.testing.assert_array_equal(y, imgs)
    v = read_idx_vectors(p)
    assert v.dtype == np.float32 and v.shape == (5, 12)
    np.testing.assert_array_equal(v, imgs.reshape(5, 12))


@pytest.mark.parametrize(
    "type_code, dtype",
    [
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
def test_idx_other_types(tmp_path: Path, type_code: int, dtype: type) -> None:
    x = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    p = tmp_path / "x.idx"
    _write_idx(p, x, type_code, compress=False)
    y = read_idx(p)
    assert y.dtype == np.dtype(dtype) and y.dtype.isnative
    np.testing.assert_array_equal(y, x)
    y[0, 0, 0] = 1  # writable


def test_idx_1d_labels(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    p = tmp_path / "labels-idx1-ubyte.gz"
    _write_idx(p, labels, 0x08, compress=True)
    np.testing.assert_array_equal(read_idx(p), labels)
    assert read_idx_vectors(p).shape == (5, 1)


def test_idx_bad_magic_raises(tmp_path: Path) -> None:
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">i", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)


def test_idx_unsupported_type_raises(tmp_path: Path) -> None:
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">i", 1) + b"\x00")
    with pytest.raises(ValueError, match="type byte 0x07"):
        read_idx(p)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_size_mismatch_raises(tmp_path: Path, compress: bool) -> None:
    payload = b"\x00\x00\x08\x02" + struct.pack(">2i", 3, 4) + bytes(11)  # needs 12
    p = tmp_path / "short.idx"
    p.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_idx_truncated_gzip_raises(tmp_path: Path) -> None:
    p = tmp_path / "x.idx.gz"
    _write_idx(p, np.zeros((10, 10), dtype=np.uint8), 0x08, compress=True)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(p)


def _idx_header(shape: tuple[int, ...], type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}i", *shape)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_data_longer_than_declared_raises(tmp_path: Path, compress: bool) -> None:
    payload = _idx_header((3, 4)) + bytes(13)  # declares 12
    p = tmp_path / "long.idx"
    p.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(ValueError, match=r"declares shape \(3, 4\) \(12 data bytes\)"):
        read_idx(p)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_truncated_header_raises(tmp_path: Path, compress: bool) -> None:
    payload = b"\x00\x00\x08\x03" + struct.pack(">i", 5)  # 3 dimensions, only 1 size
    p = tmp_path / "head.idx"
    p.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(ValueError, match="header is truncated"):
        read_idx(p)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_declared_size_above_max_bytes_is_refused(tmp_path: Path, compress: bool) -> None:
    x = np.arange(1000, dtype=np.uint8).reshape(10, 100)
    p = tmp_path / "x.idx"
    _write_idx(p, x, 0x08, compress)
    with pytest.raises(ValueError, match="more than the limit of 999 bytes"):
        read_idx(p, max_bytes=999)
    with pytest.raises(ValueError, match="limit"):
        read_vectors(p, max_bytes=999)
    np.testing.assert_array_equal(read_idx(p, max_bytes=1000), x)
    assert read_idx_vectors(p, max_bytes=1000).shape == (10, 100)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_huge_declared_shape_is_refused_before_allocating(
    tmp_path: Path, compress: bool
) -> None:
    # 2**40 float64 values = 8 TiB: above the default limit of 8 GiB
    payload = _idx_header((2**20, 2**20), 0x0E) + bytes(64)
    p = tmp_path / "huge.idx"
    p.write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(ValueError, match="more than the limit"):
        read_idx(p)
    assert readers.IDX_MAX_BYTES == 2**33


def test_idx_gzip_declaring_more_than_it_can_hold_is_refused(tmp_path: Path) -> None:
    # 64 MiB declared, under the default limit, in a gzip file of a few dozen bytes
    p = tmp_path / "small.idx.gz"
    p.write_bytes(gzip.compress(_idx_header((2**16, 2**10)) + bytes(10)))
    with pytest.raises(ValueError, match="gzip file can hold"):
        read_idx(p)


def test_idx_plain_declaring_more_than_the_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "plain.idx"
    p.write_bytes(_idx_header((2**16, 2**10)) + bytes(10))
    with pytest.raises(ValueError, match="holds 10; the file is truncated"):
        read_idx(p)


GIB = 2**30
BOMB_CHUNK = 64 << 20


def _write_gzip_bomb(path: Path, header: bytes, declared: int, total: int) -> int:
    """An idx header, ``declared`` data bytes, then zeros up to ``total`` bytes, as gzip.

    The first member is streamed through gzip.open in chunks; the rest of the
    zeros are copies of one compressed 64 MiB member (a multi-member gzip file,
    read back as one stream). Returns the uncompressed size.
    """
    chunk = bytes(16 << 20)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header)
        out.write(bytes(declared))
        written = 0
        while written < BOMB_CHUNK:
            out.write(chunk)
            written += len(chunk)
    size = len(header) + declared + BOMB_CHUNK
    member = gzip.compress(bytes(BOMB_CHUNK), compresslevel=9)
    with open(path, "ab") as out:
        while size < total:
            out.write(member)
            size += BOMB_CHUNK
    return size


def test_idx_gzip_bomb_is_refused_without_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    shape = (1024, 1024)  # 1 MiB of uint8 declared
    header = _idx_header(shape)
    declared = 1024 * 1024
    p = tmp_path / "bomb-idx3-ubyte.gz"
    inflated = _write_gzip_bomb(p, header, declared, total=4 * GIB)
    assert inflated >= 4 * GIB and p.stat().st_size < 8 << 20  # a few MB on disk

    consumed = []

    class CountingGzipFile(gzip.GzipFile):
        def close(self) -> None:
            if self.fileobj is not None:
                consumed.append(self.tell())  # uncompressed bytes handed to the reader
            super().close()

    monkeypatch.setattr(readers.gzip, "GzipFile", CountingGzipFile)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more data follows"):
            read_idx(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert consumed and consumed[0] <= len(header) + declared + 1
    assert peak < 64 << 20


def test_vecs_dimension_larger_than_the_file_is_refused(tmp_path: Path) -> None:
    for name, reader in (("x.fvecs", read_fvecs), ("x.bvecs", read_bvecs)):
        p = tmp_path / name
        p.write_bytes(struct.pack("<i", 2**31 - 1) + bytes(12))
        with pytest.raises(ValueError, match="declares dimension 2147483647"):
            reader(p)


# --------------------------------------------------------------------------
# HDF5
# --------------------------------------------------------------------------


def test_hdf5_round_trip(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "tiny.hdf5"
    train = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    neighbors = np.arange(6, dtype=np.int32).reshape(2, 3)
    with h5py.File(p, "w") as f:
        f.create_dataset("train", data=train)
        f.create_dataset("test", data=train[:2])
        f.create_dataset("neighbors", data=neighbors)
        f.create_dataset("distances", data=np.zeros((2, 3), dtype=np.float32))
    np.testing.assert_array_equal(read_hdf5(p, "train"), train)
    np.testing.assert_array_equal(read_hdf5(p, "neighbors"), neighbors)
    np.testing.assert_array_equal(read_vectors(p, dataset="test"), train[:2])
    np.testing.assert_array_equal(read_vectors(p, fmt="hdf5", dataset="train"), train)
    with pytest.raises(KeyError, match="nope"):
        read_hdf5(p, "nope")


def test_hdf5_missing_h5py_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(ImportError, match=r"pip install sparkann\[hdf5\]"):
        read_hdf5(tmp_path / "x.hdf5", "train")


# --------------------------------------------------------------------------
# read_vectors dispatch
# --------------------------------------------------------------------------


def test_read_vectors_dispatch_by_extension(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_fvecs(tmp_path / "a.fvecs", x)
    write_ivecs(tmp_path / "a.ivecs", x.astype(np.int32))
    (tmp_path / "a.bvecs").write_bytes(struct.pack("<i", 2) + b"\x01\x02")
    _write_idx(
        tmp_path / "a-idx3-ubyte.gz", x.astype(np.uint8).reshape(4, 3, 1), 0x08, True
    )
    _write_idx(tmp_path / "b.idx3", x.astype(np.uint8), 0x08, False)

    f = read_vectors(tmp_path / "a.fvecs")
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, x)
    assert read_vectors(tmp_path / "a.fvecs", count=2).shape == (2, 3)
    assert read_vectors(tmp_path / "a.ivecs").dtype == np.int32
    np.testing.assert_array_equal(read_vectors(tmp_path / "a.bvecs"), [[1, 2]])
    for name in ("a-idx3-ubyte.gz", "b.idx3"):
        v = read_vectors(tmp_path / name)
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, x)


def test_read_vectors_explicit_fmt(tmp_path: Path) -> None:
    x = np.ones((2, 2), dtype=np.float32)
    p = tmp_path / "data.bin"
    write_fvecs(p, x)
    np.testing.assert_array_equal(read_vectors(p, fmt="fvecs"), x)
    np.testing.assert_array_equal(read_vectors(p, fmt="FVECS"), x)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("x.fvecs", "fvecs"),
        ("X.IVECS", "ivecs"),
        ("x.bvecs", "bvecs"),
        ("train-images-idx3-ubyte", "idx"),
        ("train-images-idx3-ubyte.gz", "idx"),
        ("x.idx", "idx"),
        ("x.idx1.gz", "idx"),
        ("x.hdf5", "hdf5"),
        ("x.h5", "hdf5"),
        ("x.npy", None),
        ("x.fvecs.gz", None),
    ],
)
def test_guess_format(name: str, expected: str | None) -> None:
    assert readers.guess_format(name) == expected


def test_read_vectors_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="fvecs, ivecs, bvecs, idx, hdf5"):
        read_vectors(p)
    with pytest.raises(ValueError, match="supported formats"):
        read_vectors(p, fmt="npy")


# --------------------------------------------------------------------------
# shared data lookup (benchmarks/shared_data.py)
# --------------------------------------------------------------------------


def test_default_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPARKANN_DATA", str(tmp_path))
    assert default_data_root() == str(tmp_path)
    monkeypatch.delenv("SPARKANN_DATA")
    root = default_data_root()
    assert root is None or Path(root).is_dir()


def test_load_dataset_generated_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sift = tmp_path / "sift10k"
    sift.mkdir()
    base = rng.standard_normal((20, 4)).astype(np.float32)
    write_fvecs(sift / "siftsmall_base.fvecs", base)
    write_fvecs(sift / "siftsmall_query.fvecs", base[:3])
    write_ivecs(sift / "siftsmall_groundtruth.ivecs", np.arange(15).reshape(3, 5))
    ds = load_dataset("sift10k", tmp_path)
    np.testing.assert_array_equal(ds["base"], base)
    assert ds["queries"].shape == (3, 4)
    assert ds["groundtruth"].dtype == np.int32 and ds["groundtruth"].shape == (3, 5)
    assert ds["metric"] == "l2"

    mn = tmp_path / "mnist"
    mn.mkdir()
    imgs = rng.integers(0, 256, size=(6, 2, 2), dtype=np.uint8)
    _write_idx(mn / "train-images-idx3-ubyte.gz", imgs, 0x08, True)
    _write_idx(mn / "t10k-images-idx3-ubyte.gz", imgs[:2], 0x08, True)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds["base"].shape == (6, 4) and ds["queries"].shape == (2, 4)
    assert ds["base"].dtype == np.float32 and ds["groundtruth"] is None


def test_load_dataset_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("glove", tmp_path)
    with pytest.raises(FileNotFoundError, match="sift10k"):
        load_dataset("sift10k", tmp_path)
    (tmp_path / "sift10k").mkdir()
    write_fvecs(tmp_path / "sift10k" / "siftsmall_base.fvecs", np.ones((2, 2)))
    with pytest.raises(FileNotFoundError, match="siftsmall_query.fvecs"):
        load_dataset("sift10k", tmp_path)
    monkeypatch.setattr(shared_data, "default_data_root", lambda: None)
    with pytest.raises(FileNotFoundError, match="SPARKANN_DATA"):
        load_dataset("mnist")


# --------------------------------------------------------------------------
# Shared real data (skipped when absent)
# --------------------------------------------------------------------------


@_needs_data("fashion-mnist")
def test_fashion_mnist_shapes() -> None:
    ds = load_dataset("fashion-mnist", DATA_ROOT)
    base, queries = ds["base"], ds["queries"]
    assert base.shape == (60000, 784) and queries.shape == (10000, 784)
    assert base.dtype == np.float32 and queries.dtype == np.float32
    assert base.min() >= 0 and base.max() <= 255 and base.max() > 0
    assert queries.min() >= 0 and queries.max() <= 255
    np.testing.assert_array_equal(base, np.round(base))  # integral pixels
    assert ds["groundtruth"] is None and ds["metric"] == "l2"


@_needs_data("mnist")
def test_mnist_raw_idx() -> None:
    root = Path(DATA_ROOT) / "mnist"
    imgs = read_idx(root / "t10k-images-idx3-ubyte.gz")
    assert imgs.shape == (10000, 28, 28) and imgs.dtype == np.uint8
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    v = read_vectors(root / "t10k-images-idx3-ubyte.gz")
    assert v.shape == (10000, 784) and v.dtype == np.float32
    np.testing.assert_array_equal(v, imgs.reshape(10000, 784))


@_needs_data("sift10k")
def test_sift10k() -> None:
    ds = load_dataset("sift10k", DATA_ROOT)
    base, queries, gt = ds["base"], ds["queries"], ds["groundtruth"]
    assert base.shape == (10000, 128) and base.dtype == np.float32
    assert queries.shape == (100, 128) and queries.dtype == np.float32
    assert gt.shape == (100, 100) and gt.dtype == np.int32
    assert gt.min() >= 0 and gt.max() < 10000
    # The first ground-truth id is the exact nearest neighbour of each query.
    d2 = ((queries[:5, None, :] - base[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(d2.argmin(1), gt[:5, 0])


@_needs_data("sift10k")
def test_sift10k_dispatch_and_count() -> None:
    root = Path(DATA_ROOT) / "sift10k"
    full = read_vectors(root / "siftsmall_base.fvecs")
    head = read_vectors(root / "siftsmall_base.fvecs", count=7)
    np.testing.assert_array_equal(head, full[:7])
    assert read_vectors(root / "siftsmall_groundtruth.ivecs", count=3).shape == (3, 100)
