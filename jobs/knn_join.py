"""spark-submit entry point: the k-nearest-neighbour graph of a collection.

Example::

    spark-submit jobs/knn_join.py --input s3://bucket/items.parquet \\
        --output s3://bucket/items_knn.parquet --k 10

Writes Parquet edges (id, neighbor_id, distance, rank); see ``sparkann knn-join --help``.
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["knn-join", *sys.argv[1:]]))
