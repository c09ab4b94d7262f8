"""spark-submit entry point: build an index from Parquet (see ``sparkann build --help``).

Example::

    spark-submit --properties-file conf/spark-defaults.conf jobs/build_index.py \\
        --input s3://bucket/items.parquet --output s3://bucket/indexes/items \\
        --metric cosine --num-partitions 256 --conf conf/build.conf

Options: --input PARQUET --output INDEX [--overwrite] [--vector-col COL] [--id-col COL]
[--metric l2|ip|cosine] [--index-type hnsw|pq] [--num-partitions N] [--hnsw-m M]
[--ef-construction EF] [--pq-subvectors M] [--pq-bits 4|8] [--pq-codebook partition|global]
[--rerank-k N] [--sample-size N] [--max-partition-rows N] [--seed S] [--num-threads N]
[--deterministic] [--allow-duplicate-ids] [--target-recall R] [--conf FILE] [--remote URL]
[--log-level LEVEL]. Settings not given keep ANNIndex's defaults.
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
