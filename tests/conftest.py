"""One local SparkSession for the whole run, and shared data helpers.

The shared-data lookup (``shared_data``) and the benchmark helpers (``bench``) live in
the repository's ``benchmarks`` folder, which is not installed: it is put on
``sys.path`` here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyspark
import pytest

from sparkann import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import shared_data  # noqa: E402

# Test files that take longest (each starts a JVM, or fits many indexes): collected
# first, so that pytest-xdist starts them first and no long file is left to run alone
# at the end.
LONGEST_FIRST = ("test_connect", "test_cli", "test_lifecycle", "test_filtered_search",
                 "test_notebook", "test_transaction", "test_persistence", "test_search_shapes",
                 "test_calibration", "test_query_drift", "test_items", "test_sql_search",
                 "test_index", "test_errors",
                 "test_real_data", "test_pq_index")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a file is kept


@pytest.fixture(scope="module")
def one_faiss_thread():
    """faiss trains with every core by default; the machine's two are shared."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    work_dir = tmp_path_factory.mktemp("indexes")  # where fit() puts indexes without indexPath
    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.sparkann.workDir", str(work_dir))
        .appName("sparkann-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.driver.memory", "6g")  # whole suite in one JVM: room for big payloads
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


class IndexPool:
    """Indexes built once per run; each test gets a copy of its own, so a test that
    adds, deletes, compacts or vacuums changes only its copy."""

    def __init__(self, root):
        self.root, self.built = str(root), {}

    def copy(self, name: str, build, target):
        """A copy at ``target`` of the index ``name``, which ``build(path)`` writes the
        first time it is asked for; returns the copy, loaded."""
        from sparkann import ANNIndexModel

        if name not in self.built:
            path = os.path.join(self.root, name)
            build(path)
            self.built[name] = path
        shutil.copytree(self.built[name], str(target))
        return ANNIndexModel.load(str(target))


@pytest.fixture(scope="session")
def index_pool(tmp_path_factory):
    return IndexPool(tmp_path_factory.mktemp("index-pool"))


def vectors_frame(spark, vectors: np.ndarray, ids=None, id_name="id", vector_type=pa.float32()):
    """A DataFrame (id, vector) built through Arrow, not row by row."""
    ids = np.arange(len(vectors)) if ids is None else ids
    values = pa.array(np.asarray(vectors).reshape(-1), vector_type)
    offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1]), pa.int32())
    table = pa.table({id_name: pa.array(ids), "vector": pa.ListArray.from_arrays(offsets, values)})
    return spark.createDataFrame(table)


def run_job(capsys, monkeypatch, job: str, *args) -> tuple[int, str, str]:
    """``jobs/<job>`` run as a script in this process, on the test session's Spark (as
    spark-submit runs it, minus the JVM): (exit code, stdout, stderr)."""
    import runpy

    script = os.path.join(REPO, "jobs", job)
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


SUBPROCESS_TIMEOUT = 900
SPARK_SUBMIT = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
TEST_CONF = "spark.ui.enabled=false\nspark.sql.shuffle.partitions 4\n"


def subprocess_env() -> dict:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


def run_process(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=cwd, env=subprocess_env(), capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT)


def spark_submit(job: str, *args, cwd) -> subprocess.CompletedProcess:
    """``jobs/<job>`` through spark-submit itself: its own driver JVM and Python."""
    return run_process([SPARK_SUBMIT, "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                        os.path.join(REPO, "jobs", job), *args], cwd)


def last_json(text: str):
    """The last JSON document that starts a line of ``text`` (logs may precede it).

    spark-submit merges the Python driver's stderr into its stdout, so the
    printed result follows log lines there.
    """
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for start in reversed(starts):
        try:
            return decoder.raw_decode(text, start)[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON document in output:\n{text[-3000:]}")


def describe(result: subprocess.CompletedProcess) -> str:
    return (f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}"
            f"\nstderr:\n{result.stderr[-5000:]}")


def loaded_index(model):
    """A model's index as tasks load it (centroids, router), loaded on the driver."""
    from sparkann.build import with_checked_meta
    from sparkann.loader import LoadedIndex

    spark = __import__("pyspark").sql.SparkSession.getActiveSession()
    return LoadedIndex.create(model.manifest, with_checked_meta(spark, model.manifest))


class ProgressSeen(logging.Handler):
    """Creates the file ``marker`` once sparkann logs a progress line."""

    def __init__(self, marker):
        super().__init__(logging.INFO)
        self.marker = str(marker)

    def emit(self, record):
        if "tasks done" in record.getMessage():
            open(self.marker, "a").close()


@contextmanager
def job_group(spark, name: str):
    """Runs the block's Spark jobs in job group `name`; yields the group's job ids so far."""
    context = spark.sparkContext
    context.setJobGroup(name, name)
    try:
        yield lambda: list(context.statusTracker().getJobIdsForGroup(name))
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]


def held_until(marker, timeout: float = 300.0):
    """A mapInArrow function whose tasks wait until the file ``marker`` exists (or
    ``timeout`` passes): a stage that lasts until its progress has been reported."""
    marker = str(marker)

    def hold(batches):
        deadline = time.monotonic() + timeout
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield from batches

    return hold


def neighbor_ids(rows, key="id", column="neighbors"):
    """Neighbour ids ordered by the query key column."""
    rows = sorted(rows, key=lambda r: r[key])
    return np.array([[n.id for n in r[column]] for r in rows])


@pytest.fixture(scope="session")
def clustered_data():
    base = datasets.clustered(6000, 32, seed=7)
    queries = datasets.clustered(200, 32, seed=7, sample_seed=99)
    return base, queries


def shared_dataset(name):
    """A shared real dataset; the test is skipped, saying where it looked, if it is absent
    (the pytest configuration prints skip reasons)."""
    root = shared_data.default_data_root()
    if root is None:
        pytest.skip(f"shared dataset {name!r}: no data folder ($SPARKANN_DATA is unset and "
                    f"{os.path.join(os.path.dirname(REPO), 'shared', 'data')} does not exist)")
    if not os.path.isdir(os.path.join(root, name)):
        pytest.skip(f"shared dataset {name!r} is not in {root}")
    return shared_data.load_dataset(name, root)


CONNECT_START_SECONDS = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and its children."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def _start_connect_server(workdir) -> tuple[subprocess.Popen, int]:
    import pyspark

    spark_home = os.path.dirname(pyspark.__file__)
    script = os.path.join(spark_home, "sbin", "start-connect-server.sh")
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE")}
    env.update(SPARK_HOME=spark_home, SPARK_LOG_DIR=str(workdir), SPARK_PID_DIR=str(workdir),
               SPARK_IDENT_STRING=f"sparkann-test-{port}", PYSPARK_PYTHON=sys.executable)
    command = [
        "bash", script, "--wait", "--master", "local[2]", "--driver-memory", "2g",
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.sql.shuffle.partitions=4",
        "--conf", "spark.default.parallelism=2",
    ]
    log = open(os.path.join(workdir, f"server-{port}.log"), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return process, port


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """A local Spark Connect server (pyspark's sbin/start-connect-server.sh) on a free
    port of 127.0.0.1 for the whole run; yields its ``sc://`` URL, stops it afterwards."""
    workdir = tmp_path_factory.mktemp("spark-connect")
    for attempt in range(3):  # another process may take the free port first
        process, port = _start_connect_server(workdir)
        deadline = time.monotonic() + CONNECT_START_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            if _listening(port):
                break
            time.sleep(1)
        if process.poll() is None and _listening(port):
            break
        _stop_group(process)
    else:
        logs = sorted(workdir.glob("server-*.log"))
        tail = logs[-1].read_text()[-4000:] if logs else ""
        pytest.fail(f"the Spark Connect server did not start:\n{tail}")
    try:
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop_group(process)
