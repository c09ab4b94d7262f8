"""Failures: retried and duplicated tasks, lost executors, stragglers, skew, and
durable, verified storage.

Tests that need a Spark of their own (local[2,4], local-cluster, a standalone
cluster, a driver to kill) run a driver from tests/fault_jobs in a subprocess;
the rest use the session-wide local SparkSession. Every fault test shows that its
fault happened (Spark's task records, an executor's log, a process that is gone)
before it checks what survived.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest
from conftest import neighbor_ids, vectors_frame
from fault_jobs.common import RESULT, WORK_DIR_ENV, alive, children, cmdline

import sparkann
from sparkann import ANNIndex, ANNIndexModel, exact
from sparkann.build import MetaHandle, build_fn, partition_seed, with_checked_meta
from sparkann.loader import LoadedIndex, fresh_partition
from sparkann.storage import IndexFormatError, Meta
from sparkann.storage.format import FORMAT_VERSION, READABLE_VERSIONS, sha256
from sparkann.storage.versions import load as load_version
from sparkann.testing import FAIL_FIRST_ATTEMPT_CONF, SLOW_TASK_CONF, inject
from sparkann.testing.faults import slow_spec

JOBS = Path(__file__).resolve().parent / "fault_jobs"
SPARK_DIR = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = str(SPARK_DIR / "bin" / "spark-class")
SPARK_SUBMIT = str(SPARK_DIR / "bin" / "spark-submit")
DRIVER_TIMEOUT = 900
STRATEGIES = ("local", "partition")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def driver_env(work_dir: Path | None = None, **extra) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               **extra)
    if work_dir is not None:  # where the driver's fit() puts indexes without indexPath
        env[WORK_DIR_ENV] = str(work_dir)
    return env


def results(output: str) -> list[dict]:
    return [json.loads(line[len(RESULT):]) for line in output.splitlines()
            if line.startswith(RESULT)]


def run_driver(args, *, env, timeout=DRIVER_TIMEOUT) -> dict:
    """Run a driver to completion and return its (last) RESULT document."""
    done = subprocess.run(args, cwd=JOBS, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    found = results(done.stdout)
    assert done.returncode == 0 and found, (
        f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-8000:]}")
    script = next(Path(a).name for a in args if a.endswith(".py"))
    print(f"\n{script}: {found[-1]}")
    return found[-1]


def spark_home(tmp_path: Path) -> Path:
    """A Spark home linking the pip install's, so local-cluster workers write under tmp_path."""
    home = tmp_path / "spark-home"
    home.mkdir()
    for name in ("bin", "sbin", "jars", "python", "conf"):
        if (SPARK_DIR / name).exists():
            (home / name).symlink_to(SPARK_DIR / name)
    return home


def wait_for(condition, what: str, timeout: float = 120, every: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def java_child(pid: int) -> int | None:
    """The JVM a Python driver started (its direct child running java)."""
    for child in children(pid):
        command = cmdline(child)
        if command and command[0].endswith("java"):
            return child
    return None


def neighbours(model, queries) -> np.ndarray:
    return neighbor_ids(model.transform(queries).collect(), key="qid")


@pytest.fixture(scope="module")
def frames(spark, clustered_data):
    base, queries = clustered_data
    return vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")


@pytest.fixture(scope="module")
def saved(frames, tmp_path_factory) -> Path:
    """A saved index (4 partitions, all probed); tests work on copies of it."""
    path = tmp_path_factory.mktemp("saved") / "index"
    ANNIndex(numPartitions=4, numProbes=4, seed=1, targetRecall=0).fit(frames[0]).save(str(path))
    return path


def copy_of(saved: Path, tmp_path: Path, name: str = "index") -> Path:
    return Path(shutil.copytree(saved, tmp_path / name))


def files_under(path: Path) -> list[str]:
    """Every file under ``path``, relative to it, with / separators."""
    return sorted((Path(directory) / name).relative_to(path).as_posix()
                  for directory, _, names in os.walk(path) for name in names)


# --------------------------------------------------------------------------
# 1. retry-safe tasks
# --------------------------------------------------------------------------


def partition_bytes(model) -> list[bytes]:
    """Each partition's stored bytes (ids, payload, codebook), read from its file."""
    found = []
    for relative in model.manifest.partitions.files:
        row = pq.read_table(os.path.join(model.manifest.root, relative),
                            columns=["ids", "payload", "codebook"], partitioning=None)
        found.append(b"".join([np.asarray(row.column("ids")[0].values).tobytes(),
                               row.column("payload")[0].as_py(),
                               row.column("codebook")[0].as_py()]))
    return found


def test_deterministic_builds_write_identical_bytes(frames, tmp_path):
    params = {"numPartitions": 3, "deterministic": True, "seed": 3, "targetRecall": 0}
    first = ANNIndex(indexPath=str(tmp_path / "first"), **params).fit(frames[0])
    again = ANNIndex(indexPath=str(tmp_path / "again"), **params).fit(frames[0])
    assert first.manifest.partitions.checksums == again.manifest.partitions.checksums
    assert len(set(first.manifest.partitions.checksums)) == 3
    assert first.manifest.meta_sha256 == again.manifest.meta_sha256  # the same centroids
    assert partition_bytes(first) == partition_bytes(again)  # the bytes, not only checksums
    seeds = {partition_seed(3, p) for p in range(10_000)}
    assert len(seeds) == 10_000 and partition_seed(3, 7) != partition_seed(4, 7)


def test_a_build_task_ignores_the_order_its_rows_arrive_in(frames, tmp_path):
    # A build task gets its partition's rows in shuffle-fetch order, which differs
    # between attempts; the rows of one partition are fed to the real task function
    # (sparkann.build.build_fn, as per_partition calls it) in two orders.
    meta = Meta(np.zeros((1, 32), np.float32), np.array([1], np.int64))
    data = meta.to_bytes()
    (tmp_path / "meta.bin").write_bytes(data)
    handle = MetaHandle(str(tmp_path / "meta.bin"), sha256(data), 32)
    params = {"metric": "l2", "indexType": "hnsw", "deterministic": True, "seed": 5,
              "hnswM": 16, "efConstruction": 100}
    build = build_fn(handle, params, 32, 2)
    rows = frames[0].limit(1500).toArrow()
    order = np.random.default_rng(0).permutation(len(rows))
    one, two = build(0, rows), build(0, rows.take(pa.array(order)))
    assert not np.array_equal(order, np.arange(len(rows)))
    for column in ("checksum", "ids", "payload", "payload_sha256"):
        assert one.column(column) == two.column(column), column
    assert one.column("num_rows")[0].as_py() == 1500


def test_a_worker_reads_the_meta_file_once_and_checks_it(tmp_path):
    # Every build task of a worker process reads the same meta file: it is read,
    # verified and parsed once; a file whose bytes differ from the digest is refused.
    meta = Meta(np.ones((2, 8), np.float32), np.array([3, 4], np.int64))
    data = meta.to_bytes()
    (tmp_path / "meta.bin").write_bytes(data)
    handle = MetaHandle(str(tmp_path / "meta.bin"), sha256(data), 8)
    first = handle.read()
    assert handle.read() is first and np.array_equal(first.centroids, meta.centroids)
    other = Meta(np.zeros((2, 8), np.float32), np.array([3, 4], np.int64)).to_bytes()
    (tmp_path / "changed.bin").write_bytes(other)
    with pytest.raises(IndexFormatError, match="changed during the build"):
        MetaHandle(str(tmp_path / "changed.bin"), sha256(data), 8).read()


# What may be under an index root: Spark-writer output (data, deletes, id locations,
# and pyspark.ml's metadata), and the driver-written files of the commit protocol:
# one JSON manifest per version, the latest-version hint and the meta files.
SPARK_OUTPUT = re.compile(
    r"(data|deletes|locations)/[0-9a-f]{32}/((partition_id|bucket)=\d+/)?"
    r"(\.?part-[0-9]{5}-[0-9a-f-]{36}[-.]c[0-9]{3}\.snappy\.parquet(\.crc)?|\.?_SUCCESS(\.crc)?)"
    r"|metadata/(\.?part-[0-9]{5}-[0-9a-f-]{36}-c000\.txt(\.crc)?|\.?_SUCCESS(\.crc)?)")
COMMIT_FILES = re.compile(r"manifests/v\d{8}\.json|manifests/_latest|meta/[0-9a-f]{32}\.bin")


def check_only_writer_output(path: Path, versions: int) -> dict:
    files = files_under(path)
    stray = [f for f in files if not SPARK_OUTPUT.fullmatch(f) and not COMMIT_FILES.fullmatch(f)]
    assert not stray, stray
    assert {f.split("/")[0] for f in files} == {"manifests", "meta", "data", "locations",
                                               "metadata"}
    assert [f for f in files if f.startswith("manifests/")] == [
        "manifests/_latest", *(f"manifests/v{v:08d}.json" for v in range(1, versions + 1))]
    assert (path / "manifests" / "_latest").read_text().strip() == str(versions)
    runs = {kind: {f.split("/")[1] for f in files if f.startswith(f"{kind}/")}
            for kind in ("data", "locations", "meta")}
    assert {kind: len(found) for kind, found in runs.items()} == {
        "data": 1, "locations": 1, "meta": 1}, runs  # a save at the same root writes no data
    for version in range(1, versions + 1):  # every file a version names is writer output
        manifest, _ = load_version(None, str(path), version)
        named = [f for f in manifest.partitions.files if f]
        named += [f for fs in manifest.locations.files for f in fs]
        assert named and all(SPARK_OUTPUT.fullmatch(f) and f in files for f in named), named
        assert COMMIT_FILES.fullmatch(manifest.meta_file) and manifest.meta_file in files
    return runs


def test_the_index_holds_only_spark_writer_output(saved, frames, tmp_path):
    # A save to another root (Spark rewrites the partitions there), then a save over it.
    path = copy_of(saved, tmp_path)
    ANNIndexModel.load(str(path)).setK(3).write().overwrite().save(str(path))
    check_only_writer_output(path, versions=2)
    # A fit writing its own root (its calibration stages a file under staging/ and
    # removes it), then a save over it.
    fitted = tmp_path / "fitted"
    model = ANNIndex(numPartitions=3, seed=2, indexPath=str(fitted)).fit(frames[0])
    assert model.manifest.calibration, "fit did not calibrate"
    assert not [f for f in files_under(fitted) if f.startswith("staging/")]
    model.setK(3).write().overwrite().save(str(fitted))
    check_only_writer_output(fitted, versions=2)


def test_fault_injection_settings(spark, saved, frames, tmp_path):
    inject("build")  # outside a task: does nothing, whatever the settings
    assert slow_spec("build=2.5") == ("build", None, 2.5)
    assert slow_spec(" search@3=20") == ("search", 3, 20.0)
    with pytest.raises(ValueError, match=r"expected 'stage\[@partition\]=seconds'"):
        slow_spec("build@x")
    # The settings are read inside the tasks: under local[2] a task is not retried,
    # so the first attempt's injected failure fails the job.
    model = ANNIndexModel.load(str(saved))
    spark.conf.set(FAIL_FIRST_ATTEMPT_CONF, "search")
    try:
        for strategy in STRATEGIES:
            with pytest.raises(Exception, match="injected failure in the first attempt of "
                                                "search"):
                model.copy().setSearchStrategy(strategy).transform(frames[1]).collect()
        spark.conf.set(FAIL_FIRST_ATTEMPT_CONF, "build")
        assert len(model.transform(frames[1].limit(5)).collect()) == 5  # search is spared
        failed = tmp_path / "failed-build"
        with pytest.raises(Exception, match="injected failure in the first attempt of build"):
            ANNIndex(numPartitions=2, targetRecall=0, indexPath=str(failed)).fit(
                frames[0].limit(500))
        with pytest.raises(IndexFormatError, match="no sparkann index at"):
            ANNIndexModel.load(str(failed))  # the failed build published nothing
        spark.conf.set(FAIL_FIRST_ATTEMPT_CONF, "")
        spark.conf.set(SLOW_TASK_CONF, "search@x")
        with pytest.raises(Exception, match=r"expected 'stage\[@partition\]=seconds'"):
            model.transform(frames[1]).collect()
    finally:
        spark.conf.unset(FAIL_FIRST_ATTEMPT_CONF)
        spark.conf.unset(SLOW_TASK_CONF)


# --------------------------------------------------------------------------
# 2. injected task failures (local[2,4]: four attempts per task)
# --------------------------------------------------------------------------


def check_injected(per_stage: dict, stages: int) -> None:
    """``stages`` Spark stages had injected failures, and in each every task's first
    attempt failed once and its retry succeeded."""
    assert len(per_stage) == stages, per_stage
    for stage in per_stage.values():
        assert stage["failed"] == stage["partitions"] == stage["tasks"] >= 1, per_stage
        assert stage["all_retried_ok"], per_stage


@pytest.mark.heavy
def test_injected_first_attempt_failures_are_retried(tmp_path):
    result = run_driver([sys.executable, "retry_job.py"], env=driver_env(tmp_path))
    assert result["master"] == "local[2,4]"
    run = result["hnsw"]
    # Every build task's first attempt failed (one task per non-empty partition)...
    check_injected(run["injected"]["build"], stages=1)
    (build_stage,) = run["injected"]["build"].values()
    assert build_stage["tasks"] == run["nonempty_partitions"] == 6
    assert run["injected"]["search in build"] == {}
    # ...and every search task's: one stage query-local, route and search partition-side.
    check_injected(run["strategies"]["local"]["injected"], stages=1)
    check_injected(run["strategies"]["partition"]["injected"], stages=2)
    assert run["same_checksums"] and run["same_meta"], "a retried build task wrote other bytes"
    clean_defaults, faulty_defaults = run["search_defaults"]
    assert clean_defaults == faulty_defaults  # calibration chose the same search defaults
    for strategy in STRATEGIES:
        searched = run["strategies"][strategy]
        assert searched["other_failures"] == [], searched["other_failures"]
        assert searched["same_answers"], strategy
        assert searched["exactly_k"] and searched["num_queries"] == 200
        assert searched["recall"] == searched["clean_recall"] >= 0.95


# --------------------------------------------------------------------------
# 3. lost executors (local-cluster: real executor JVMs, SIGKILLed)
# --------------------------------------------------------------------------


@pytest.mark.heavy
def test_lost_executors_during_build_and_search(tmp_path):
    home = spark_home(tmp_path)
    result = run_driver([sys.executable, "lost_executor_job.py"],
                        env=driver_env(tmp_path / "work", SPARK_HOME=str(home)))
    killed = result["killed"]
    assert set(killed) == {"build", "search-local", "search-partition"}
    assert len({k["executor"] for k in killed.values()}) == 3
    for name, kill in killed.items():
        stage = name.split("-")[0]
        assert f"in {stage} task attempt" in kill["log_line"], kill  # it was busy there
        assert not kill["still_running"], f"executor {kill['executor']} survived its SIGKILL"
        # Spark saw its running task fail with the executor's loss, and retried it.
        assert kill["lost_tasks"] >= 1, kill
        assert all(f"ExecutorLostFailure (executor {kill['executor']} exited" in e
                   for e in kill["lost_errors"]), kill
    # The partition-side search lost the route stage's shuffle output on the killed
    # executor: a stage ran a second attempt.
    assert any(attempt >= 1 for _, attempt in killed["search-partition"]["stage_attempts"])
    assert not {k["executor"] for k in killed.values()} & set(result["executors_now"])
    assert result["same_checksums"], "the rebuilt index differs from the fault-free one"
    assert result["num_vectors"] == 6000
    for strategy in STRATEGIES:
        searched = result["strategies"][strategy]
        assert searched["exactly_k"] and searched["num_queries"] == 200, strategy
        assert searched["same_answers"], strategy
        assert searched["recall"] == searched["clean_recall"] >= 0.95


# --------------------------------------------------------------------------
# 4 + 7. a standalone cluster: spark-submit, speculation with a straggler
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def standalone_cluster(tmp_path: Path, worker_hosts=("127.0.0.1", "127.0.0.2")):
    """A master and one 1-core worker per host, started from the pip install."""
    port, processes, logs = free_port(), [], tmp_path / "cluster-logs"
    logs.mkdir()
    env = driver_env(SPARK_LOG_DIR=str(logs), SPARK_WORKER_DIR=str(tmp_path / "work"))

    def start(name, *args):
        with open(logs / f"{name}.log", "w") as out:
            processes.append(subprocess.Popen([SPARK_CLASS, *args], stdout=out,
                                              stderr=subprocess.STDOUT, env=env))
        return logs / f"{name}.log"

    try:
        master_log = start("master", "org.apache.spark.deploy.master.Master", "--host",
                           "127.0.0.1", "--port", str(port), "--webui-port", "0")
        url = f"spark://127.0.0.1:{port}"
        for i, host in enumerate(worker_hosts):
            start(f"worker-{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", host,
                  "--cores", "1", "--memory", "1g", "--webui-port", "0",
                  "--work-dir", str(tmp_path / f"work-{i}"))
        wait_for(lambda: master_log.read_text().count("Registering worker") >= len(worker_hosts),
                 "the workers to register", timeout=120, every=0.2)
        yield url
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.heavy
def test_standalone_cluster_with_speculation(tmp_path):
    with standalone_cluster(tmp_path) as url:
        result = run_driver([
            SPARK_SUBMIT, "--master", url,
            "--conf", "spark.speculation=true",
            "--conf", "spark.speculation.interval=200ms",
            "--conf", "spark.speculation.quantile=0.5",
            "--conf", "spark.speculation.multiplier=2",
            "--conf", "spark.speculation.minTaskRuntime=1s",
            "--conf", "spark.executor.memory=1g",
            str(JOBS / "speculation_job.py"), str(tmp_path / "indexes")],
            env=driver_env(tmp_path / "driver-work"))
    assert result["executors"] == ["127.0.0.1", "127.0.0.2"]
    speculative = result["speculative"]
    for phase in ("build", "search-local", "search-partition"):
        stats = speculative[phase]
        # The stalled attempt lost to a speculative copy, which succeeded; Spark then
        # killed the stalled one (counted once Spark reported it): because another
        # attempt succeeded, or, the copy having been the stage's last task, because
        # the stage finished.
        assert stats["speculative_successes"] >= 1, (phase, stats)
        assert 0 in stats["killed_originals"], (phase, stats)  # the stalled task 0
        assert stats["killed_tasks"] >= 1, (phase, stats)
        assert sum(stats["kill_reasons"].values()) == stats["killed_tasks"], (phase, stats)
        assert all("another attempt succeeded" in reason or "Stage finished" in reason
                   for reason in stats["kill_reasons"]), (phase, stats)
        assert stats["seconds"] < result["stall_seconds"], (phase, stats)
    assert result["same_checksums"]
    for strategy in STRATEGIES:
        searched = result["strategies"][strategy]
        assert searched["same_answers"] and searched["exactly_k"], strategy
        assert searched["recall"] == searched["clean_recall"] >= 0.95
    layout = result["layout"]
    partitions = [str(p) for p in range(result["num_partitions"])]
    assert layout["data_runs"] == 1
    assert sorted(layout["rows"]) == sorted(partitions)
    assert set(layout["rows"].values()) == {1}, "duplicate partition rows in the index table"
    assert sorted(layout["files"]) == sorted(partitions)
    assert set(layout["files"].values()) == {1}, "a partition's rows in several files"
    assert layout["temporary"] == []


# --------------------------------------------------------------------------
# 5. skew: a cluster holding half the rows is sharded
# --------------------------------------------------------------------------


def skewed(rows: int, dim: int = 16, clusters: int = 8, seed: int = 5):
    """Well-separated blobs; the first holds half the rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, (clusters, dim))
    rest = rows // 2 // (clusters - 1)
    sizes = [rows - rest * (clusters - 1)] + [rest] * (clusters - 1)
    labels = np.repeat(np.arange(clusters), sizes)
    return (centres[labels] + rng.normal(0, 1, (rows, dim))).astype(np.float32)


def test_a_skewed_cluster_is_split_into_balanced_shards(spark):
    base = skewed(8000)
    queries = skewed(8000)[np.random.default_rng(1).choice(8000, 200)]
    queries = queries + np.random.default_rng(2).normal(0, 0.3, queries.shape).astype(np.float32)
    items, query_frame = vectors_frame(spark, base), vectors_frame(spark, queries, id_name="qid")
    truth, _ = exact.knn(base, queries, 10)
    params = {"numPartitions": 8, "numProbes": 2, "seed": 1, "targetRecall": 0}
    whole = ANNIndex(**params, maxPartitionRows=100_000).fit(items)
    sharded = ANNIndex(**params, maxPartitionRows=700).fit(items)
    whole_summary, summary = whole.summary(), sharded.summary()
    assert whole_summary["balance"] > 3  # the skew is real
    sizes = summary["partitionSizes"]
    assert summary["numShards"] > summary["numPartitions"] == 8
    assert sum(sizes) == 8000
    assert summary["balance"] == pytest.approx(max(sizes) / np.mean(sizes))
    assert summary["balance"] <= 1.5
    whole_recall = exact.recall_at_k(neighbours(whole, query_frame), truth, 10)
    sharded_recall = exact.recall_at_k(neighbours(sharded, query_frame), truth, 10)
    print(f"\nskew: balance {whole_summary['balance']:.2f} -> {summary['balance']:.2f}, "
          f"recall {whole_recall:.4f} -> {sharded_recall:.4f}")
    assert sharded_recall >= whole_recall - 0.005
    assert sharded_recall >= 0.95


# --------------------------------------------------------------------------
# 6. durable storage
# --------------------------------------------------------------------------


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def new_entries(directory: Path, old: set) -> list[Path]:
    if not directory.exists():
        return []
    return [directory / name for name in os.listdir(directory) if name not in old]


def manifest_temporaries(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "manifests").glob("*.tmp"))


@pytest.mark.heavy
def test_a_driver_killed_mid_save_leaves_the_previous_version(saved, frames, tmp_path):
    queries = frames[1].limit(50)
    target = copy_of(saved, tmp_path)
    before = neighbours(ANNIndexModel.load(str(target)), queries)
    # The same index with another k, written by a fit (a save of `saved`, itself a
    # copy, would also depend on what test_lifecycle.py's
    # test_a_saved_copy_lists_each_file_once_and_can_be_copied_again checks).
    source = tmp_path / "other"
    ANNIndex(numPartitions=4, numProbes=4, seed=1, targetRecall=0, k=5,
             indexPath=str(source)).fit(frames[0])
    old = {kind: set(os.listdir(target / kind)) for kind in ("data", "locations")}
    manifest_v2 = target / "manifests" / "v00000002.json"

    def previous_version_serves():
        model = ANNIndexModel.load(str(target))
        assert model.manifest.version == 1
        np.testing.assert_array_equal(neighbours(model, queries), before)

    log = tmp_path / "save_job.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "save_job.py", str(source), str(target), "--die-at-publish"],
            cwd=JOBS, env=driver_env(tmp_path / "driver-work"), stdout=out,
            stderr=subprocess.STDOUT)
    jvm = None

    def running(condition):
        """``condition``, failing at once if the driver ended early."""
        def check():
            assert driver.poll() is None, f"the driver exited with {driver.returncode}"
            return condition()
        return check

    try:
        # 1. The new version's data directory appears: freeze the driver mid-write.
        new_data = wait_for(running(lambda: new_entries(target / "data", old["data"])),
                            "new data", timeout=600)[0]
        jvm = wait_for(lambda: java_child(driver.pid), "the driver JVM")
        freeze(jvm)
        assert not (new_data / "_SUCCESS").exists()
        shutil.copytree(new_data, tmp_path / "partial" / "data" / new_data.name)
        previous_version_serves()
        # 2. The data is committed, the id locations are being written, the manifest
        # is not: still invisible.
        thaw(jvm)
        wait_for(running(lambda: new_entries(target / "locations", old["locations"])),
                 "the id-location write", timeout=600)
        freeze(jvm)
        assert (new_data / "_SUCCESS").exists() and not manifest_v2.exists()
        previous_version_serves()
        # 3. The driver dies (JVM and Python, SIGKILL) with the new manifest written
        # to its temporary file, right before the link that would publish it.
        thaw(jvm)
        assert driver.wait(timeout=600) == -signal.SIGKILL
    except BaseException:
        print(f"save_job.py output:\n{log.read_text()[-6000:]}")
        raise
    finally:
        if driver.poll() is None:
            if jvm is not None:
                os.kill(jvm, signal.SIGKILL)
            driver.kill()
            driver.wait(timeout=60)
    found = results(log.read_text())
    assert found[0] == {"loaded": str(source)} and len(found) == 2, found  # never finished
    dying = found[1]
    assert dying["manifest"] == str(manifest_v2)
    # SIGKILL is delivered at once, but a JVM with a large heap takes a moment to exit
    assert jvm is not None
    wait_for(lambda: not alive(jvm), "the killed driver JVM to exit", timeout=60)
    assert Path(dying["dying"]).name in manifest_temporaries(target), "no half-done publish"
    assert not manifest_v2.exists(), "the kill came after the manifest commit"
    previous_version_serves()
    with pytest.raises(IndexFormatError, match="has no committed version 2"):
        ANNIndexModel.load(str(target), version=2)
    with pytest.raises(IndexFormatError, match="holds no committed version .*interrupted"):
        ANNIndexModel.load(str(tmp_path / "partial"))
    # The index takes the next save, as version 2: the interrupted one never existed.
    ANNIndexModel.load(str(source)).write().overwrite().save(str(target))
    latest = ANNIndexModel.load(str(target))
    assert latest.manifest.version == 2 and latest.getK() == 5
    np.testing.assert_array_equal(neighbours(latest, queries),
                                  neighbours(ANNIndexModel.load(str(source)), queries))
    assert ANNIndexModel.load(str(target), version=1).getK() == 10


def test_an_interrupted_manifest_write_never_blocks_the_next_save(saved, tmp_path):
    # Manifests are published by a hard link from a complete temporary file, so an
    # interrupted write leaves temporary files (of the manifest, of the latest-version
    # hint, of a meta file) and a staged calibration manifest -- never a partial
    # version file.
    path = copy_of(saved, tmp_path)
    written = (path / "manifests" / "v00000001.json").read_bytes()
    manifests = path / "manifests"
    (manifests / f"v00000002.json.{uuid.uuid4().hex}.tmp").write_bytes(written[:len(written) // 2])
    (manifests / f"v00000002.json.{uuid.uuid4().hex}.tmp").write_bytes(b"")
    (manifests / f"_latest.{uuid.uuid4().hex}.tmp").write_bytes(b"")
    (path / "meta" / f"{uuid.uuid4().hex}.bin.{uuid.uuid4().hex}.tmp").write_bytes(b"\0" * 10)
    (path / "staging").mkdir()
    (path / "staging" / f"{uuid.uuid4().hex}.json").write_bytes(written[:100])
    strays = [f for f in files_under(path) if f.endswith(".tmp") or f.startswith("staging/")]
    assert len(strays) == 5
    model = ANNIndexModel.load(str(path))
    assert model.manifest.version == 1
    with pytest.raises(IndexFormatError, match="has no committed version 2"):
        ANNIndexModel.load(str(path), version=2)
    model.setK(4).write().overwrite().save(str(path))
    assert ANNIndexModel.load(str(path)).manifest.version == 2
    assert ANNIndexModel.load(str(path)).getK() == 4
    assert ANNIndexModel.load(str(path), version=1).getK() == 10
    assert (manifests / "_latest").read_text().strip() == "2"
    kept = ANNIndexModel.load(str(path)).vacuum(retainVersions=2)
    assert kept["keptVersions"] == [1, 2] and kept["removedVersions"] == []
    assert ANNIndexModel.load(str(path)).manifest.version == 2


def damage_payload(path: Path, partition: int, damage: str) -> None:
    """Damage a partition's payload: flip one byte (bit rot on an object store),
    truncate it, or overwrite its tail. The local file system's .crc sidecar is
    dropped: object stores have none, so the index's own checksums must catch it."""
    file = os.path.join(path, ANNIndexModel.load(str(path)).manifest.partitions.files[partition])
    for crc in glob.glob(f"{os.path.dirname(file)}/.*.crc"):
        os.remove(crc)
    table = pq.read_table(file, partitioning=None)
    row = table.column("pid").to_pylist().index(partition)
    payloads = table.column("payload").to_pylist()
    payload = bytearray(payloads[row])
    if damage == "flip":
        payload[len(payload) // 2] ^= 0xFF
    elif damage == "truncate":
        payload = payload[: len(payload) // 2]
    else:
        payload[-64:] = b"\x07" * 64
    payloads[row] = bytes(payload)
    column = table.schema.get_field_index("payload")
    table = table.set_column(column, table.schema.field(column), pa.array(payloads, pa.binary()))
    pq.write_table(table, file, row_group_size=1)


@pytest.mark.parametrize("damage,reads,strategy", [
    ("flip", "task", "local"), ("truncate", "task", "partition"),
    ("overwrite", "join", "partition")])
def test_a_damaged_payload_fails_naming_its_partition(saved, frames, tmp_path, spark, damage,
                                                      reads, strategy):
    path = copy_of(saved, tmp_path)
    damage_payload(path, 2, damage)
    model = ANNIndexModel.load(str(path)).setSearchStrategy(strategy)
    spark.conf.set("spark.sparkann.payloadReads", reads)
    try:
        with pytest.raises(Exception, match="index partition 2 is damaged: its checksum does "
                                            "not match the manifest"):
            model.transform(frames[1]).collect()
    finally:
        spark.conf.unset("spark.sparkann.payloadReads")


def test_a_newer_manifest_format_is_refused(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    doc = json.loads((path / "manifests" / "v00000001.json").read_text())
    doc.update(formatVersion=FORMAT_VERSION + 1, version=2)
    (path / "manifests" / "v00000002.json").write_text(json.dumps(doc))
    with pytest.raises(IndexFormatError, match=f"version 2 is in index format "
                                               f"{FORMAT_VERSION + 1}; this sparkann reads "
                                               f"formats {READABLE_VERSIONS[0]} to "
                                               f"{FORMAT_VERSION}; upgrade sparkann"):
        ANNIndexModel.load(str(path))
    older = ANNIndexModel.load(str(path), version=1)
    assert older.manifest.version == 1 and older.summary()["numVectors"] == 6000


PICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve",
            "marshal", "copyreg"}


def test_no_module_can_unpickle():
    root = Path(sparkann.__file__).parent
    sources = sorted(root.rglob("*.py"))
    assert {"storage/format.py", "loader.py", "index/hnsw.py", "search/partition.py"} <= {
        s.relative_to(root).as_posix() for s in sources}
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                used = {alias.name.split(".")[0] for alias in node.names} & PICKLERS
            elif isinstance(node, ast.ImportFrom):
                used = {(node.module or "").split(".")[0]} & PICKLERS
            elif isinstance(node, ast.keyword):
                used = {node.arg} & {"allow_pickle"}
            elif isinstance(node, ast.Attribute):
                used = {node.attr} & {"read_pickle", "__reduce__", "__reduce_ex__"}
            else:
                continue
            assert not used, f"{source.relative_to(root)}:{node.lineno} uses {used}"


def test_loading_an_index_unpickles_nothing(saved, monkeypatch):
    # What a search task loads -- the manifest, the meta file, every partition --
    # loaded here in this process, with unpickling refused.
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    manifest, _ = load_version(None, str(saved))
    loaded = LoadedIndex.create(manifest, with_checked_meta(None, manifest))
    parts = [fresh_partition(loaded, pid, False) for pid, file in
             enumerate(manifest.partitions.files) if file]
    assert sum(p.index.count for p in parts) == sum(len(p.ids) for p in parts)
    assert sum(p.index.count for p in parts) == manifest.num_vectors == 6000
