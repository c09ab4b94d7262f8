"""Distance metrics: one object per metric holds everything that depends on it.

Every distance sparkann returns follows one convention, smaller is better:
Euclidean for ``l2``, the negative inner product for ``ip`` and
``1 - cosine similarity`` for ``cosine``. A metric object prepares vectors
(cosine vectors are normalised once, at the edge), names the spaces that
hnswlib and faiss use for it, converts their raw scores to the convention,
and ranks coarse centroids. numpy and faiss; no Spark.

Adding a metric is one subclass of :class:`Metric` plus an entry in
:data:`METRICS`.
"""

from __future__ import annotations

import faiss
import numpy as np


class Metric:
    """The behaviour of one distance metric."""

    name = ""
    hnsw_space = ""  # hnswlib space the prepared vectors are searched in
    faiss_inner_product = False  # faiss METRIC_INNER_PRODUCT (else METRIC_L2)
    # How coarse centroids are ranked, by the build and by the router alike:
    # "l2" (nearest centroid) or "ip" (largest inner product, as IVF does for MIPS).
    centroid_space = "l2"

    def prepare(self, vectors: np.ndarray, what: str = "vector") -> np.ndarray:
        """Vectors as searched (float32, C order); cosine normalises them."""
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def from_hnsw(self, raw: np.ndarray) -> np.ndarray:
        """hnswlib's raw scores as distances."""
        raise NotImplementedError

    def from_faiss(self, raw: np.ndarray) -> np.ndarray:
        """faiss's raw scores (squared L2, or inner product) as distances."""
        raise NotImplementedError

    def pairwise(self, queries: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Distances (nq, n) between prepared vectors."""
        raise NotImplementedError

    def among(self, queries: np.ndarray, base: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Distances (nq, j) between each query and its own candidate rows of ``base``
        (labels (nq, j); a negative label gets ``inf``), with faiss's by-index kernels."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        base = np.ascontiguousarray(base, dtype=np.float32)
        missing = candidates < 0
        labels = np.ascontiguousarray(np.where(missing, 0, candidates), dtype=np.int64)
        # the kernels read base rows unchecked: a bad label must not reach them
        if labels.size and labels.max() >= len(base):
            raise ValueError(f"candidate label {int(labels.max())} is outside the "
                             f"{len(base)} rows searched")
        if queries.shape[1] != base.shape[1]:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the rows "
                             f"{base.shape[1]}")
        raw = np.empty(labels.shape, dtype=np.float32)
        if raw.size:
            kernel = getattr(faiss, "fvec_inner_products_by_idx" if self.faiss_inner_product
                             else "fvec_L2sqr_by_idx")
            kernel(faiss.swig_ptr(raw), faiss.swig_ptr(queries), faiss.swig_ptr(base),
                   faiss.swig_ptr(labels), queries.shape[1], len(queries), labels.shape[1])
        dists = self.from_faiss(raw)
        dists[missing] = np.inf
        return dists

    def __repr__(self) -> str:
        return f"Metric({self.name!r})"


class L2(Metric):
    name = "l2"
    hnsw_space = "l2"

    def from_hnsw(self, raw):
        return np.sqrt(np.maximum(np.asarray(raw, np.float32), 0.0))

    from_faiss = from_hnsw

    def pairwise(self, queries, base):
        queries = np.asarray(queries, np.float32)
        base = np.asarray(base, np.float32)
        sq = ((queries**2).sum(1)[:, None] + (base**2).sum(1)[None, :]
              - 2.0 * (queries @ base.T))
        return np.sqrt(np.maximum(sq, 0.0))


class InnerProduct(Metric):
    name = "ip"
    hnsw_space = "ip"
    faiss_inner_product = True
    centroid_space = "ip"

    def from_hnsw(self, raw):
        return np.asarray(raw, np.float32) - 1.0  # hnswlib gives 1 - <q, x>

    def from_faiss(self, raw):
        return -np.asarray(raw, np.float32)

    def pairwise(self, queries, base):
        return -(np.asarray(queries, np.float32) @ np.asarray(base, np.float32).T)


class Cosine(Metric):
    """Cosine on unit vectors: an inner-product search, centroids ranked by L2
    (the k-means objective the centroids were trained with)."""

    name = "cosine"
    hnsw_space = "ip"
    faiss_inner_product = True

    def prepare(self, vectors, what="vector"):
        wide = np.asarray(vectors, dtype=np.float64)  # float32 squares overflow at 1e19
        scale = np.abs(wide).max(axis=1, keepdims=True) if wide.size else wide[:, :1]
        if (scale == 0).any():
            raise ValueError(f"{what} holds an all-zero vector, which has no cosine direction")
        wide = wide / scale
        return np.ascontiguousarray(wide / np.linalg.norm(wide, axis=1, keepdims=True),
                                    dtype=np.float32)

    def from_hnsw(self, raw):
        return np.asarray(raw, np.float32)  # 1 - <q, x> on unit vectors

    def from_faiss(self, raw):
        return 1.0 - np.asarray(raw, np.float32)

    def pairwise(self, queries, base):
        return 1.0 - (np.asarray(queries, np.float32) @ np.asarray(base, np.float32).T)


METRICS: dict[str, Metric] = {m.name: m for m in (L2(), InnerProduct(), Cosine())}


def get_metric(name: str) -> Metric:
    """The metric called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"metric={name!r} is not supported; choose one of "
                         f"{sorted(METRICS)}") from None
