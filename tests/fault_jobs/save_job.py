"""Save the index at SOURCE over the existing index at TARGET; the test freezes this
driver's JVM while the new version's data is written, and the driver is killed
(SIGKILL, JVM first) when it is about to make the new manifest visible.

Usage: python save_job.py SOURCE TARGET [--die-at-publish]

A manifest is published by writing a temporary file and hard-linking it to its
version's name; with ``--die-at-publish`` the driver kills its JVM and itself
right before that link, after the temporary file is complete: the latest point
at which a dying driver can leave a version uncommitted.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from common import driver_jvm_pid, emit, session

from sparkann import ANNIndexModel

MANIFEST = re.compile(r"manifests/v\d{8}\.json$")


def die_at_publish(spark) -> None:
    """SIGKILL the driver (its JVM, then this process) instead of linking a manifest."""
    link, jvm = os.link, driver_jvm_pid(spark)

    def dying_link(source, target, *args, **kwargs):
        if MANIFEST.search(str(target).replace(os.sep, "/")):
            emit(dying=str(source), manifest=str(target))
            os.kill(jvm, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        return link(source, target, *args, **kwargs)

    os.link = dying_link


def main() -> None:
    source, target = sys.argv[1:3]
    spark = session("local[1]")
    if "--die-at-publish" in sys.argv[3:]:
        die_at_publish(spark)
    model = ANNIndexModel.load(source)
    emit(loaded=source)
    model.write().overwrite().save(target)
    emit(saved=target, version=ANNIndexModel.load(target).manifest.version)
    spark.stop()


if __name__ == "__main__":
    main()
