"""Scale benchmark: build and search cost of sparkann from 1M to 10M vectors (not in CI).

Measures, on ``local[N]`` with an 8g driver, how fit and search grow with the number of
rows, what the driver holds, and what the index costs on disk and in the Python
workers; ``report`` fits a cost model to the runs and projects it (see docs/SCALE.md).

    python benchmarks/scale.py data                  # seeded chunks, queries, ground truth
    python benchmarks/scale.py run --rows 1000000    # one timed build + search (own process)
    python benchmarks/scale.py run --rows 2000000 --partitions 5000 --queries 2000
    python benchmarks/scale.py all                   # every planned run, waiting for a quiet box
    python benchmarks/scale.py dims --rows 200000    # the same rows at 96 and 768 dims
    python benchmarks/scale.py report                # results.json + RESULTS.md from the runs

Data: ``sparkann.datasets.clustered(chunk, dim=96, seed=SEED, sample_seed=c)`` for chunk
``c``, written as one Parquet file per chunk (ids offset per chunk), so the 1M set is the
first 4 chunks of the 10M set; 100k queries from the same mixture (another sample_seed).
Ground truth: faiss ``IndexFlatL2`` chunk by chunk with a running top 10, saved at every
size a run uses. Nothing ever holds the whole base in memory.

Each ``run`` is its own process (a fresh JVM and fresh Python workers, so memory peaks
belong to that run). Peak RSS is sampled every 0.5 s by process class (driver Python,
the JVM -- in local mode driver and executor share it --, the JVM's Python workers), with
the JVM's heap in use read through JMX; sparkann's stage log lines give each stage's
window, so peaks and driver CPU seconds are reported per stage.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (process classes, RSS, machine facts, recall)

log = logging.getLogger("scale")

K = 10
DIM = 96
SEED = 2024  # the mixture
QUERY_SAMPLE_SEED = 1_000_000  # chunks use sample_seed = chunk number
CHUNK_ROWS = 250_000
NUM_QUERIES = 100_000
TRUTH_QUERIES = 2_000
CORES = 2
WORK = os.environ.get("SCALE_WORK", "/tmp/sparkann-scale")
OUT = os.path.join(os.path.dirname(HERE), "notebooks", "benchmarks", "scale")
SIZES = (1_000_000, 3_000_000, 10_000_000)
MANY = ((500_000, 5000), (1_000_000, 5000), (2_000_000, 5000), (2_000_000, 1000),
        (2_000_000, 2500))
LOAD_LIMIT = 2.5


# --------------------------------------------------------------------------
# Data and ground truth
# --------------------------------------------------------------------------


def chunk_path(work: str, chunk: int) -> str:
    return os.path.join(work, "base", f"chunk-{chunk:05d}.parquet")


def truth_path(work: str, rows: int) -> str:
    return os.path.join(work, "truth", f"truth-{rows}.npz")


def vectors_table(vectors: np.ndarray, first_id: int):
    import pyarrow as pa

    n, d = vectors.shape
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
    return pa.table({"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
                     "vector": pa.ListArray.from_arrays(offsets, values)})


def data_facts(work: str) -> dict:
    path = os.path.join(work, "data.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def generate(args) -> int:
    """Chunks, queries and prefix ground truth (streamed; resumable)."""
    import faiss
    import pyarrow.parquet as pq

    from sparkann import datasets

    work, chunk = args.work, args.chunk_rows
    prefixes = sorted({int(r) for r in args.prefixes.split(",")} | {args.max_rows})
    if any(p % chunk for p in prefixes):
        raise SystemExit(f"every size must be a multiple of {chunk} rows: {prefixes}")
    for sub in ("base", "queries", "truth"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    queries = datasets.clustered(args.queries, DIM, seed=SEED, sample_seed=QUERY_SAMPLE_SEED)
    qfiles = 4
    bounds = np.linspace(0, len(queries), qfiles + 1).astype(int)
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = os.path.join(work, "queries", f"part-{part}.parquet")
        if not os.path.exists(path):
            pq.write_table(vectors_table(queries[lo:hi], int(lo)), path, row_group_size=25_000)
    truth_q = np.ascontiguousarray(queries[:TRUTH_QUERIES])
    np.save(os.path.join(work, "truth", "truth-queries.npy"), truth_q)
    del queries
    faiss.omp_set_num_threads(args.threads)
    best_d = np.full((len(truth_q), K), np.inf, np.float32)
    best_i = np.full((len(truth_q), K), -1, np.int64)
    started = time.perf_counter()
    for c in range(args.max_rows // chunk):
        x = datasets.clustered(chunk, DIM, seed=SEED, sample_seed=c)
        path = chunk_path(work, c)
        if not (os.path.exists(path) and pq.ParquetFile(path).metadata.num_rows == chunk):
            tmp = path + ".tmp"
            pq.write_table(vectors_table(x, c * chunk), tmp, row_group_size=50_000)
            os.replace(tmp, path)
        index = faiss.IndexFlatL2(DIM)
        index.add(x)
        d, i = index.search(truth_q, K)
        del x, index
        all_d = np.concatenate([best_d, d], axis=1)
        all_i = np.concatenate([best_i, i + c * chunk], axis=1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, :K]
        best_d = np.take_along_axis(all_d, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
        rows = (c + 1) * chunk
        if rows in prefixes:
            np.savez(truth_path(work, rows), ids=best_i, sq_dists=best_d)
        log.info("chunk %d (%d rows) done, %.0f s", c, rows, time.perf_counter() - started)
    facts = {"dim": DIM, "seed": SEED, "chunk_rows": chunk, "max_rows": args.max_rows,
             "queries": args.queries, "truth_queries": TRUTH_QUERIES,
             "query_sample_seed": QUERY_SAMPLE_SEED, "prefixes": prefixes,
             "generator": "sparkann.datasets.clustered(n, 96, seed=2024, sample_seed=chunk) "
                          "(defaults: 32 clusters, rank 16, spread 0.35, noise 0.05)",
             "seconds": round(time.perf_counter() - started, 1)}
    with open(os.path.join(work, "data.json"), "w") as f:
        json.dump(facts, f, indent=2)
    return 0


# --------------------------------------------------------------------------
# Measuring: memory, CPU and load time series; stage windows
# --------------------------------------------------------------------------


class Series:
    """Samples RSS and CPU by process class (driver Python, JVM, Python workers),
    the JVM heap in use and the load average, every ``interval`` seconds."""

    def __init__(self, spark=None, interval: float = 0.5):
        self.interval, self.rows, self.pid = interval, [], os.getpid()
        self._stop = threading.Event()
        self._classes: dict = {}
        self._n = 0
        self._mx = None
        if spark is not None:
            try:
                self._mx = spark._jvm.java.lang.management.ManagementFactory.getMemoryMXBean()
            except Exception:  # noqa: BLE001
                self._mx = None
        self._thread = threading.Thread(target=self._run, name="scale-sampler", daemon=True)

    def start(self) -> "Series":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as err:  # noqa: BLE001 - a process ended between calls
                log.debug("sample failed: %s", err)

    def sample(self) -> None:
        import psutil

        if self._n % 8 == 0 or not self._classes:
            self._classes = bench.process_classes(self.pid)
        self._n += 1
        rss = {"driver_python": 0, "jvm": 0, "python_workers": 0}
        cpu = {"driver_python": 0.0, "jvm": 0.0, "python_workers": 0.0}
        workers = []
        for pid, kind in self._classes.items():
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    r = proc.memory_info().rss
                    t = proc.cpu_times()
            except psutil.Error:
                continue
            rss[kind] += r
            cpu[kind] += t.user + t.system
            if kind == "python_workers":
                try:
                    parent = proc.parent()
                except psutil.Error:
                    parent = None
                if parent is not None and self._classes.get(parent.pid) == "python_workers":
                    workers.append(r)
        heap = None
        if self._mx is not None and self._n % 2 == 0:
            try:
                heap = int(self._mx.getHeapMemoryUsage().getUsed())
            except Exception:  # noqa: BLE001 - the JVM is going away
                heap = None
        self.rows.append({
            "t": time.perf_counter(), "driver_python": rss["driver_python"], "jvm": rss["jvm"],
            "python_workers": rss["python_workers"], "worker_max": max(workers, default=0),
            "workers": len(workers), "cpu_driver_python": cpu["driver_python"],
            "cpu_jvm": cpu["jvm"], "load1": os.getloadavg()[0], "heap": heap})

    def window(self, t0: float, t1: float) -> dict:
        """Peaks (MiB), driver-Python CPU seconds and mean load between t0 and t1."""
        rows = [r for r in self.rows if t0 - self.interval <= r["t"] <= t1 + self.interval]
        if not rows:
            return {}
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        heaps = [r["heap"] for r in rows if r["heap"] is not None]
        return {
            "driver_python_peak_mib": mib(max(r["driver_python"] for r in rows)),
            "jvm_rss_peak_mib": mib(max(r["jvm"] for r in rows)),
            "jvm_heap_used_peak_mib": mib(max(heaps)) if heaps else None,
            "python_workers_peak_mib": mib(max(r["python_workers"] for r in rows)),
            "python_worker_max_mib": mib(max(r["worker_max"] for r in rows)),
            "python_worker_count": max(r["workers"] for r in rows),
            "driver_python_cpu_s": round(rows[-1]["cpu_driver_python"]
                                         - rows[0]["cpu_driver_python"], 2),
            "jvm_cpu_s": round(rows[-1]["cpu_jvm"] - rows[0]["cpu_jvm"], 2),
            "load1_mean": round(statistics.fmean(r["load1"] for r in rows), 2),
            "load1_max": round(max(r["load1"] for r in rows), 2),
            "samples": len(rows),
        }


class StageWindows(logging.Handler):
    """Collects (stage, start, end) from sparkann's StageTimer log lines."""

    LINE = re.compile(r"^sparkann: (.+): (\d+\.\d\d) s$")

    def __init__(self):
        super().__init__(logging.INFO)
        self.windows: list[tuple[str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.LINE.match(record.getMessage())
        if match:
            now = time.perf_counter()
            self.windows.append((match.group(1), now - float(match.group(2)), now))


def spark_stages(spark) -> list[dict]:
    """Completed Spark stages from the driver's status store (no UI needed)."""
    sc = spark.sparkContext
    try:
        store = sc._jsc.sc().statusStore()
        gw = sc._gateway
        seq = store.stageList(None, False, False, gw.new_array(gw.jvm.double, 0), None)
        stages = [seq.apply(i) for i in range(seq.size())]
    except Exception as err:  # noqa: BLE001
        log.warning("no stage data: %s", err)
        return []
    out = []
    for s in stages:
        desc = s.description()
        out.append({"stage": s.stageId(), "tasks": s.numTasks(),
                    "description": desc.get() if desc.isDefined() else None,
                    "task_s": s.executorRunTime() / 1000, "cpu_s": s.executorCpuTime() / 1e9,
                    "shuffle_write_bytes": s.shuffleWriteBytes(),
                    "input_bytes": s.inputBytes()})
    return out


def stages_since(spark, mark: int) -> list[dict]:
    return [s for s in spark_stages(spark) if s["stage"] > mark]


def stage_mark(spark) -> int:
    return max((s["stage"] for s in spark_stages(spark)), default=-1)


def task_seconds_by_label(stages: list[dict]) -> dict:
    """Executor task seconds and task counts per job label (sparkann's stage names)."""
    out: dict = {}
    for s in stages:
        label = (s["description"] or "unlabelled").removeprefix("sparkann: ")
        entry = out.setdefault(label, {"task_s": 0.0, "cpu_s": 0.0, "tasks": 0,
                                       "shuffle_write_mib": 0.0})
        entry["task_s"] = round(entry["task_s"] + s["task_s"], 2)
        entry["cpu_s"] = round(entry["cpu_s"] + s["cpu_s"], 2)
        entry["tasks"] += s["tasks"]
        entry["shuffle_write_mib"] = round(entry["shuffle_write_mib"]
                                           + s["shuffle_write_bytes"] / 2**20, 1)
    return out


# --------------------------------------------------------------------------
# One run: build, then search
# --------------------------------------------------------------------------


def wait_quiet(limit: float = LOAD_LIMIT, every: float = 60.0, max_hours: float = 6.0) -> dict:
    """Sleep in steps of ``every`` seconds while the 1-minute load average is above
    ``limit``; returns how long it waited and the load it started at."""
    started = time.time()
    waited = 0
    while os.getloadavg()[0] > limit and time.time() - started < max_hours * 3600:
        if waited % 5 == 0:
            log.info("load %.2f > %.1f: waiting (%.0f min so far)", os.getloadavg()[0], limit,
                     (time.time() - started) / 60)
        time.sleep(every)
        waited += 1
    return {"waited_s": round(time.time() - started), "load_at_start":
            [round(x, 2) for x in os.getloadavg()]}


def make_spark(shuffle_partitions: int, work: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        "spark.master": f"local[{CORES}]",
        "spark.driver.memory": "8g",
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.python.worker.reuse": "true",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.local.dir": os.path.join(work, "spark-local"),
        "spark.sql.warehouse.dir": os.path.join(work, "warehouse"),
        "spark.sparkann.progressSeconds": "0",
    }
    builder = SparkSession.builder.appName("sparkann-scale")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, settings


def warm_up(spark, work: str) -> None:
    """Start the Python workers and warm the JVM before anything is timed."""
    import pyarrow.parquet as pq

    from sparkann import ANNIndex, datasets

    path = os.path.join(work, "warm-up")
    os.makedirs(path, exist_ok=True)
    pq.write_table(vectors_table(datasets.clustered(4000, DIM, seed=3), 0),
                   os.path.join(path, "part-0.parquet"))
    frame = spark.read.parquet(path)
    index_path = os.path.join(work, "indexes", "warm-up")
    shutil.rmtree(index_path, ignore_errors=True)
    model = ANNIndex(numPartitions=2, indexPath=index_path).fit(frame)
    for strategy in ("local", "partition"):
        m = model.copy()
        m.setSearchStrategy(strategy)
        m.transform(frame).select("id", "neighbors").toArrow()
    shutil.rmtree(index_path, ignore_errors=True)


def dir_bytes(root: str) -> dict:
    """Bytes under ``root``, in total and by top-level directory."""
    out = {"total": 0}
    for dirpath, _, files in os.walk(root):
        top = os.path.relpath(dirpath, root).split(os.sep)[0]
        top = "(root)" if top == "." else top
        size = sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        out[top] = out.get(top, 0) + size
        out["total"] += size
    return out


def found_ids(table, count: int) -> np.ndarray:
    """(count, K) neighbour ids of query ids 0..count-1 from an (id, neighbors) table."""
    out = np.full((count, K), -1, np.int64)
    qid = table.column("id").to_numpy()
    lists = table.column("neighbors").combine_chunks()
    offsets = np.asarray(lists.offsets)
    ids = lists.flatten().field("id").to_numpy()
    for row in np.flatnonzero(qid < count):
        got = ids[offsets[row]:offsets[row + 1]][:K]
        out[qid[row], :len(got)] = got
    return out


def probes_of(spark, model, queries: np.ndarray) -> dict:
    """Partitions (and rows) searched per query, from the model's router (as tasks route)."""
    from sparkann.build import with_checked_meta
    from sparkann.loader import LoadedIndex

    index = LoadedIndex.create(model.manifest, with_checked_meta(spark, model.manifest))
    s = model.searchSettings()
    prepared = index.metric.prepare(queries)
    started = time.perf_counter()
    rows, pids = index.router.route(prepared, int(s["numProbes"]), int(s["k"]),
                                    float(s["probeEpsilon"]))
    seconds = time.perf_counter() - started
    sizes = np.asarray(model.manifest.partitions.live, dtype=np.float64)
    per_query = np.bincount(rows, minlength=len(queries))
    return {"partitions_per_query": round(float(per_query.mean()), 3),
            "partitions_per_query_max": int(per_query.max()),
            "rows_per_query": round(float(sizes[pids].sum() / len(queries)), 1),
            "router_seconds": round(seconds, 3),
            "router": "meta-HNSW" if index.router.ranker.uses_graph else "brute force"}


def chosen_strategy(spark, model, requested: str) -> str:
    from sparkann.search.plan import choose_strategy, payload_reads

    manifest = model.manifest
    return choose_strategy(spark, manifest, requested, payload_reads(spark, manifest), False)


def run_one(args) -> int:
    """One size (or many-partitions) run in this process; writes runs/<name>.json."""
    from sparkann import ANNIndex
    from sparkann.partitioning import kmeans

    rows, work = args.rows, args.work
    chunk = data_facts(work).get("chunk_rows", CHUNK_ROWS)
    files = [chunk_path(work, c) for c in range(rows // chunk)]
    missing = [f for f in files if not os.path.exists(f)]
    if missing or rows % chunk:
        raise SystemExit(f"data for {rows} rows is missing ({len(missing)} chunks); run `data`")
    name = args.name or (f"many-{rows}-{args.partitions}" if args.partitions
                         else f"size-{rows}")
    clusters = args.partitions or kmeans.default_num_clusters(rows)
    shuffle = args.shuffle_partitions or max(8, 3 * clusters)
    quiet = wait_quiet(args.load_limit) if not args.no_wait else {
        "waited_s": 0, "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    logging.getLogger("sparkann").setLevel(logging.INFO)
    windows = StageWindows()
    logging.getLogger("sparkann.observe").addHandler(windows)
    spark, settings = make_spark(shuffle, work)
    result = {"name": name, "rows": rows, "dim": DIM, "numPartitions_requested": args.partitions,
              "spark_settings": settings, "machine": bench.machine_info(), "quiet": quiet,
              "started_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        warm_up(spark, work)
        index_path = os.path.join(work, "indexes", name)
        shutil.rmtree(index_path, ignore_errors=True)
        base = spark.read.parquet(*files)
        params = {"indexPath": index_path, "seed": 42}
        if args.partitions:
            params["numPartitions"] = args.partitions
        result["params"] = {k: v for k, v in params.items() if k != "indexPath"}
        series = Series(spark).start()
        mark = stage_mark(spark)
        windows.windows.clear()
        t0 = time.perf_counter()
        model = ANNIndex(**params).fit(base)
        t1 = time.perf_counter()
        build_stages = stages_since(spark, mark)
        summary = model.summary()
        stage_rows = []
        for stage, start, end in list(windows.windows):
            stage_rows.append({"stage": stage, "seconds": round(end - start, 2),
                               **series.window(start, end)})
        result["build"] = {
            "wall_s": round(t1 - t0, 2),
            "buildSeconds": summary["buildSeconds"],
            "stages": stage_rows,
            "memory": series.window(t0, t1),
            "spark_task_seconds": task_seconds_by_label(build_stages),
            "executor_task_s": round(sum(s["task_s"] for s in build_stages), 1),
            "executor_cpu_s": round(sum(s["cpu_s"] for s in build_stages), 1),
            "spark_stages": len(build_stages),
            "spark_tasks": sum(s["tasks"] for s in build_stages),
        }
        sizes = summary["partitionSizes"]
        result["index"] = {
            "numPartitions": summary["numPartitions"], "numShards": summary["numShards"],
            "partition_rows_min": int(min(sizes)), "partition_rows_max": int(max(sizes)),
            "partition_rows_mean": round(float(np.mean(sizes)), 1),
            "balance": round(summary["balance"], 3),
            "indexBytes": summary["indexBytes"],
            "bytesPerVector": round(summary["bytesPerVector"], 1),
            "memoryBytesPerWorker": summary["memoryBytesPerWorker"],
            "searchDefaults": summary["searchDefaults"],
            "calibration": summary["calibration"],
            "disk_bytes": dir_bytes(index_path),
            "two_level": bool(kmeans.two_level(summary["numPartitions"])),
            "coarse_centroids": (kmeans.coarse_count(summary["numPartitions"])
                                 if kmeans.two_level(summary["numPartitions"]) else None),
        }
        result["index"]["disk_bytes_per_vector"] = round(
            result["index"]["disk_bytes"]["total"] / rows, 1)
        series.stop()
        result["search"] = search_runs(spark, model, args, rows, work)
        result["worker_rss_after"] = bench.python_worker_rss()
        if not args.keep:
            shutil.rmtree(index_path, ignore_errors=True)
        result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    finally:
        spark.stop()
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    path = os.path.join(args.out, "runs", f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    log.info("wrote %s", path)
    return 0


def search_runs(spark, model, args, rows: int, work: str) -> dict:
    """Searches of the query set with the calibrated defaults: per strategy, one
    warm-up (cold caches) then ``repeats`` timed runs; recall on the truth queries."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    truth = np.load(truth_path(work, rows))["ids"]
    qdir = os.path.join(work, "queries")
    queries_np = np.concatenate([
        np.asarray(pq.read_table(f).column("vector").combine_chunks().values, np.float32)
        .reshape(-1, DIM) for f in sorted(glob.glob(os.path.join(qdir, "*.parquet")))])
    total = data_facts(work).get("queries", NUM_QUERIES)
    count = min(args.queries, total)
    qframe = spark.read.parquet(qdir)
    if count < total:
        qframe = qframe.where(F.col("id") < count)
    out = {"queries": count, "settings": model.searchSettings(),
           "probes": probes_of(spark, model, queries_np[:count])}
    del queries_np
    strategies = ["auto"] + [s for s in args.strategies.split(",") if s and s != "auto"]
    auto = chosen_strategy(spark, model, "auto")
    out["auto_strategy"] = auto
    for requested in strategies:
        strategy = auto if requested == "auto" else requested
        if requested != "auto" and strategy == auto:
            continue
        if strategy == "local" and model.summary()["memoryBytesPerWorker"] > args.local_max_bytes:
            out[strategy] = {"skipped": "index larger than --local-max-bytes per worker"}
            continue
        m = model.copy()
        m.setSearchStrategy(strategy)
        bench.clear_worker_caches(spark, CORES)
        series = Series(spark).start()
        mark = stage_mark(spark)
        t0 = time.perf_counter()
        table = m.transform(qframe).select("id", "neighbors").toArrow()
        cold = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            s0 = time.perf_counter()
            table = m.transform(qframe).select("id", "neighbors").toArrow()
            times.append(time.perf_counter() - s0)
        t1 = time.perf_counter()
        series.stop()
        stages = stages_since(spark, mark)
        runs = 1 + len(times)
        got = found_ids(table, TRUTH_QUERIES)
        median = statistics.median(times) if times else cold
        out[strategy] = {
            "requested": requested, "rows_out": table.num_rows,
            "cold_s": round(cold, 2), "times_s": [round(t, 2) for t in times],
            "median_s": round(median, 2), "qps": round(count / median, 1),
            "recall_at_10": round(bench.recall(got, truth, K), 4),
            "memory": series.window(t0, t1),
            "executor_task_s_per_run": round(sum(s["task_s"] for s in stages) / runs, 2),
            "executor_cpu_s_per_run": round(sum(s["cpu_s"] for s in stages) / runs, 2),
            "spark_task_seconds": task_seconds_by_label(stages),
            "core_s_per_query_per_probe": round(
                median * CORES / (count * out["probes"]["partitions_per_query"]), 9),
        }
        log.info("search %s: %.2f s median (%s), recall %.4f", strategy, median, times,
                 out[strategy]["recall_at_10"])
    return out


# --------------------------------------------------------------------------
# Dimension: the same rows at several dimensions (for projections to other d)
# --------------------------------------------------------------------------


def run_dims(args) -> int:
    """Fit and search ``--rows`` clustered vectors at each of ``--dims`` in one session;
    writes dims.json (build and search cost per dimension, bytes per vector)."""
    import faiss
    import pyarrow.parquet as pq

    from sparkann import ANNIndex, datasets

    quiet = wait_quiet(args.load_limit)
    spark, settings = make_spark(8, args.work)
    out = {"rows": args.rows, "queries": args.queries, "spark_settings": settings,
           "machine": bench.machine_info(), "quiet": quiet, "dims": []}
    try:
        warm_up(spark, args.work)
        for dim in (int(d) for d in args.dims.split(",")):
            root = os.path.join(args.work, "dims", f"d{dim}")
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(os.path.join(root, "base"))
            os.makedirs(os.path.join(root, "queries"))
            base = datasets.clustered(args.rows, dim, seed=SEED, sample_seed=0)
            queries = datasets.clustered(args.queries, dim, seed=SEED,
                                         sample_seed=QUERY_SAMPLE_SEED)
            for half, lo in enumerate((0, args.rows // 2)):
                hi = args.rows // 2 if half == 0 else args.rows
                pq.write_table(vectors_table(base[lo:hi], lo),
                               os.path.join(root, "base", f"part-{half}.parquet"))
            pq.write_table(vectors_table(queries, 0),
                           os.path.join(root, "queries", "part-0.parquet"))
            flat = faiss.IndexFlatL2(dim)
            flat.add(base)
            truth = flat.search(queries[:TRUTH_QUERIES], K)[1]
            del flat, base
            t0 = time.perf_counter()
            model = ANNIndex(indexPath=os.path.join(root, "index"), seed=42).fit(
                spark.read.parquet(os.path.join(root, "base")))
            fit_s = time.perf_counter() - t0
            summary = model.summary()
            qframe = spark.read.parquet(os.path.join(root, "queries"))
            model.transform(qframe).select("id", "neighbors").toArrow()  # cold
            times = []
            for _ in range(args.repeats):
                s0 = time.perf_counter()
                table = model.transform(qframe).select("id", "neighbors").toArrow()
                times.append(time.perf_counter() - s0)
            probes = probes_of(spark, model, queries)
            median = statistics.median(times)
            out["dims"].append({
                "dim": dim, "fit_s": round(fit_s, 2),
                "core_s_per_million_rows": round(fit_s * CORES / (args.rows / 1e6), 1),
                "hnsw_task_s": summary["buildSeconds"].get("task seconds: build partitions"),
                "numPartitions": summary["numPartitions"],
                "bytesPerVector": round(summary["bytesPerVector"], 1),
                "disk_bytes_per_vector": round(dir_bytes(os.path.join(root, "index"))["total"]
                                               / args.rows, 1),
                "memoryBytesPerWorker": summary["memoryBytesPerWorker"],
                "strategy": chosen_strategy(spark, model, "auto"),
                "settings": model.searchSettings(), "probes": probes,
                "search_median_s": round(median, 3), "times_s": [round(t, 3) for t in times],
                "qps": round(args.queries / median, 1),
                "recall_at_10": round(bench.recall(found_ids(table, TRUTH_QUERIES), truth, K), 4),
                "core_s_per_query_per_probe": round(
                    median * CORES / (args.queries * probes["partitions_per_query"]), 9)})
            log.info("dim %d: %s", dim, out["dims"][-1])
            shutil.rmtree(root, ignore_errors=True)
    finally:
        spark.stop()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "dims.json"), "w") as f:
        json.dump(out, f, indent=1, default=str)
    return 0


# --------------------------------------------------------------------------
# All runs, waiting for a quiet machine
# --------------------------------------------------------------------------


def planned(args) -> list[list[str]]:
    runs = []
    for rows in SIZES:
        extra = ["--repeats", "2" if rows >= 10_000_000 else "3",
                 "--strategies", "auto,partition"]
        runs.append((f"size-{rows}", ["--rows", str(rows), *extra]))
    for rows, parts in MANY:
        runs.append((f"many-{rows}-{parts}", ["--rows", str(rows), "--partitions", str(parts),
                                               "--queries", str(TRUTH_QUERIES), "--repeats",
                                               "1", "--strategies", "auto",
                                               "--shuffle-partitions", "200"]))
    only = set(args.only.split(",")) if args.only else None
    return [(n, a) for n, a in runs if only is None or n in only]


def run_all(args) -> int:
    for name, extra in planned(args):
        done = os.path.join(args.out, "runs", f"{name}.json")
        if os.path.exists(done) and not args.redo:
            log.info("%s: done already", name)
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--work", args.work, "--out",
               args.out, "--load-limit", str(args.load_limit), "run", *extra]
        log.info("%s: %s", name, " ".join(cmd))
        code = subprocess.call(cmd)
        if code:
            log.error("%s failed with exit code %d", name, code)
    return report(args)


# --------------------------------------------------------------------------
# Report: tables, exponents, fitted cost model, projections
# --------------------------------------------------------------------------


def load_runs(out: str) -> dict:
    runs = {}
    for path in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        with open(path) as f:
            run = json.load(f)
        runs[run["name"]] = run
    return runs


def exponent(x0, y0, x1, y1):
    if not (x0 and y0 and x1 and y1) or y0 <= 0 or y1 <= 0:
        return None
    return round(math.log(y1 / y0) / math.log(x1 / x0), 3)


def line(points):
    """Least-squares (intercept, slope) of [(x, y)]; exact through two points."""
    xs, ys = zip(*points)
    if len(set(xs)) < 2:
        return 0.0, ys[0] / xs[0]
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def search_of(run: dict, strategy: str | None = None) -> dict | None:
    s = run.get("search") or {}
    strategy = strategy or s.get("auto_strategy")
    entry = s.get(strategy)
    return entry if entry and "median_s" in entry else None


DRIVER_STAGES = ("train centroids", "train shared data", "plan calibration", "check partitions")


def cost_model(runs: dict) -> dict:
    """Fits on the size runs (1M, 3M, 10M) and the many-partitions runs."""
    sized = sorted((r for r in runs.values() if r["name"].startswith("size-")),
                   key=lambda r: r["rows"])
    model: dict = {"cores": CORES, "dim": DIM}
    if not sized:
        return model
    n = [r["rows"] for r in sized]
    build = [r["build"]["wall_s"] for r in sized]
    hnsw = [r["build"]["buildSeconds"].get("task seconds: build partitions", 0) for r in sized]
    model["build"] = {
        "rows": n, "wall_s": build,
        "core_s_per_million_rows": [round(b * CORES / (x / 1e6), 1) for x, b in zip(n, build)],
        "hnsw_task_s_per_million_rows": [round(h / (x / 1e6), 1) for x, h in zip(n, hnsw)],
        "executor_task_s_per_million_rows": [round(r["build"]["executor_task_s"]
                                                   / (r["rows"] / 1e6), 1) for r in sized],
    }
    if len(sized) >= 2:
        model["build"]["exponent_first_last"] = exponent(n[0], build[0], n[-1], build[-1])
        model["build"]["exponent_lsq"] = bench.growth_exponent(n, build)
        a, b = line(list(zip(n, build)))
        model["build"]["fit_all"] = {"fixed_s": round(a, 1),
                                     "core_s_per_million": round(b * 1e6 * CORES, 1)}
        per_stage = {}
        for stage in sized[-1]["build"]["buildSeconds"]:
            ys = [r["build"]["buildSeconds"].get(stage) for r in sized]
            if all(y is not None for y in ys):
                a_s, b_s = line(list(zip(n, ys)))
                per_stage[stage] = {"seconds": ys, "exponent": exponent(n[0], ys[0], n[-1],
                                                                         ys[-1]),
                                    "fixed_s": round(a_s, 2),
                                    "s_per_million": round(b_s * 1e6, 2)}
        model["build"]["stages"] = per_stage
    if len(sized) >= 3:  # fit on the first two, predict the last
        a, b = line(list(zip(n[:2], build[:2])))
        predicted = a + b * n[-1]
        e = exponent(n[0], build[0], n[1], build[1])
        power = build[1] * (n[-1] / n[1]) ** e
        model["build"]["check"] = {
            "fitted_on": n[:2], "predicted_rows": n[-1], "measured_s": build[-1],
            "linear_predicted_s": round(predicted, 1),
            "linear_error_pct": round(100 * (predicted - build[-1]) / build[-1], 1),
            "power_predicted_s": round(power, 1),
            "power_error_pct": round(100 * (power - build[-1]) / build[-1], 1),
        }
    # search
    search = {}
    for label, strategy in (("auto", None), ("partition", "partition"), ("local", "local")):
        pts = [(r["rows"], search_of(r, strategy), r["search"]) for r in sized]
        pts = [(x, s, full) for x, s, full in pts if s]
        if not pts:
            continue
        entry = {
            "rows": [x for x, _, _ in pts],
            "strategy": [full.get("auto_strategy") if strategy is None else strategy
                         for _, _, full in pts],
            "median_s": [s["median_s"] for _, s, _ in pts],
            "recall": [s["recall_at_10"] for _, s, _ in pts],
            "partitions_per_query": [full["probes"]["partitions_per_query"] for _, _, full in pts],
            "rows_per_query": [full["probes"]["rows_per_query"] for _, _, full in pts],
            "core_s_per_query_per_probe": [s["core_s_per_query_per_probe"] for _, s, _ in pts],
            "worker_max_mib": [s["memory"].get("python_worker_max_mib") for _, s, _ in pts],
        }
        if len(pts) >= 2:
            entry["exponent_first_last"] = exponent(pts[0][0], pts[0][1]["median_s"],
                                                    pts[-1][0], pts[-1][1]["median_s"])
            entry["exponent_lsq"] = bench.growth_exponent(entry["rows"], entry["median_s"])
        if len(pts) >= 3 and len(set(entry["strategy"])) == 1:
            # core-seconds per query per probed partition, averaged over the first two
            # sizes, times the last size's probes, spread over the cores
            per_probe = float(np.mean(entry["core_s_per_query_per_probe"][:2]))
            last = pts[-1][2]
            predicted = (per_probe * last["queries"] * last["probes"]["partitions_per_query"]
                         / CORES)
            measured = pts[-1][1]["median_s"]
            entry["check"] = {"fitted_on": entry["rows"][:2], "predicted_rows": pts[-1][0],
                              "core_s_per_query_per_probe": per_probe,
                              "measured_s": measured, "predicted_s": round(predicted, 1),
                              "error_pct": round(100 * (predicted - measured) / measured, 1)}
        search[label] = entry
    model["search"] = search
    model["bytes"] = {
        "rows": n,
        "index_bytes_per_vector": [r["index"]["bytesPerVector"] for r in sized],
        "disk_bytes_per_vector": [r["index"]["disk_bytes_per_vector"] for r in sized],
        "memoryBytesPerWorker_per_vector": [round(r["index"]["memoryBytesPerWorker"]
                                                  / r["rows"], 1) for r in sized],
    }
    model["driver"] = driver_model(runs)
    return model


def driver_model(runs: dict) -> dict:
    """Driver peaks and driver-side stage times against rows and partitions."""
    rows = []
    for r in runs.values():
        b = r.get("build")
        if not b:
            continue
        stages = {s["stage"]: s for s in b["stages"]}
        rows.append({
            "name": r["name"], "rows": r["rows"], "partitions": r["index"]["numPartitions"],
            "driver_python_peak_mib": b["memory"].get("driver_python_peak_mib"),
            "jvm_rss_peak_mib": b["memory"].get("jvm_rss_peak_mib"),
            "jvm_heap_used_peak_mib": b["memory"].get("jvm_heap_used_peak_mib"),
            "driver_python_cpu_s": b["memory"].get("driver_python_cpu_s"),
            **{f"{st} s": b["buildSeconds"].get(st) for st in DRIVER_STAGES},
            **{f"{st} driver cpu s": stages.get(st, {}).get("driver_python_cpu_s")
               for st in DRIVER_STAGES},
        })
    rows.sort(key=lambda r: (r["partitions"], r["rows"]))
    out = {"runs": rows}
    fixed_c = [r for r in rows if r["partitions"] == 5000]
    if len(fixed_c) >= 2:
        lo, hi = min(fixed_c, key=lambda r: r["rows"]), max(fixed_c, key=lambda r: r["rows"])
        out["flat_in_rows"] = {
            "rows": [lo["rows"], hi["rows"]],
            "driver_python_peak_ratio": round(hi["driver_python_peak_mib"]
                                              / lo["driver_python_peak_mib"], 3),
            "jvm_heap_peak_ratio": (round(hi["jvm_heap_used_peak_mib"]
                                          / lo["jvm_heap_used_peak_mib"], 3)
                                    if hi["jvm_heap_used_peak_mib"] and
                                    lo["jvm_heap_used_peak_mib"] else None),
            "driver_python_cpu_ratio": round((hi["driver_python_cpu_s"] or 0)
                                             / max(lo["driver_python_cpu_s"] or 1e-9, 1e-9), 3),
        }
    fixed_n = [r for r in rows if r["rows"] == 2_000_000 and r["name"].startswith("many-")]
    if len(fixed_n) >= 2:
        a, b = line([(r["partitions"], r["driver_python_peak_mib"]) for r in fixed_n])
        out["driver_python_vs_partitions"] = {"fixed_mib": round(a, 1),
                                              "mib_per_1000_partitions": round(b * 1000, 2)}
        heap = [(r["partitions"], r["jvm_heap_used_peak_mib"]) for r in fixed_n
                if r["jvm_heap_used_peak_mib"]]
        if len(heap) >= 2:
            a, b = line(heap)
            out["jvm_heap_vs_partitions"] = {"fixed_mib": round(a, 1),
                                             "mib_per_1000_partitions": round(b * 1000, 2)}
    return out


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(runs: dict, model: dict, data: dict, dims: dict | None = None) -> str:
    lines = ["# sparkann scale benchmark", "",
             f"`python benchmarks/scale.py all`; {CORES} cores (`local[{CORES}]`), driver "
             f"memory 8g. Data: {data.get('generator', 'clustered')}, {DIM} dims, "
             f"{NUM_QUERIES:,} queries from the same mixture, recall@10 on the first "
             f"{TRUTH_QUERIES:,} against faiss IndexFlatL2. ANNIndex(indexPath, seed=42) "
             "defaults: calibration on (target recall 0.95), hnswM=16, efConstruction=200. "
             "Search: the calibrated defaults, median of the timed repeats after one "
             "cold run (cold caches).", ""]
    sized = sorted((r for r in runs.values() if r["name"].startswith("size-")),
                   key=lambda r: r["rows"])
    if sized:
        lines += ["## Build and search by size", "",
                  "| rows | partitions | build s | core-s / M rows | hnsw task s | "
                  "search strategy | search s (median) | cold s | q/s | recall@10 | "
                  "numProbes / efSearch | partitions / query | index B/vec | disk B/vec | "
                  "driver Python peak MiB | JVM RSS peak MiB | JVM heap peak MiB | "
                  "worker peak MiB (build) | worker peak MiB (search) | memoryBytesPerWorker "
                  "MiB | mean load (build) |",
                  "|" + " --- |" * 21]
        for r in sized:
            b, i, s = r["build"], r["index"], r["search"]
            a = search_of(r) or {}
            d = s["settings"]
            lines.append(
                f"| {r['rows']:,} | {i['numShards']} | {fmt(b['wall_s'])} | "
                f"{fmt(b['wall_s'] * CORES / (r['rows'] / 1e6))} | "
                f"{fmt(b['buildSeconds'].get('task seconds: build partitions'))} | "
                f"{s['auto_strategy']} | {fmt(a.get('median_s'), 2)} | {fmt(a.get('cold_s'), 2)} | "
                f"{fmt(a.get('qps'), 0)} | {fmt(a.get('recall_at_10'), 4)} | "
                f"{d['numProbes']} / {d['efSearch']} | {s['probes']['partitions_per_query']} | "
                f"{fmt(i['bytesPerVector'])} | {fmt(i['disk_bytes_per_vector'])} | "
                f"{fmt(b['memory']['driver_python_peak_mib'])} | "
                f"{fmt(b['memory']['jvm_rss_peak_mib'])} | "
                f"{fmt(b['memory']['jvm_heap_used_peak_mib'])} | "
                f"{fmt(b['memory']['python_worker_max_mib'])} | "
                f"{fmt(a.get('memory', {}).get('python_worker_max_mib'))} | "
                f"{fmt(i['memoryBytesPerWorker'] / 2**20)} | {fmt(b['memory']['load1_mean'], 2)} |")
        lines += ["", "### Build stages (wall seconds, from `summary()[\"buildSeconds\"]`)", ""]
        stages = list(sized[-1]["build"]["buildSeconds"])
        lines += ["| stage | " + " | ".join(f"{r['rows']:,}" for r in sized) + " | exponent |",
                  "|" + " --- |" * (len(sized) + 2)]
        for st in stages:
            vals = [r["build"]["buildSeconds"].get(st) for r in sized]
            e = model.get("build", {}).get("stages", {}).get(st, {}).get("exponent")
            lines.append(f"| {st} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(e, 2)} |")
        lines += ["", "### Searches", "",
                  "| rows | strategy | cold s | median s | times s | q/s | recall@10 | "
                  "core-s / query / probe | executor task s / run | worker peak MiB | "
                  "workers | mean load |", "|" + " --- |" * 12]
        for r in sized:
            for strategy in ("local", "partition"):
                a = search_of(r, strategy)
                if not a:
                    continue
                auto = " (auto)" if r["search"]["auto_strategy"] == strategy else ""
                lines.append(
                    f"| {r['rows']:,} | {strategy}{auto} | "
                    f"{fmt(a['cold_s'], 2)} | {fmt(a['median_s'], 2)} | {a['times_s']} | "
                    f"{fmt(a['qps'], 0)} | {fmt(a['recall_at_10'], 4)} | "
                    f"{a['core_s_per_query_per_probe']:.2e} | "
                    f"{fmt(a['executor_task_s_per_run'])} | "
                    f"{fmt(a['memory']['python_worker_max_mib'])} | "
                    f"{a['memory']['python_worker_count']} | {fmt(a['memory']['load1_mean'], 2)} |")
        lines += ["", "### Growth exponents (time ∝ rows^e; target e ≤ 1.1)", ""]
        bm = model.get("build", {})
        lines.append(f"- build: e = {fmt(bm.get('exponent_first_last'), 3)} "
                     f"(1M→10M), least squares over all sizes {fmt(bm.get('exponent_lsq'), 3)}")
        for label, entry in model.get("search", {}).items():
            lines.append(f"- search ({label}, strategies {entry['strategy']}): e = "
                         f"{fmt(entry.get('exponent_first_last'), 3)} (first→last), least "
                         f"squares {fmt(entry.get('exponent_lsq'), 3)}")
        check = bm.get("check")
        if check:
            lines += ["", f"Build check: fitted on {check['fitted_on']}, predicted "
                      f"{check['predicted_rows']:,} rows: linear {check['linear_predicted_s']} s "
                      f"({check['linear_error_pct']:+.1f}%), power law "
                      f"{check['power_predicted_s']} s ({check['power_error_pct']:+.1f}%), "
                      f"measured {check['measured_s']} s."]
        for label, entry in model.get("search", {}).items():
            if entry.get("check"):
                c = entry["check"]
                lines.append(f"Search check ({label}): {c['core_s_per_query_per_probe']:.3g} "
                             f"core-s per query per probe (fitted) predicts "
                             f"{c['predicted_s']} s for {c['predicted_rows']:,} rows, "
                             f"measured {c['measured_s']} s "
                             f"({c['error_pct']:+.1f}%).")
        lines += ["", "### Calibration", "",
                  "| rows | numProbes | efSearch | recall (held-out) | reached | sample "
                  "| seconds |",
                  "|" + " --- |" * 7]
        for r in sized:
            c = r["index"]["calibration"]
            lines.append(f"| {r['rows']:,} | {c.get('numProbes')} | {c.get('efSearch')} | "
                         f"{c.get('recall')} | {c.get('reached')} | {c.get('sampleQueries')} | "
                         f"{c.get('seconds')} |")
    many = sorted((r for r in runs.values() if r["name"].startswith("many-")),
                  key=lambda r: (r["index"]["numPartitions"], r["rows"]))
    if many:
        lines += ["", "## Many partitions (two-level k-means, meta-HNSW routing)", "",
                  "Driver-side stages: wall seconds / driver-Python CPU seconds; peaks over "
                  "the whole fit. The JVM holds driver and executor (local mode).", "",
                  "| rows | partitions | coarse | build s | train centroids | train shared "
                  "data | plan calibration | check partitions | driver Python peak MiB | "
                  "driver Python CPU s | JVM heap peak MiB | JVM RSS peak MiB | worker peak "
                  "MiB | Spark tasks | recall@10 | partitions / query | router |",
                  "|" + " --- |" * 17]
        for r in many:
            b, i = r["build"], r["index"]
            st = {s["stage"]: s for s in b["stages"]}
            cells = []
            for name in DRIVER_STAGES:
                cells.append(f"{fmt(b['buildSeconds'].get(name))} / "
                             f"{fmt(st.get(name, {}).get('driver_python_cpu_s'))}")
            a = search_of(r) or {}
            lines.append(
                f"| {r['rows']:,} | {i['numPartitions']:,} | {i['coarse_centroids'] or '–'} | "
                f"{fmt(b['wall_s'])} | " + " | ".join(cells) + " | "
                f"{fmt(b['memory']['driver_python_peak_mib'])} | "
                f"{fmt(b['memory']['driver_python_cpu_s'])} | "
                f"{fmt(b['memory']['jvm_heap_used_peak_mib'])} | "
                f"{fmt(b['memory']['jvm_rss_peak_mib'])} | "
                f"{fmt(b['memory']['python_worker_max_mib'])} | {b['spark_tasks']:,} | "
                f"{fmt(a.get('recall_at_10'), 4)} | "
                f"{r['search']['probes']['partitions_per_query']} | "
                f"{r['search']['probes']['router']} |")
        d = model.get("driver", {})
        if d.get("flat_in_rows"):
            f = d["flat_in_rows"]
            lines += ["", f"5,000 partitions, {f['rows'][0]:,} → {f['rows'][1]:,} rows: driver "
                      f"Python peak ×{f['driver_python_peak_ratio']}, JVM heap peak "
                      f"×{f['jvm_heap_peak_ratio']}, driver Python CPU ×"
                      f"{f['driver_python_cpu_ratio']}."]
        if d.get("driver_python_vs_partitions"):
            f = d["driver_python_vs_partitions"]
            lines.append(f"2M rows: driver Python peak ≈ {f['fixed_mib']} MiB + "
                         f"{f['mib_per_1000_partitions']} MiB per 1,000 partitions.")
        if d.get("jvm_heap_vs_partitions"):
            f = d["jvm_heap_vs_partitions"]
            lines.append(f"2M rows: JVM heap peak ≈ {f['fixed_mib']} MiB + "
                         f"{f['mib_per_1000_partitions']} MiB per 1,000 partitions.")
    if dims:
        lines += ["", f"## Dimension ({dims['rows']:,} rows, {dims['queries']:,} queries, "
                  "`scale.py dims`)", "",
                  "| dim | partitions | fit s | core-s / M rows | index B/vec | disk B/vec | "
                  "strategy | partitions / query | q/s | recall@10 | core-s / query / probe |",
                  "|" + " --- |" * 11]
        for d in dims["dims"]:
            lines.append(
                f"| {d['dim']} | {d['numPartitions']} | {fmt(d['fit_s'])} | "
                f"{fmt(d['core_s_per_million_rows'])} | {fmt(d['bytesPerVector'])} | "
                f"{fmt(d['disk_bytes_per_vector'])} | {d['strategy']} | "
                f"{d['probes']['partitions_per_query']} | {fmt(d['qps'], 0)} | "
                f"{fmt(d['recall_at_10'], 4)} | {d['core_s_per_query_per_probe']:.2e} |")
    lines += ["", "## Runs", "", "| run | started | waited s | load at start | mean load "
              "(build) | max load (build) |", "|" + " --- |" * 6]
    for r in sorted(runs.values(), key=lambda r: r["started_at"]):
        lines.append(f"| {r['name']} | {r['started_at']} | {r['quiet']['waited_s']} | "
                     f"{r['quiet']['load_at_start']} | {r['build']['memory']['load1_mean']} | "
                     f"{r['build']['memory']['load1_max']} |")
    return "\n".join(lines) + "\n"


def report(args) -> int:
    runs = load_runs(args.out)
    data = data_facts(args.work)
    model = cost_model(runs)
    dims_path = os.path.join(args.out, "dims.json")
    dims = None
    if os.path.exists(dims_path):
        with open(dims_path) as f:
            dims = json.load(f)
    results = {"data": data, "model": model, "runs": runs, "dims": dims}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as f:
        f.write(markdown(runs, model, data, dims))
    log.info("wrote %s", os.path.join(args.out, "RESULTS.md"))
    return 0


# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=WORK, help="data, indexes and shuffle files")
    p.add_argument("--out", default=OUT, help="results directory")
    p.add_argument("--load-limit", type=float, default=LOAD_LIMIT,
                   help="wait while the 1-minute load average is above this")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("--max-rows", type=int, default=max(SIZES))
    d.add_argument("--prefixes", default=",".join(str(x) for x in
                                                  sorted({*SIZES, *(r for r, _ in MANY)})))
    d.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    d.add_argument("--queries", type=int, default=NUM_QUERIES)
    d.add_argument("--threads", type=int, default=CORES)
    r = sub.add_parser("run")
    r.add_argument("--rows", type=int, required=True)
    r.add_argument("--partitions", type=int, default=0, help="numPartitions (0: default)")
    r.add_argument("--queries", type=int, default=NUM_QUERIES)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--strategies", default="auto,partition",
                   help="auto plus forced strategies to time as well")
    r.add_argument("--local-max-bytes", type=int, default=6 << 30,
                   help="skip a forced local search above this memory per worker")
    r.add_argument("--shuffle-partitions", type=int, default=0, help="0: 3 x partitions")
    r.add_argument("--name", default="")
    r.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    r.add_argument("--keep", action="store_true", help="keep the index afterwards")
    a = sub.add_parser("all")
    a.add_argument("--only", default="", help="comma-separated run names")
    a.add_argument("--redo", action="store_true")
    m = sub.add_parser("dims")
    m.add_argument("--rows", type=int, default=200_000)
    m.add_argument("--dims", default="96,768")
    m.add_argument("--queries", type=int, default=20_000)
    m.add_argument("--repeats", type=int, default=3)
    sub.add_parser("report")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.command == "data":
        return generate(args)
    if args.command == "run":
        return run_one(args)
    if args.command == "all":
        return run_all(args)
    if args.command == "dims":
        return run_dims(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
