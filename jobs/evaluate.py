"""spark-submit entry point: recall and speed of an index (see ``sparkann evaluate --help``).

Example::

    spark-submit jobs/evaluate.py --index /indexes/items --base items.parquet \\
        --queries queries.parquet --out reports/items --k 10 \\
        --probes 1,2,4,8 --ef 16,32,64,128 --sample 1000

Computes the exact neighbours of a seeded sample of queries once, then recall@k
and queries/s for every numProbes x efSearch; writes OUT/report.json and
OUT/recall_vs_qps.png. Options: --index INDEX --base PARQUET --queries PARQUET
--out DIR [--k K] [--probes LIST] [--ef LIST] [--sample N] [--seed S]
[--target-recall R] [--conf FILE] [--remote URL] [--log-level LEVEL].
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
