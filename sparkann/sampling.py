"""Seeded samples of DataFrame rows that do not depend on how Spark partitions or
orders them: a row is in the sample when a hash of its content and the seed falls
below the sampling fraction. A recomputed, repartitioned or reordered input gives
the same sample, unlike ``DataFrame.sample``, whose draw depends on the partitioning.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

_SCALE = 1 << 30
HASH = "__sparkann_sample_hash"


def sample_hash(keys: list[Column], seed: int) -> Column:
    """A seeded hash of the row's keys in ``0 .. 2**30 - 1``."""
    return F.pmod(F.xxhash64(F.lit(int(seed)), *keys), F.lit(_SCALE))


def sampled(frame: DataFrame, fraction: float, seed: int, keys: list[Column]) -> DataFrame:
    """The rows of ``frame`` whose seeded hash falls in the first ``fraction``."""
    if fraction >= 1.0:
        return frame
    return frame.where(sample_hash(keys, seed) < F.lit(int(fraction * _SCALE)))


def collect_sample(frame: DataFrame, size: int, num_rows: int, seed: int,
                   keys: list[Column]) -> pa.Table:
    """About ``size`` rows of ``frame`` (all of it if smaller), collected to the driver
    in hash order: the same rows in the same order however the input is partitioned."""
    fraction = min(1.0, 1.25 * size / max(num_rows, 1))
    picked = sampled(frame.select("*", sample_hash(keys, seed).alias(HASH)), fraction, seed,
                     keys)
    table = picked.toArrow()
    order = pc.sort_indices(table, sort_keys=[(HASH, "ascending")])
    return table.take(order).slice(0, size).drop_columns([HASH])
