"""spark-submit entry point: delete an index's old versions (see ``sparkann vacuum --help``).

Example::

    spark-submit jobs/vacuum.py --index s3://bucket/indexes/items --retain-versions 2

Prints the JSON report of ``ANNIndexModel.vacuum``. Options: --index INDEX
[--retain-versions N] [--retention-hours H] [--conf FILE] [--remote URL] [--log-level LEVEL].
"""

import sys

from sparkann.cli import main

if __name__ == "__main__":
    sys.exit(main(["vacuum", *sys.argv[1:]]))
