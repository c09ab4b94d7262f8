"""A writer racing another one (tests/test_lifecycle.py): its own local SparkSession
loads an index version and adds rows to it, publishing in lockstep with the other
writer (the test's own process).

    python race_writer.py INDEX BASE_VERSION FIRST_ID COUNT SEED BARRIER_DIR NAME

Both writers do all their Spark work first. The publish itself is synchronised by a
barrier of files in BARRIER_DIR, placed right after ``publish`` has read the newest
version number and before it tries to create the next manifest file: both writers
then see the same newest version and race for the same manifest file name, the
narrowest race there is. The library's logic is not changed, only paused there.

Prints one line ``RESULT {json}`` and exits 0 if this writer published, 3 if it got
sparkann.storage.ConcurrentUpdateError, 1 on any other error.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

BARRIER_SECONDS = 480
CONFLICT_EXIT = 3


def barrier(directory: str, name: str, parties: int = 2) -> bool:
    """Wait until ``parties`` writers have arrived; False if the time ran out first."""
    open(os.path.join(directory, f"{name}.ready"), "w").close()
    deadline = time.monotonic() + BARRIER_SECONDS
    while time.monotonic() < deadline:
        if sum(f.endswith(".ready") for f in os.listdir(directory)) >= parties:
            return True
        time.sleep(0.001)
    return False


def pause_publishing(directory: str, name: str, setattr=setattr) -> dict:
    """Make every publish of this process wait at the barrier right after it has read
    the newest version number (``setattr`` may be a pytest monkeypatch's). Returns a
    dict whose "met" tells whether the last such wait met the other writer."""
    from sparkann.storage import transaction, versions

    publishing = {"now": False, "met": None}
    real_latest, real_publish = versions.latest_version, versions.publish

    def latest_version(store, root):
        version = real_latest(store, root)
        if publishing["now"]:
            publishing["met"] = barrier(directory, name)
        return version

    def publish(*args, **kwargs):
        publishing["now"] = True
        try:
            return real_publish(*args, **kwargs)
        finally:
            publishing["now"] = False

    setattr(versions, "latest_version", latest_version)  # what publish() calls
    setattr(transaction, "publish", publish)  # what Transaction.commit calls
    return publishing


def wait_for(path: str) -> None:
    deadline = time.monotonic() + BARRIER_SECONDS
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def vectors_table(first_id: int, count: int, seed: int):
    """The rows a writer adds: ids first_id.., seeded clustered vectors."""
    import numpy as np
    import pyarrow as pa

    from sparkann import datasets

    vectors = datasets.clustered(count, 16, seed=seed)
    values = pa.array(vectors.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    return vectors, pa.table({"id": pa.array(np.arange(first_id, first_id + count)),
                              "vector": pa.ListArray.from_arrays(offsets, values)})


def main(argv: list[str]) -> int:
    index, base_version, first_id, count, seed, barrier_dir, name = argv
    base_version, first_id, count, seed = int(base_version), int(first_id), int(count), int(seed)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    started = time.monotonic()

    from pyspark.sql import SparkSession

    from sparkann import ANNIndexModel
    from sparkann.storage import ConcurrentUpdateError

    paused = pause_publishing(barrier_dir, name)
    spark = (SparkSession.builder.master("local[1]").appName(f"race-{name}")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", "1")
             .config("spark.default.parallelism", "1")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    result: dict = {"name": name, "sessionSeconds": round(time.monotonic() - started, 1)}
    code = 1
    try:  # started while the test still builds the index: wait for its base version
        wait_for(os.path.join(index, "manifests", f"v{base_version:08d}.json"))
        rows = spark.createDataFrame(vectors_table(first_id, count, seed)[1])
        model = ANNIndexModel.load(index, version=base_version)
        published = model.add(rows)
        result.update(status="published", version=published.manifest.version)
        code = 0
    except ConcurrentUpdateError as err:
        result.update(status="conflict", message=str(err))
        code = CONFLICT_EXIT
    except Exception as err:  # noqa: BLE001 - reported to the test
        result.update(status="error", message=f"{type(err).__name__}: {err}",
                      trace=traceback.format_exc()[-4000:])
    finally:
        barrier(barrier_dir, name)  # never leave the other writer waiting
        result["seconds"] = round(time.monotonic() - started, 1)
        result["metAtBarrier"] = paused["met"]
        spark.stop()
    print("RESULT " + json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
