"""spark-submit entry point: build an index from Parquet (see ``sparkann build --help``).

Example::

    spark-submit --properties-file conf/spark-defaults.conf jobs/build_index.py \\
        --input s3://bucket/items.parquet --output s3://bucket/indexes/items \\
        --metric cosine --num-partitions 256 --conf conf/build.conf

Options: --input PARQUET --output INDEX [--overwrite] [--vector-col COL] [--id-col COL]
[--metric l2|ip|cosine] [--num-partitions N] [--hnsw-m M] [--ef-construction EF]
[--max-partition-rows N] [--seed S] [--conf FILE] [--log-level LEVEL].
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
