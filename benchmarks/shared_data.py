"""The shared data folder of the benchmarks and tests (``<repo>/../shared/data``).

Not part of the ``sparkann`` package: it knows the folder's location and the
file names of its datasets (``fashion-mnist``, ``mnist``, ``sift10k``) and
reads them with :mod:`sparkann.readers`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sparkann.readers import read_ivecs, read_vectors

__all__ = ["DATASETS", "default_data_root", "load_dataset"]

PathLike = str | os.PathLike[str]

#: The repository holding this folder.
REPO = Path(__file__).resolve().parent.parent

#: Shared-data layout: name -> (base file, query file, ground-truth file or None).
DATASETS: dict[str, tuple[str, str, str | None]] = {
    "fashion-mnist": ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", None),
    "mnist": ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", None),
    "sift10k": (
        "siftsmall_base.fvecs",
        "siftsmall_query.fvecs",
        "siftsmall_groundtruth.ivecs",
    ),
}


def default_data_root() -> str | None:
    """Locate the shared data folder.

    Returns
    -------
    str or None
        ``$SPARKANN_DATA`` if set; else ``<repo>/../shared/data`` if it
        exists; else ``None``.
    """
    env = os.environ.get("SPARKANN_DATA")
    if env:
        return env
    candidate = (REPO.parent / "shared" / "data").resolve()
    return str(candidate) if candidate.is_dir() else None


def _require_file(path: Path, name: str) -> str:
    """Return ``path`` as a string, or raise FileNotFoundError naming the dataset."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: missing file {path}")
    return str(path)


def _read_float32(path: str) -> np.ndarray:
    """Read vectors with :func:`sparkann.readers.read_vectors` as float32."""
    return read_vectors(path).astype(np.float32, copy=False)


def load_dataset(name: str, root: PathLike | None = None) -> dict[str, Any]:
    """Load a dataset from the shared data folder layout.

    Parameters
    ----------
    name : str
        ``"fashion-mnist"``, ``"mnist"`` or ``"sift10k"``.
    root : str or os.PathLike, optional
        Folder holding one sub-folder per dataset; defaults to
        :func:`default_data_root`.

    Returns
    -------
    dict
        ``{"base": float32 (n, d), "queries": float32 (nq, d),
        "groundtruth": int32 (nq, k) or None, "metric": "l2"}``.

    Raises
    ------
    ValueError
        If ``name`` is unknown or the files disagree on dimensions.
    FileNotFoundError
        If the data root or a dataset file is missing.
    """
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {sorted(DATASETS)}"
        )
    if root is None:
        root = default_data_root()
        if root is None:
            raise FileNotFoundError(
                "no data root found: pass root= or set the SPARKANN_DATA "
                "environment variable"
            )
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {folder} does not exist")

    base_file, query_file, gt_file = DATASETS[name]
    base = _read_float32(_require_file(folder / base_file, name))
    queries = _read_float32(_require_file(folder / query_file, name))
    groundtruth = None
    if gt_file is not None:
        groundtruth = read_ivecs(_require_file(folder / gt_file, name))

    # Sanity checks across files.
    if base.shape[1] != queries.shape[1]:
        raise ValueError(
            f"dataset {name!r}: base dim {base.shape[1]} "
            f"!= query dim {queries.shape[1]}"
        )
    if groundtruth is not None and groundtruth.shape[0] != queries.shape[0]:
        raise ValueError(
            f"dataset {name!r}: {groundtruth.shape[0]} ground-truth rows "
            f"for {queries.shape[0]} queries"
        )
    return {
        "base": base,
        "queries": queries,
        "groundtruth": groundtruth,
        "metric": "l2",
    }
