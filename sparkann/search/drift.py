"""Query drift: how the searched queries sit against the calibration sample.

Calibration stores ``hardGap``, the centroid gap (see
:func:`sparkann.partitioning.router.centroid_gaps`) below which a quarter of its
sample lies, and ``farDistance``, the distance to the nearest centroid above which a
quarter of it lies. Queries unlike that sample (far from every centroid, or between
several) are more often past one of these, and need more probes for the same recall.
Each search counts, inside its tasks and on the way to the search itself, its
queries and those past each mark: a Spark observed metric, readable after
the search's first action (``model.searchReport()``) or, on a stream, in each
progress report's ``observedMetrics`` under :data:`DRIFT_METRIC`.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf

from ..loader import IndexHandle, LoadedIndex, open_index
from ..partitioning.router import centroid_gaps
from ..vectors import checked_queries

log = logging.getLogger(__name__)

DRIFT_METRIC = "sparkann_query_drift"
HARD_COL = "__sparkann_hard_query"
# Warn when at least this share (1.2x the sample's) of the queries is as hard as its hardest
# quarter, and the excess over a quarter is this many standard errors.
WARN_SHARE = 0.30
WARN_SIGMAS = 3.0


def hard_flags(index: LoadedIndex, vectors: np.ndarray, marks: tuple[float, float]) -> np.ndarray:
    """int8 flags of prepared query vectors: 1 for a centroid gap <= the gap mark, plus
    2 for a nearest-centroid distance >= the far mark."""
    gap, far = marks
    _, dists = index.router.ranker.rank(vectors, 2)
    return ((centroid_gaps(dists) <= gap) + 2 * (dists[:, 0] >= far)).astype(np.int8)


def hard_marks(calibration: dict) -> tuple[float, float] | None:
    """The (gap, far) marks of a calibration, or None when it has none to compare with."""
    if calibration.get("hardGap") is None:
        return None
    far = calibration.get("farDistance")
    return float(calibration["hardGap"]), np.inf if far is None else float(far)


def hard_flags_fn(handle: IndexHandle, dim: int, vector_col: str, marks: tuple[float, float]):
    """The function of the UDF that flags each query (see :func:`hard_flags`)."""

    def run(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        index = open_index(handle)
        for column in batches:
            if len(column) == 0:
                yield pa.array([], pa.int8())
                continue
            try:
                vectors = index.metric.prepare(checked_queries(column, dim, vector_col),
                                               f"query column {vector_col!r}")
            except ValueError:  # a bad row: the search itself fails on it, naming its id
                yield pa.array(np.zeros(len(column), np.int8), pa.int8())
                continue
            yield pa.array(hard_flags(index, vectors, marks), pa.int8())

    return run


def counted(frame: DataFrame, flags: Column, observation: Observation | None) -> DataFrame:
    """``frame`` with the queries and their hard ``flags`` counted as they pass (by
    ``observation`` in a batch, by the name :data:`DRIFT_METRIC` on a stream)."""
    counts = [F.count(F.lit(1)).alias("queries"),
              F.sum(flags.bitwiseAND(1).cast("long")).alias("hardQueries"),
              F.sum(F.shiftright(flags, 1).cast("long")).alias("farQueries")]
    return (frame.observe(DRIFT_METRIC, *counts) if observation is None
            else frame.observe(observation, *counts))


def observed(queries: DataFrame, vector: Column, handle: IndexHandle, dim: int,
             vector_col: str, marks: tuple[float, float],
             observation: Observation | None) -> DataFrame:
    """``queries`` unchanged, with the drift counts observed as they pass, by a UDF of
    their own (the partition strategy; the local one counts inside its search)."""
    flag = arrow_udf(hard_flags_fn(handle, dim, vector_col, marks), "tinyint")  # type: ignore[call-overload]
    flagged = queries.withColumn(HARD_COL, flag(vector))
    return counted(flagged, F.col(HARD_COL).cast("int"), observation).drop(HARD_COL)


def drift_report(counts: dict, calibration: dict) -> dict:
    """The share of hard queries against the calibration sample's, and whether the
    queries are clearly harder (then search recall may fall short of the target)."""
    total = int(counts.get("queries") or 0)
    expected = float(calibration.get("hardShare", 0.25))
    shares = {name: int(counts.get(f"{name}Queries") or 0) / total if total else 0.0
              for name in ("hard", "far")}
    error = float(np.sqrt(expected * (1 - expected) / max(total, 1)))
    harder = bool(total) and any(share >= WARN_SHARE and share - expected >= WARN_SIGMAS * error
                                 for share in shares.values())
    return {"queries": total, "hardShare": round(shares["hard"], 4),
            "farShare": round(shares["far"], 4), "sampleShare": expected, "harder": harder,
            "calibrationSource": calibration.get("sampleSource")}


def warn_if_harder(report: dict) -> None:
    if report["harder"]:
        log.warning(
            "sparkann: of the %d searched queries, %.0f%% lie as near a partition border and "
            "%.0f%% as far from every centroid as the hardest %.0f%% of the calibration "
            "sample (%s): these queries are unlike the sample and recall may be below the "
            "calibrated target. Re-tune on a sample of them with "
            "model.calibrate(targetRecall, queries=...)", report["queries"],
            100 * report["hardShare"], 100 * report["farShare"], 100 * report["sampleShare"],
            report["calibrationSource"])
