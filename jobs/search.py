"""spark-submit entry point: k-NN search of query vectors (see ``sparkann search --help``).

Example::

    spark-submit --properties-file conf/spark-defaults.conf jobs/search.py \\
        --index s3://bucket/indexes/items --queries s3://bucket/queries.parquet \\
        --output s3://bucket/results.parquet --k 10 --conf conf/search.conf

Options: --index INDEX --queries PARQUET --output PARQUET [--k K] [--num-probes N]
[--probe-epsilon EPS] [--ef-search EF] [--vector-col COL] [--neighbors-col COL]
[--mode errorifexists|overwrite] [--calibrate-on-queries RECALL] [--conf FILE]
[--remote URL] [--log-level LEVEL].
Settings not given keep the values stored with the index. The printed result gives the
settings used and the queries' drift against the index's calibration sample
(``queryDrift``); ``--calibrate-on-queries`` re-tunes the index on a sample of these
queries first.
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
