"""Failures: retried and duplicated tasks, lost executors, stragglers, skew, and
durable, verified storage.

Tests that need a Spark of their own (local[2,4], local-cluster, a standalone
cluster, a driver to kill) run a driver from tests/fault_jobs in a subprocess;
the rest use the session-wide local SparkSession.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyspark
import pytest
from conftest import neighbor_ids, vectors_frame
from fault_jobs.common import RESULT, children, cmdline

import sparkann
from sparkann import ANNIndex, ANNIndexModel, exact, hnsw, storage
from sparkann.build import partition_seed
from sparkann.storage import IndexFormatError

JOBS = Path(__file__).resolve().parent / "fault_jobs"
SPARK_DIR = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = str(SPARK_DIR / "bin" / "spark-class")
SPARK_SUBMIT = str(SPARK_DIR / "bin" / "spark-submit")
DRIVER_TIMEOUT = 900


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def driver_env(**extra) -> dict:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                **extra)


def results(output: str) -> list[dict]:
    return [json.loads(line[len(RESULT):]) for line in output.splitlines()
            if line.startswith(RESULT)]


def run_driver(args, *, env=None, timeout=DRIVER_TIMEOUT) -> dict:
    """Run a driver to completion and return its (last) RESULT document."""
    done = subprocess.run(args, cwd=JOBS, env=env or driver_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
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
    ANNIndex(numPartitions=4, numProbes=4, seed=1).fit(frames[0]).save(str(path))
    return path


def copy_of(saved: Path, tmp_path: Path, name: str = "index") -> Path:
    return Path(shutil.copytree(saved, tmp_path / name))


# --------------------------------------------------------------------------
# 1. retry-safe tasks
# --------------------------------------------------------------------------


def test_deterministic_builds_write_identical_bytes(frames):
    first = ANNIndex(numPartitions=3, deterministic=True, seed=3).fit(frames[0])
    again = ANNIndex(numPartitions=3, deterministic=True, seed=3).fit(frames[0])
    assert first.manifest.checksums == again.manifest.checksums
    assert len(set(first.manifest.checksums)) == 3
    seeds = {partition_seed(3, p) for p in range(10_000)}
    assert len(seeds) == 10_000 and partition_seed(3, 7) != partition_seed(4, 7)


def test_a_build_task_ignores_the_order_its_rows_arrive_in(frames):
    # Shuffle reads deliver a group's rows in fetch order, which differs between
    # attempts; the rows of one real partition are fed in two orders.
    from sparkann.build import BuildSettings, _build_fn

    settings = BuildSettings(vector_col="vector", id_col="id", metric="l2", num_clusters=1,
                             hnsw_m=16, ef_construction=100, sample_size=None,
                             max_partition_rows=None, seed=5, num_threads=2,
                             deterministic=True)
    rows = frames[0].limit(1500).toArrow()
    table = rows.append_column("partition_id", pa.array(np.zeros(len(rows), np.int32)))
    build = _build_fn(settings, "long", 2, np.zeros((1, 32), np.float32), b"")
    key = [pa.scalar(0, pa.int32())]
    order = np.random.default_rng(0).permutation(len(table))
    one, two = build(key, table), build(key, table.take(pa.array(order)))
    assert one.column("checksum") == two.column("checksum")
    assert one.column("ids") == two.column("ids")


def test_the_index_holds_only_spark_writer_output(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    ANNIndexModel.load(str(path)).setK(3).write().overwrite().save(str(path))
    files = [Path(p).relative_to(path) for p in glob.glob(f"{path}/**/*", recursive=True)
             if os.path.isfile(p)]
    names = {f.name.lstrip(".").removesuffix(".crc") for f in files}
    assert all(n == "_SUCCESS" or (n.startswith("part-") and n.endswith(".parquet"))
               for n in names), names
    assert {f.parts[0] for f in files} == {"manifests", "data"}
    assert {f.parts[1] for f in files if f.parts[0] == "manifests"} == {"v00000001", "v00000002"}
    assert len({f.parts[1] for f in files if f.parts[0] == "data"}) == 1  # one data run


def test_fault_injection_settings(spark):
    from sparkann.tasks import FAIL_FIRST_ATTEMPT_CONF, SLOW_TASK_CONF, injected_failures

    assert not injected_failures(spark)
    spark.conf.set(FAIL_FIRST_ATTEMPT_CONF, "build, search")
    spark.conf.set(SLOW_TASK_CONF, "build=2.5,search@3=20")
    try:
        plan = injected_failures(spark)
        assert plan.fail == {"build", "search"}
        assert plan.slow == (("build", None, 2.5), ("search", 3, 20.0))
        spark.conf.set(SLOW_TASK_CONF, "build@x")
        with pytest.raises(ValueError, match="expected 'stage\\[@partition\\]=seconds'"):
            injected_failures(spark)
    finally:
        spark.conf.unset(FAIL_FIRST_ATTEMPT_CONF)
        spark.conf.unset(SLOW_TASK_CONF)


# --------------------------------------------------------------------------
# 2. injected task failures (local[2,4]: four attempts per task)
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_injected_first_attempt_failures_are_retried():
    result = run_driver([sys.executable, "retry_job.py"])
    assert result["master"] == "local[2,4]"
    hnsw_run = result["hnsw"]
    assert hnsw_run["failed_tasks"] >= 2  # at least one build and one search attempt failed
    assert hnsw_run["same_checksums"], "a retried build task wrote different bytes"
    assert hnsw_run["same_answers"]
    assert hnsw_run["recall"] == hnsw_run["clean_recall"] >= 0.95


# --------------------------------------------------------------------------
# 3. lost executors (local-cluster: real executor JVMs, SIGKILLed)
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_lost_executors_during_build_and_search(tmp_path):
    home = spark_home(tmp_path)
    result = run_driver([sys.executable, "lost_executor_job.py"],
                        env=driver_env(SPARK_HOME=str(home)))
    killed = result["killed"]
    assert killed["build"]["executor"] != killed["search"]["executor"]
    assert killed["search"]["failed_tasks"] >= 1
    assert killed["build"]["failed_tasks"] >= 1
    assert not {k["executor"] for k in killed.values()} & set(result["executors_now"])
    assert result["same_checksums"], "the rebuilt index differs from the fault-free one"
    assert result["exactly_k"] and result["num_queries"] == 200
    assert result["same_answers"]
    assert result["recall"] == result["clean_recall"] >= 0.95


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


@pytest.mark.slow
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
            str(JOBS / "speculation_job.py"), str(tmp_path / "indexes")])
    assert result["executors"] == ["127.0.0.1", "127.0.0.2"]
    speculative = result["speculative"]
    # The stalled attempts lost to speculative copies, which Spark then killed.
    assert speculative["killed_tasks"] >= 2, speculative
    assert speculative["build"] < result["stall_seconds"]
    assert speculative["search"] < result["stall_seconds"]
    assert result["same_checksums"] and result["same_answers"] and result["exactly_k"]
    assert result["recall"] == result["clean_recall"] >= 0.95
    layout = result["layout"]
    partitions = [str(p) for p in range(result["num_partitions"])]
    assert sorted(layout["rows"]) == sorted(partitions)
    assert set(layout["rows"].values()) == {1}, "duplicate partition rows in the index table"
    assert sorted(layout["files"]) == sorted(f"partition_id={p}" for p in partitions)
    assert set(layout["files"].values()) == {1}
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
    params = {"numPartitions": 8, "numProbes": 2, "seed": 1}
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


def committed_files(version_dir: Path) -> list[str]:
    return glob.glob(f"{version_dir}/part-*.parquet")


@pytest.mark.slow
def test_a_driver_killed_mid_save_leaves_the_previous_version(saved, frames, tmp_path):
    queries = frames[1].limit(50)
    target = copy_of(saved, tmp_path)
    before = neighbours(ANNIndexModel.load(str(target)), queries)
    source = tmp_path / "other"  # the same index with another k, stored elsewhere
    ANNIndexModel.load(str(saved)).setK(5).save(str(source))
    old_data = set(os.listdir(target / "data"))
    manifest_v2 = target / "manifests" / "v00000002"

    def previous_version_serves():
        model = ANNIndexModel.load(str(target))
        assert model.manifest.version == 1
        np.testing.assert_array_equal(neighbours(model, queries), before)

    log = tmp_path / "save_job.log"
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "save_job.py", str(source), str(target)],
                                  cwd=JOBS, env=driver_env(), stdout=out,
                                  stderr=subprocess.STDOUT)
    jvm = None
    try:
        # 1. The new version's data directory appears: freeze the driver mid-write.
        new_dir = wait_for(lambda: new_entries(target / "data", old_data), "new data")[0]
        jvm = wait_for(lambda: java_child(driver.pid), "the driver JVM")
        freeze(jvm)
        assert not (new_dir / "_SUCCESS").exists()
        shutil.copytree(new_dir, tmp_path / "partial" / "data" / new_dir.name)
        previous_version_serves()
        # 2. The data is committed, the manifest is not: still invisible.
        thaw(jvm)
        wait_for(lambda: (new_dir / "_SUCCESS").exists() or manifest_v2.exists(), "data commit")
        freeze(jvm)
        assert not committed_files(manifest_v2)
        previous_version_serves()
        # 3. The manifest is being written: kill the driver (JVM and Python) here.
        thaw(jvm)
        wait_for(lambda: manifest_v2.exists(), "the manifest write")
    finally:
        if jvm is not None:
            os.kill(jvm, signal.SIGKILL)
        driver.kill()
        driver.wait(timeout=60)
    assert results(log.read_text()) == [{"loaded": str(source)}]  # it never finished
    assert not committed_files(manifest_v2), "the kill came after the manifest commit"
    previous_version_serves()
    with pytest.raises(IndexFormatError, match="has no committed version 2"):
        ANNIndexModel.load(str(target), version=2)
    with pytest.raises(IndexFormatError, match="no committed manifest .*interrupted save"):
        ANNIndexModel.load(str(tmp_path / "partial"))
    # The index takes the next save; the interrupted version number is skipped.
    ANNIndexModel.load(str(source)).write().overwrite().save(str(target))
    latest = ANNIndexModel.load(str(target))
    assert latest.manifest.version == 3 and latest.getK() == 5
    np.testing.assert_array_equal(neighbours(latest, queries),
                                  neighbours(ANNIndexModel.load(str(source)), queries))


def test_an_interrupted_manifest_write_never_blocks_the_next_save(saved, tmp_path):
    # What Spark's committer leaves when the driver dies while writing version 2.
    path = copy_of(saved, tmp_path)
    written = Path(committed_files(path / "manifests" / "v00000001")[0])
    attempt = path / "manifests" / "v00000002" / "_temporary" / "0" / "_temporary" / "attempt_0"
    attempt.mkdir(parents=True)
    (attempt / written.name).write_bytes(written.read_bytes()[: written.stat().st_size // 2])
    model = ANNIndexModel.load(str(path))
    assert model.manifest.version == 1
    model.setK(4).write().overwrite().save(str(path))
    assert ANNIndexModel.load(str(path)).manifest.version == 3
    assert ANNIndexModel.load(str(path)).getK() == 4
    assert ANNIndexModel.load(str(path), version=1).getK() == 10


def damage_payload(path: Path, partition: int) -> None:
    """Flip one byte of a partition's payload, as bit rot on an object store would
    (the local file system's .crc sidecar is dropped: object stores have none)."""
    (file,) = glob.glob(f"{path}/data/*/partition_id={partition}/*.parquet")
    for crc in glob.glob(f"{os.path.dirname(file)}/.*.crc"):
        os.remove(crc)
    table = pq.read_table(file, partitioning=None)
    payload = bytearray(table.column("payload")[0].as_py())
    payload[len(payload) // 2] ^= 0xFF
    column = table.schema.get_field_index("payload")
    table = table.set_column(column, table.schema.field(column),
                             pa.array([bytes(payload)], pa.binary()))
    pq.write_table(table, file)


@pytest.mark.parametrize("reads", ["task", "join"])
def test_a_damaged_payload_fails_naming_its_partition(saved, frames, tmp_path, spark, reads):
    path = copy_of(saved, tmp_path)
    damage_payload(path, 2)
    model = ANNIndexModel.load(str(path))
    spark.conf.set("spark.sparkann.payloadReads", reads)
    try:
        with pytest.raises(Exception, match="index partition 2 is damaged: its payload checksum"):
            model.transform(frames[1]).collect()
    finally:
        spark.conf.unset("spark.sparkann.payloadReads")


def test_a_newer_manifest_format_is_refused(saved, tmp_path):
    path = copy_of(saved, tmp_path)
    row = pq.read_table(committed_files(path / "manifests" / "v00000001")[0])
    doc = json.loads(row.column("manifest")[0].as_py())
    doc.update(formatVersion=storage.FORMAT_VERSION + 1, version=2)
    newer = row.set_column(row.schema.get_field_index("manifest"), "manifest",
                           pa.array([json.dumps(doc)]))
    newer = newer.set_column(newer.schema.get_field_index("version"), "version",
                             pa.array([2], pa.int64()))
    (path / "manifests" / "v00000002").mkdir()
    pq.write_table(newer, path / "manifests" / "v00000002" / "part-00000.parquet")
    with pytest.raises(IndexFormatError, match=f"index format {storage.FORMAT_VERSION + 1}, "
                                               "newer than the supported"):
        ANNIndexModel.load(str(path))
    assert ANNIndexModel.load(str(path), version=1).manifest.version == 1


PICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve",
            "marshal", "copyreg"}


def test_no_module_can_unpickle():
    root = Path(sparkann.__file__).parent
    for source in root.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                used = {alias.name.split(".")[0] for alias in node.names} & PICKLERS
            elif isinstance(node, ast.ImportFrom):
                used = {(node.module or "").split(".")[0]} & PICKLERS
            elif isinstance(node, ast.keyword):
                used = {node.arg} & {"allow_pickle"}
            elif isinstance(node, ast.Attribute):
                used = {node.attr} & {"read_pickle", "__reduce__"}
            else:
                continue
            assert not used, f"{source.name}:{node.lineno} uses {used}"


def test_loading_an_index_unpickles_nothing(saved, monkeypatch):
    path = saved
    manifest_row = pq.read_table(committed_files(path / "manifests" / "v00000001")[0])
    payloads = [pq.read_table(f, partitioning=None).column("payload")[0].as_buffer()
                for f in glob.glob(f"{path}/data/*/partition_id=*/*.parquet")]

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    manifest = storage.Manifest.from_row(
        str(path), manifest_row.column("manifest")[0].as_py(),
        manifest_row.column("centroids")[0].as_py(), manifest_row.column("codebook")[0].as_py())
    graphs = [hnsw.from_bytes(memoryview(p)) for p in payloads]
    assert sum(g.get_current_count() for g in graphs) == manifest.num_vectors == 6000
