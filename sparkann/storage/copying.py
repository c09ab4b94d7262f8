"""A version of an index stored again under another root, as a new version there."""

from __future__ import annotations

from pyspark.sql import functions as F

from . import tables
from .format import MAX_META_BYTES, Manifest
from .fs import join, store_for
from .transaction import Transaction


def copy_index(spark, manifest: Manifest, root: str) -> tuple[Manifest, str]:
    """Publish ``manifest``'s version under ``root`` (after its newest version, if it
    holds an index): the meta file copied; partitions, delete files and id locations
    rewritten there by Spark. Returns the new version and its manifest's SHA-256."""
    source = manifest.root
    with Transaction(spark, root, start=manifest) as txn:
        txn.write_meta(store_for(spark, source).read(join(source, manifest.meta_file),
                                                     MAX_META_BYTES))
        files = {f for f in manifest.partitions.files if f}
        if files:
            table = tables.named_rows(spark, source, manifest.partitions.files).select(
                F.col("pid").alias("partition_id"),
                *[c for c in tables.stored_columns(manifest.item_types) if c != "partition_id"])
            txn.write_partitions(table.repartition(len(files), "partition_id"))
        deleted = [join(source, d.file) for ds in manifest.partitions.deletes for d in ds]
        if deleted:  # one delete file per partition, however many the source has
            labels = spark.read.parquet(*deleted).groupBy(F.col("pid")).agg(
                F.sort_array(F.flatten(F.collect_list("labels"))).alias("labels"))
            txn.write_deletes(labels.select(F.col("pid").alias("partition_id"), "labels"),
                              replace_all=True)
        if manifest.locations is not None:
            txn.write_locations("replace", manifest.locations.buckets)
        return txn.commit("copy")
