"""Save the index at SOURCE over the existing index at TARGET; the test kills this
driver (and its JVM) while the new version's data is being written.

Usage: python save_job.py SOURCE TARGET
"""

from __future__ import annotations

import sys

from common import emit, session

from sparkann import ANNIndexModel


def main() -> None:
    source, target = sys.argv[1:3]
    spark = session("local[1]")
    model = ANNIndexModel.load(source)
    emit(loaded=source)
    model.write().overwrite().save(target)
    emit(saved=target, version=ANNIndexModel.load(target).manifest.version)
    spark.stop()


if __name__ == "__main__":
    main()
