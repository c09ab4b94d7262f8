"""Seeded synthetic embeddings that behave like real ones. Pure numpy; no Spark.

Real embeddings are clustered and lie near a low-dimensional subspace;
isotropic Gaussian noise is the worst case for partitioning and quantization
and is not what users index. :func:`clustered` draws cluster centres in a
random ``rank``-dimensional subspace, spreads each cluster inside that subspace,
then adds a little full-rank noise.
"""

from __future__ import annotations

import numpy as np


def clustered(
    num_rows: int,
    dim: int = 64,
    *,
    num_clusters: int = 32,
    rank: int = 16,
    spread: float = 0.35,
    noise: float = 0.05,
    seed: int = 0,
    sample_seed: int | None = None,
) -> np.ndarray:
    """``num_rows`` float32 vectors of dimension ``dim``.

    ``seed`` fixes the mixture; ``sample_seed`` (default: ``seed``) fixes the
    draw. Queries for a dataset: the same ``seed`` with another ``sample_seed``.
    """
    rng = np.random.default_rng(seed)
    rank = min(rank, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim)
    centres = rng.standard_normal((num_clusters, rank))
    weights = rng.dirichlet(np.full(num_clusters, 2.0))
    if sample_seed is not None:
        rng = np.random.default_rng([seed, sample_seed])
    labels = rng.choice(num_clusters, size=num_rows, p=weights)
    local = centres[labels] + spread * rng.standard_normal((num_rows, rank))
    full = local @ basis + noise * rng.standard_normal((num_rows, dim))
    return full.astype(np.float32)
