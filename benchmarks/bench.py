"""Benchmark helpers: machine facts, memory sampling, ground truth, reports.

Spark-free (the Spark side of the benchmark is ``benchmarks/benchmark.py``). Imports
of optional packages (``psutil``, ``matplotlib``, ``faiss``) happen inside the
functions that need them, so this module imports with the core dependencies.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sparkann.exact import knn

# Target ratios of the issue: (key, threshold, aim, direction). "min": the ratio
# must be at least the threshold; "max": at most.
TARGETS = (
    ("throughput_vs_hnswlib", 1.0, 1.0, "min"),  # the local strategy
    ("partition_throughput_vs_hnswlib", 0.5, 1.0, "min"),
    ("build_time_vs_hnswlib", 1.5, 1.0, "max"),
    ("throughput_vs_mllib_lsh", 100.0, None, "min"),
    ("throughput_vs_exact_spark", 20.0, None, "min"),
    ("throughput_vs_spark_knn_join", 20.0, None, "min"),
)
TARGET_RECALL = 0.95


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------


def machine_info() -> dict:
    """Cores, RAM, CPU model (from /proc/cpuinfo) and package versions."""
    info = {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": _java_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for name in ("pyspark", "hnswlib", "numpy", "pyarrow", "faiss", "sklearn", "psutil"):
        info[name] = _version(name)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _java_version() -> str:
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r'version "([^"]+)"', out.stderr + out.stdout)
    return match.group(1) if match else "unknown"


_DISTRIBUTIONS = {"faiss": "faiss-cpu", "sklearn": "scikit-learn"}


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(_DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        pass
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - an optional package may fail to import in many ways
        return None
    return str(getattr(mod, "__version__", "unknown"))


# --------------------------------------------------------------------------
# Memory: sample /proc in a background thread
# --------------------------------------------------------------------------


@dataclass
class MemoryPeaks:
    """Peak resident set sizes (bytes) seen during one phase."""

    driver_python: int = 0
    jvm: int = 0
    python_workers: int = 0
    total: int = 0
    driver_python_start: int = 0
    samples: int = 0
    python_worker_max: int = 0  # the largest single Python worker (the daemon excluded)
    python_worker_count: int = 0  # most Python workers seen at once (the daemon excluded)

    def as_dict(self) -> dict:
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        return {
            "driver_python_peak_mib": mib(self.driver_python),
            "driver_python_growth_mib": mib(max(0, self.driver_python - self.driver_python_start)),
            "jvm_peak_mib": mib(self.jvm),
            "python_workers_peak_mib": mib(self.python_workers),
            "total_peak_mib": mib(self.total),
            "python_worker_max_mib": mib(self.python_worker_max),
            "python_worker_count": self.python_worker_count,
            "samples": self.samples,
        }


def process_classes(root_pid: int) -> dict[int, str]:
    """``{pid: "driver_python" | "jvm" | "python_workers"}`` of the driver's process tree."""
    import psutil

    classes = {root_pid: "driver_python"}
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return classes
    jvms = set()
    for proc in children:
        try:
            if "java" in proc.name():
                jvms.add(proc.pid)
                classes[proc.pid] = "jvm"
        except psutil.Error:
            continue
    for proc in children:
        try:
            if proc.pid not in jvms and any(p.pid in jvms for p in proc.parents()):
                classes[proc.pid] = "python_workers"
        except psutil.Error:
            continue
    return classes


def rss_by_class(classes: dict[int, str], per_worker: list | None = None) -> dict[str, int]:
    """Summed RSS (bytes) per class of :func:`process_classes`; ``per_worker`` (a list)
    receives the RSS of each Python worker forked by the daemon (the daemon excluded)."""
    import psutil

    out = {"driver_python": 0, "jvm": 0, "python_workers": 0}
    for pid, kind in classes.items():
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss
        except psutil.Error:
            continue
        out[kind] += rss
        if per_worker is not None and kind == "python_workers":
            try:
                parent = proc.parent()
            except psutil.Error:
                parent = None
            if parent is not None and classes.get(parent.pid) == "python_workers":
                per_worker.append(rss)
    return out


def python_worker_rss() -> list[dict]:
    """RSS of each Python process the JVM runs now (the pyspark daemon and its forked
    workers), largest first: what the executor's Python side holds at this moment."""
    import psutil

    classes = process_classes(os.getpid())
    out = []
    for pid, kind in classes.items():
        if kind != "python_workers":
            continue
        try:
            proc = psutil.Process(pid)
            parent = proc.parent()
            role = ("worker" if parent is not None and classes.get(parent.pid) ==
                    "python_workers" else "daemon")
            out.append({"pid": pid, "role": role,
                        "rss_mib": round(proc.memory_info().rss / 2**20, 1)})
        except psutil.Error:
            continue
    return sorted(out, key=lambda p: -p["rss_mib"])


def classify_processes(root_pid: int) -> dict[str, int]:
    """RSS (bytes) of the driver Python, its JVM(s) and the JVM's Python workers.

    In ``local[N]`` mode the executor runs inside the driver JVM, so ``jvm``
    covers driver and executor; ``python_workers`` sums the Python processes the
    JVM forks (the pyspark daemon and its workers). RSS of forked workers counts
    pages shared with the daemon more than once: an upper bound.
    """
    return rss_by_class(process_classes(root_pid))


class MemorySampler:
    """Samples :func:`classify_processes` every ``interval`` seconds in a thread."""

    def __init__(self, root_pid: int | None = None, interval: float = 0.25):
        self.root_pid = root_pid or os.getpid()
        self.interval = interval
        self.peaks = MemoryPeaks()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Listing the process tree scans all of /proc (costly on a busy machine): refresh the
    # list every few samples and read only the known processes' RSS in between.
    REFRESH_EVERY = 8

    def _sample(self) -> None:
        if self.peaks.samples % self.REFRESH_EVERY == 0 or not hasattr(self, "_classes"):
            self._classes = process_classes(self.root_pid)
        workers: list[int] = []
        now = rss_by_class(self._classes, workers)
        p = self.peaks
        p.python_worker_max = max([p.python_worker_max, *workers])
        p.python_worker_count = max(p.python_worker_count, len(workers))
        p.driver_python = max(p.driver_python, now["driver_python"])
        p.jvm = max(p.jvm, now["jvm"])
        p.python_workers = max(p.python_workers, now["python_workers"])
        p.total = max(p.total, sum(now.values()))
        p.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemorySampler":
        self.peaks.driver_python_start = classify_processes(self.root_pid)["driver_python"]
        self._sample()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


@dataclass
class Phase:
    """Wall time, memory peaks and load of one measured phase."""

    seconds: float = 0.0
    memory: dict = field(default_factory=dict)
    loadavg: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "memory": self.memory, "loadavg": self.loadavg}


@contextmanager
def measure(sample_memory: bool = True):
    """Time a block and record its peak memory; yields a :class:`Phase`."""
    phase = Phase()
    sampler = MemorySampler() if sample_memory else None
    if sampler:
        sampler.__enter__()
    start = time.perf_counter()
    try:
        yield phase
    finally:
        phase.seconds = time.perf_counter() - start
        if sampler:
            sampler.__exit__(None, None, None)
            phase.memory = sampler.peaks.as_dict()
        phase.loadavg = [round(x, 2) for x in os.getloadavg()]


def timed_repeats(fn, repeats: int) -> tuple[list[float], object]:
    """Run ``fn`` ``repeats`` times; (seconds of each run, last result)."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def median(values) -> float:
    return float(statistics.median(values))


def write_json(path: str, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path``, creating its folder."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)


# --------------------------------------------------------------------------
# Ground truth, recall, model fits
# --------------------------------------------------------------------------


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int, threads: int,
                 metric: str = "l2") -> np.ndarray:
    """Exact neighbour row indices (nq, k): faiss's flat index, else numpy. ``metric``
    "l2", or "ip" (largest inner product first; cosine on unit vectors)."""
    try:
        import faiss
    except ImportError:
        return knn(base, queries, k, metric)[0]
    faiss.omp_set_num_threads(threads)
    index = (faiss.IndexFlatIP if metric == "ip" else faiss.IndexFlatL2)(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    labels = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 2000):
        part = np.ascontiguousarray(queries[start : start + 2000], dtype=np.float32)
        labels[start : start + len(part)] = index.search(part, k)[1]
    return labels


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean share of the true ``k`` neighbours among the first ``k`` found (-1 = missing)."""
    found = np.asarray(found)[:, :k]
    truth = np.asarray(truth)[:, :k]
    if len(truth) == 0:
        raise ValueError("recall needs at least one query")
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)
    return float(hits.sum() / truth.size)


def growth_exponent(sizes, seconds) -> float | None:
    """Least-squares slope of log(seconds) over log(size): time ~ size ** exponent."""
    pairs = [(s, t) for s, t in zip(sizes, seconds) if s and t and t > 0]
    if len(pairs) < 2:
        return None
    x = np.log([p[0] for p in pairs])
    y = np.log([p[1] for p in pairs])
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def linear_fit(points) -> tuple[float, float]:
    """(fixed seconds, seconds per item) of ``[(items, seconds), ...]``; a line through
    the origin when there is one point or the fit has a negative slope."""
    pts = [(float(n), float(t)) for n, t in points]
    if len(pts) >= 2 and len({p[0] for p in pts}) >= 2:
        slope, fixed = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
        if slope > 0:
            return max(0.0, float(fixed)), float(slope)
    n, t = max(pts)
    return 0.0, t / n


def extrapolate_seconds(points, items: int) -> float:
    fixed, per_item = linear_fit(points)
    return fixed + per_item * items


def fastest_at_recall(points: list[dict], min_recall: float = TARGET_RECALL) -> dict | None:
    """The point with the highest ``qps`` among those with ``recall >= min_recall``;
    if none reaches it, the point with the highest recall."""
    if not points:
        return None
    good = [p for p in points if p["recall"] >= min_recall]
    if good:
        return max(good, key=lambda p: p["qps"])
    return max(points, key=lambda p: (p["recall"], p["qps"]))


def pareto(points: list[dict]) -> list[dict]:
    """Points not beaten in both recall and qps, by recall ascending."""
    ordered = sorted(points, key=lambda p: (-p["qps"], -p["recall"]))
    front, best = [], -1.0
    for p in ordered:
        if p["recall"] > best:
            front.append(p)
            best = p["recall"]
    return sorted(front, key=lambda p: p["recall"])


# --------------------------------------------------------------------------
# Targets and reports
# --------------------------------------------------------------------------


def target_ratios(headline: dict) -> dict:
    """The target ratios from a headline case's measurements.

    ``headline`` holds ``sparkann`` (the local strategy), ``sparkann_partition``,
    ``hnswlib``, ``mllib_lsh``, ``exact_spark`` and ``spark_knn_join`` dicts with
    ``qps`` / ``recall`` (and ``build_seconds`` for the first ones).
    """
    s, h = headline.get("sparkann") or {}, headline.get("hnswlib") or {}
    part = headline.get("sparkann_partition") or {}
    lsh, ex = headline.get("mllib_lsh") or {}, headline.get("exact_spark") or {}
    join = headline.get("spark_knn_join") or {}
    values = {
        "throughput_vs_hnswlib": _ratio(s.get("qps"), h.get("qps")),
        "partition_throughput_vs_hnswlib": _ratio(part.get("qps"), h.get("qps")),
        "build_time_vs_hnswlib": _ratio(s.get("build_seconds"), h.get("build_seconds")),
        "throughput_vs_mllib_lsh": _ratio(s.get("qps"), lsh.get("qps")),
        "throughput_vs_exact_spark": _ratio(s.get("qps"), ex.get("qps")),
        "throughput_vs_spark_knn_join": _ratio(s.get("qps"), join.get("qps")),
    }
    out = {}
    for key, threshold, aim, direction in TARGETS:
        value = values.get(key)
        ok = None
        if value is not None and math.isfinite(value):
            ok = value >= threshold if direction == "min" else value <= threshold
        out[key] = {"ratio": value, "threshold": threshold, "aim": aim, "direction": direction,
                    "pass": ok}
    recall_s, recall_h = s.get("recall"), h.get("recall")
    out["recall_conditions"] = {
        "sparkann_recall": recall_s,
        "sparkann_partition_recall": part.get("recall"),
        "hnswlib_recall": recall_h,
        "mllib_lsh_recall": lsh.get("recall"),
        "sparkann_reaches_target": recall_s is not None and recall_s >= TARGET_RECALL,
        "hnswlib_reaches_target": recall_h is not None and recall_h >= TARGET_RECALL,
        "sparkann_recall_above_lsh": (recall_s is not None and lsh.get("recall") is not None
                                      and recall_s > lsh["recall"]),
    }
    return out


def _ratio(a, b) -> float | None:
    if a is None or b is None or not b:
        return None
    return round(float(a) / float(b), 3)


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _pass_word(entry: dict) -> str:
    if entry["pass"] is None:
        return "n/a"
    return "**pass**" if entry["pass"] else "**miss**"


METHOD_LABELS = {
    "sparkann": "sparkann, local strategy",
    "sparkann_local": "sparkann, local strategy",
    "sparkann_partition": "sparkann, partition strategy",
    "hnswlib": "hnswlib, one process",
    "mllib_lsh": "Spark MLlib BucketedRandomProjectionLSH",
    "exact_spark": "exact search on Spark (sparkann.evaluate)",
    "spark_knn_join": "Spark kNN join (DataFrame.nearestByJoin, exact)",
}
TARGET_NAMES = {
    "throughput_vs_hnswlib": "query throughput, local strategy / hnswlib",
    "partition_throughput_vs_hnswlib": "query throughput, partition strategy / hnswlib",
    "build_time_vs_hnswlib": "build time / hnswlib",
    "throughput_vs_mllib_lsh": "query throughput / MLlib LSH",
    "throughput_vs_exact_spark": "query throughput / exact on Spark",
    "throughput_vs_spark_knn_join": "query throughput / Spark kNN join",
}


def headline_table(results: dict) -> str:
    """Markdown: the headline case's methods and the target ratios with pass / miss."""
    case = results.get("headline_case")
    entry = results.get("cases", {}).get(case or "", {})
    head = entry.get("headline") or {}
    targets = results.get("targets") or {}
    lines = [
        f"Headline case: `{case}`; ratios from one run on the same {results['machine']['cores']} "
        "cores.",
        "",
        "| Method | Recall@10 | Queries/s | Build s | What is measured |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in ("sparkann_local", "sparkann_partition", "hnswlib", "spark_knn_join",
                "exact_spark", "mllib_lsh"):
        m = head.get(key)
        if not m:
            continue
        lines.append(
            f"| {METHOD_LABELS[key]} | {_fmt(m.get('recall'), 3)} | {_fmt(m.get('qps'))} | "
            f"{_fmt(m.get('build_seconds'), 1)} | {m.get('note', '')} |"
        )
    lines += ["", "| Target | Ratio | Needed | Aim | Result |", "| --- | --- | --- | --- | --- |"]
    for key, _, _, direction in TARGETS:
        t = targets.get(key)
        if not t:
            continue
        sign = "≥" if direction == "min" else "≤"
        aim = f"{t['aim']:g}×" if t["aim"] else "–"
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:,.2f}×"
        lines.append(f"| {TARGET_NAMES[key]} | {ratio} | {sign} {t['threshold']:g}× | {aim} | "
                     f"{_pass_word(t)} |")
    return "\n".join(lines)


def _methods(case: dict) -> dict:
    """sparkann per strategy (with the fit's build and summary) and hnswlib."""
    out = {}
    s = case.get("sparkann") or {}
    for strategy, st in (s.get("strategies") or {}).items():
        out[f"sparkann_{strategy}"] = {**st, "build": s.get("build"), "summary": s.get("summary")}
    if not out and s.get("throughput"):
        out["sparkann_local"] = s
    if case.get("hnswlib"):
        out["hnswlib"] = case["hnswlib"]
    return out


def equal_recall_rows(results: dict) -> list[dict]:
    """Per case: each method's fastest setting reaching recall 0.95 on the full query
    set, its partitions per query, and the ratio to hnswlib."""
    rows = []
    for name, case in results.get("cases", {}).items():
        methods = _methods(case)
        h = methods.get("hnswlib")
        h_qps = h["throughput"][-1]["qps"] if h else None
        for key, m in methods.items():
            last = m["throughput"][-1]
            chosen = m.get("chosen") or {}
            rows.append({
                "case": name, "method": key, "setting": setting_text(chosen),
                "queries": last["queries"], "recall": last["recall"], "qps": last["qps"],
                "seconds_median": median(last["seconds"]), "repeats": len(last["seconds"]),
                "probes_per_query": chosen.get("probes_per_query"),
                "ratio_to_hnswlib": None if key == "hnswlib" else _ratio(last["qps"], h_qps),
                "reaches_target": last["recall"] >= TARGET_RECALL,
                "target_case": name in ("clustered-300000", "clustered-1000000"),
            })
    return rows


def results_markdown(results: dict) -> str:
    """The full RESULTS.md."""
    m = results["machine"]
    out = [
        "# sparkann benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['started']} "
        f"({results['total_seconds'] / 60:.1f} min in all"
        f"{', quick mode' if results['quick'] else ''}).",
        "",
        *([f"Resumed run: the cases {', '.join(results['resumed_from']['cases'])} come from "
           f"the run started {results['resumed_from']['started']}; the total time includes it.",
           ""] if results.get("resumed_from") else []),
        f"Code measured: {results.get('label') or 'the working tree'} "
        f"(sparkann imported from `{results.get('sparkann_source', '?')}` by the driver and "
        f"`{results.get('sparkann_worker_source', '?')}` by the Python workers).",
        "",
        "## Machine",
        "",
        f"- {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['os']}",
        f"- Python {m['python']}, Java {m['java']}, PySpark {m['pyspark']}, hnswlib "
        f"{m['hnswlib']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}, faiss {m['faiss']}",
        f"- Spark: `{results['spark_conf']}`",
        f"- Load average at start {m['loadavg_at_start']}, at end {results.get('loadavg_at_end')} "
        "(a shared machine: compare ratios within this run). Per case (1, 5, 15 min): "
        + "; ".join(f"{s['case']} {s['at']} {s['loadavg']}"
                    for s in results.get("load_samples", [])),
        "",
        "## Headline and targets",
        "",
        headline_table(results),
        "",
        "How each number is measured:",
        "",
    ]
    out += [f"- {line}" for line in results.get("method_notes", [])]
    if results.get("profile_file"):
        out += ["", f"Where the time goes: [{results['profile_file']}]({results['profile_file']})."]
    out += _equal_recall_markdown(results)
    out += _knn_join_markdown(results)
    out += _streaming_markdown(results)
    out += _memory_markdown(results)
    out += _calibration_markdown(results)
    out += _defaults_recall_markdown(results)
    out += _spread_markdown(results)
    out += ["", "## Per dataset", ""]
    for name, case in results.get("cases", {}).items():
        out += _case_markdown(name, case)
    scaling = results.get("scaling")
    if scaling and scaling.get("rows"):
        keys = [k for k in ("sparkann_local", "sparkann_partition", "hnswlib")
                if any(f"{k}_search_seconds" in r for r in scaling["rows"])]
        out += ["## Scaling", "",
                "| Rows | sparkann build s | hnswlib build s | "
                + " | ".join(f"{METHOD_LABELS[k]} search s" for k in keys) + " | queries |",
                "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- |"]
        for row in scaling["rows"]:
            out.append(
                f"| {row['rows']:,} | {_fmt(row.get('sparkann_local_build_seconds'), 1)} | "
                f"{_fmt(row.get('hnswlib_build_seconds'), 1)} | "
                + " | ".join(_fmt(row.get(f"{k}_search_seconds"), 2) for k in keys)
                + f" | {row.get('queries', 0):,} |")
        out += ["", "Growth exponents (time ∝ rows^e, least squares on log-log):", ""]
        for key, value in scaling["exponents"].items():
            if key.startswith(("sparkann_local", "sparkann_partition", "hnswlib")):
                out.append(f"- {key}: {_fmt(value, 2)}")
        out.append("")
    pq = results.get("pq")
    if pq:
        out += ["## Optional: PQ mode", "", pq.get("status", ""), ""]
        for key in ("sparkann_pq", "faiss_ivfpq"):
            if pq.get(key):
                v = pq[key]
                out.append(f"- {key}: recall@10 {_fmt(v.get('recall'), 3)}, "
                           f"{_fmt(v.get('qps'))} queries/s, "
                           f"build {_fmt(v.get('build_seconds'), 1)} s")
        out.append("")
    return "\n".join(out) + "\n"


def _equal_recall_markdown(results: dict) -> list[str]:
    rows = results.get("equal_recall") or []
    if not rows:
        return []
    out = ["", "## 1. Throughput at equal recall (recall@10 ≥ 0.95)", "",
           "The fastest setting of each method's sweep that reaches recall@10 ≥ 0.95, run on "
           "the full query set (median of the repeats). Target: the local strategy ≥ 1.0× "
           "hnswlib on clustered-300000 and clustered-1000000.", "",
           "| Case | Method | Setting | Partitions / query | Recall@10 | Queries/s | "
           "Ratio to hnswlib | Target |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        target = "–"
        if r["method"] == "sparkann_local" and r["target_case"] and r["ratio_to_hnswlib"]:
            target = "**pass**" if r["ratio_to_hnswlib"] >= 1.0 else "**miss**"
        ratio = "–" if r["ratio_to_hnswlib"] is None else f"{r['ratio_to_hnswlib']:.2f}×"
        out.append(
            f"| {r['case']} | {METHOD_LABELS.get(r['method'], r['method'])} | {r['setting']} | "
            f"{_fmt(r['probes_per_query'], 2)} | {_fmt(r['recall'], 3)} | {_fmt(r['qps'])} "
            f"({r['queries']:,} q, {r['repeats']}×) | {ratio} | {target} |")
    out += ["", "Calibrated defaults (as fit chose them), same query sets:", "",
            "| Case | Strategy | numProbes / probeEpsilon / efSearch | Partitions / query | "
            "Recall@10 (sample) | Queries/s (sample) | Recall@10 (full) | Queries/s (full) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in results.get("cases", {}).items():
        for strategy, st in ((case.get("sparkann") or {}).get("strategies") or {}).items():
            d = st.get("defaults") or {}
            full = d.get("full") or {}
            out.append(f"| {name} | {strategy} | {d.get('numProbes')} / "
                       f"{d.get('probeEpsilon', 0):g} / {d.get('efSearch')} | "
                       f"{_fmt(d.get('probes_per_query'), 2)} | {_fmt(d.get('recall'), 3)} | "
                       f"{_fmt(d.get('qps'))} | {_fmt(full.get('recall'), 3)} | "
                       f"{_fmt(full.get('qps'))} |")
    return out


def _knn_join_markdown(results: dict) -> list[str]:
    rows = [(n, c) for n, c in results.get("cases", {}).items() if c.get("spark_knn_join")]
    if not rows:
        return []
    out = ["", "## 2. Spark's own kNN join (brute-force anchor)", "",
           "| Case | Queries measured | Recall@10 | Seconds (measured) | Pairs/s | "
           "Extrapolated q/s | sparkann local q/s | Ratio sparkann / join | "
           "exact_neighbors q/s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in rows:
        j = case["spark_knn_join"]
        last = j["samples"][-1]
        local = (case.get("headline") or {}).get("sparkann_local") or {}
        ex = case.get("exact_spark") or {}
        out.append(f"| {name} | {', '.join(str(p['queries']) for p in j['samples'])} | "
                   f"{_fmt(j['recall'], 3)} | "
                   f"{', '.join(_fmt(p['seconds'], 1) for p in j['samples'])} | "
                   f"{_fmt(last.get('pairs_per_second'))} | {_fmt(j['qps'], 1)} | "
                   f"{_fmt(local.get('qps'))} | "
                   f"{_fmt(_ratio(local.get('qps'), j['qps']))}× | {_fmt(ex.get('qps'))} |")
    return out


def _streaming_markdown(results: dict) -> list[str]:
    rows = [(n, c) for n, c in results.get("cases", {}).items() if c.get("streaming")]
    if not rows:
        return []
    out = ["", "## 3. Structured Streaming micro-batch latency", ""]
    for name, case in rows:
        s = case["streaming"]
        out += [f"`{name}`, {s['files']} files per run, the first {s['warmup']} micro-batches "
                "not counted; milliseconds.", "",
                "| Strategy | Queries / file | Setting | Batches counted | p50 trigger | "
                "p95 trigger | p50 addBatch | p95 addBatch | Run wall s |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in s["runs"]:
            out.append(f"| {r['strategy']} | {r['rows_per_file']} | "
                       f"{setting_text(r['setting'])} | {r['measured']} | "
                       f"{_fmt(r['p50_trigger_ms'])} | {_fmt(r['p95_trigger_ms'])} | "
                       f"{_fmt(r['p50_add_batch_ms'])} | {_fmt(r['p95_add_batch_ms'])} | "
                       f"{_fmt(r['wall_seconds'], 1)} |")
    return out


def _memory_markdown(results: dict) -> list[str]:
    out = ["", "## 4. Memory during search", "",
           "Peaks during the full-set runs of the chosen setting (local mode: one JVM is driver "
           "and executor; the Python workers are the executor's). `After` = RSS of each Python "
           "worker once the runs ended (what the executor keeps holding), `empty cache` = each "
           "worker right after sparkann's cache was emptied (Python, pyspark, numpy, faiss, "
           "hnswlib loaded, no index). The estimate is "
           "`summary()['memoryBytesPerWorker']`.", "",
           "| Case | Strategy | JVM peak MiB | Python workers peak MiB (sum) | Largest worker "
           "peak MiB | Workers | Workers with empty cache (MiB each) | Workers after (MiB each) "
           "| Estimate MiB per worker | Index bytes MiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    found = False
    for name, case in results.get("cases", {}).items():
        s = case.get("sparkann") or {}
        summary = s.get("summary") or {}
        for strategy, st in (s.get("strategies") or {}).items():
            mem = st.get("search_memory") or {}
            after = ", ".join(_fmt(w["rss_mib"]) for w in st.get("worker_rss_after_search", [])
                              if w.get("role") == "worker")
            empty = ", ".join(_fmt(w["rss_mib"]) for w in st.get("worker_rss_empty_cache", [])
                              if w.get("role") == "worker")
            found = True
            out.append(f"| {name} | {strategy} | {_fmt(mem.get('jvm_peak_mib'))} | "
                       f"{_fmt(mem.get('python_workers_peak_mib'))} | "
                       f"{_fmt(mem.get('python_worker_max_mib'))} | "
                       f"{mem.get('python_worker_count', '–')} | {empty or '–'} | "
                       f"{after or '–'} | "
                       f"{_fmt((summary.get('memoryBytesPerWorker') or 0) / 2**20)} | "
                       f"{_fmt((summary.get('indexBytes') or 0) / 2**20)} |")
    return out if found else []


def _calibration_markdown(results: dict) -> list[str]:
    out = ["", "## 5. Calibration's share of the build", "",
           "From `summary()['buildSeconds']`: wall-clock stages `plan calibration` + `calibrate` "
           "over all the fit's stages; task seconds `calibration searches` over `build "
           "partitions` + `calibration searches` (the searches run inside the build tasks); "
           "the estimated total adds that share of the `build partition indexes` stage.", "",
           "| Case | Fit s | plan calibration s | calibrate s | Wall share | Task s: build / "
           "searches | Task share | Estimated total share |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    found = False
    for name, case in results.get("cases", {}).items():
        share = (case.get("sparkann") or {}).get("calibration_share")
        if not share:
            continue
        found = True
        st = share["stages"]
        out.append(f"| {name} | {_fmt(share['fit_seconds'], 1)} | "
                   f"{_fmt(st.get('plan calibration'), 2)} | {_fmt(st.get('calibrate'), 2)} | "
                   f"{_pct(share['wall_share'])} | "
                   f"{_fmt(st.get('task seconds: build partitions'), 1)} / "
                   f"{_fmt(st.get('task seconds: calibration searches'), 1)} | "
                   f"{_pct(share['task_share'])} | {_pct(share['estimated_total_share'])} |")
    return out if found else []


def _defaults_recall_markdown(results: dict) -> list[str]:
    out = ["", "## 6. Recall with the calibrated defaults", "",
           "Measured on held-out queries (never indexed) against exact ground truth; the "
           "calibration's own estimate is on its held-out sample of indexed rows.", "",
           "| Case | Metric | Partitions | Calibrated numProbes / efSearch | Calibration "
           "estimate | Recall@10 local | Recall@10 partition | Queries | Target 0.95 |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    found = False
    for name, case in results.get("cases", {}).items():
        s = case.get("sparkann") or {}
        strategies = s.get("strategies") or {}
        if not strategies:
            continue
        found = True
        cal = (s.get("summary") or {}).get("calibration") or {}
        rec = {k: (v.get("defaults") or {}).get("recall") for k, v in strategies.items()}
        worst = min(r for r in rec.values() if r is not None)
        out.append(f"| {name} | {case.get('metric', 'l2')} | "
                   f"{(s.get('summary') or {}).get('numPartitions')} | "
                   f"{cal.get('numProbes')} / {cal.get('efSearch')} | "
                   f"{_fmt(cal.get('recall'), 3)} | {_fmt(rec.get('local'), 3)} | "
                   f"{_fmt(rec.get('partition'), 3)} | {case.get('recall_queries', 0):,} | "
                   f"{'**pass**' if worst >= TARGET_RECALL else '**miss**'} |")
    return out if found else []


def _spread_markdown(results: dict) -> list[str]:
    rows = [(n, c) for n, c in results.get("cases", {}).items() if c.get("spread")]
    if not rows:
        return []
    out = ["", "## 7. Recall spread of repeated builds (same data, same seed)", ""]
    for name, case in rows:
        sp = case["spread"]
        keys = [f"{s['numProbes']}:{s['efSearch']}" for s in sp["settings"]]
        out += [f"`{name}`: recall@10 on {sp['queries']:,} queries (local strategy, "
                "probeEpsilon 0) at fixed numProbes:efSearch, and at each build's own "
                "calibrated defaults.", "",
                "| Build | deterministic | Fit s | Calibrated (numProbes, efSearch, est. "
                "recall) | " + " | ".join(keys) + " | at its defaults | Partition checksums |",
                "| --- | --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- |"]
        for b in sp["builds"]:
            c = b["calibrated"]
            out.append(f"| {b['build']} | {b['deterministic']} | {_fmt(b['fit_seconds'], 1)} | "
                       f"{c.get('numProbes')}, {c.get('efSearch')}, {_fmt(c.get('recall'), 4)} | "
                       + " | ".join(f"{b['recall'][k]:.4f}" for k in keys)
                       + f" | {b['recall_at_defaults']:.4f} | "
                       + " ".join(x[:8] for x in b["checksums"]) + " |")
        out += ["", "| Builds | Count | Distinct indexes | Distinct calibrations | "
                + " | ".join(f"spread {k}" for k in keys) + " | spread at defaults |",
                "| --- | --- | --- | --- | " + " | ".join("---" for _ in keys) + " | --- |"]
        for kind, s in sp["summary"].items():
            out.append(f"| {kind} | {s['builds']} | {s['distinct_indexes']} | "
                       f"{s['distinct_calibrations']} | "
                       + " | ".join(f"{s['recall'][k]['spread']:.4f} "
                                    f"(sd {s['recall'][k]['std']:.4f})" for k in keys)
                       + f" | {s['recall']['defaults']['spread']:.4f} |")
    return out


def _case_markdown(name: str, case: dict) -> list[str]:
    out = [f"### {name}", "", case.get("description", ""), ""]
    if case.get("loadavg_at_start"):
        out += [f"Load average at the start of the case {case['loadavg_at_start']}, at its "
                f"end {case.get('loadavg_at_end')}.", ""]
    methods = _methods(case)
    out += ["| Method | Build s | Peak memory MiB (driver py / JVM / py workers) | "
            "Recall@10 | Queries/s at " + " / ".join(f"{n:,}" for n in case.get("query_counts", []))
            + " queries |", "| --- | --- | --- | --- | --- |"]
    for key, m in methods.items():
        if key == "hnswlib":  # in the driver process; the idle JVM is not part of it
            mem = (m.get("build") or {}).get("memory") or {}
            memory = (f"{_fmt(mem.get('driver_python_peak_mib'))} (+"
                      f"{_fmt(mem.get('driver_python_growth_mib'))} in the build) / – / –")
        else:
            mem = m.get("search_memory") or {}
            memory = (f"search: {_fmt(mem.get('driver_python_peak_mib'))} / "
                      f"{_fmt(mem.get('jvm_peak_mib'))} / "
                      f"{_fmt(mem.get('python_workers_peak_mib'))}")
        qps = " / ".join(_fmt(t.get("qps")) for t in m.get("throughput", []))
        chosen = m.get("chosen") or {}
        build_seconds = _fmt((m.get("build") or {}).get("seconds"), 1)
        out.append(f"| {METHOD_LABELS.get(key, key)} ({setting_text(chosen)}) | {build_seconds} | "
                   f"{memory} | {_fmt(m['throughput'][-1].get('recall'), 3)} | {qps} |")
    for key in ("spark_knn_join", "exact_spark", "mllib_lsh"):
        m = case.get(key)
        if not m:
            continue
        for variant in m.get("variants", []):
            out.append(f"| {key}: {variant['name']} | {_fmt(variant.get('build_seconds'), 1)} | "
                       f"– | {_fmt(variant.get('recall'), 3)} | {_fmt(variant.get('qps'))} "
                       f"({variant.get('note', '')}) |")
    out.append("")
    for key, m in methods.items():
        cands = m.get("candidates")
        if cands:
            out += [f"{METHOD_LABELS.get(key, key)}, candidates on the full query set: "
                    + "; ".join(f"{setting_text(c)}: recall {c['recall']:.3f}, "
                                f"{c['qps']:,.0f} q/s" for c in cands), ""]
    for key, m in methods.items():
        sweep = m.get("sweep") if key != "hnswlib" else None
        if not sweep:
            continue
        out += [f"{METHOD_LABELS.get(key, key)} sweep (recall sample): recall@10 / queries/s", "",
                "| numProbes \\ efSearch | "
                + " | ".join(str(e) for e in sweep["ef_values"]) + " |",
                "| --- | " + " | ".join("---" for _ in sweep["ef_values"]) + " |"]
        cells = {(p["numProbes"], p.get("probeEpsilon", 0), p["efSearch"]): p
                 for p in sweep["points"]}
        for probes, eps in sorted({key[:2] for key in cells}):
            row = []
            for ef in sweep["ef_values"]:
                p = cells.get((probes, eps, ef))
                row.append("–" if p is None else f"{p['recall']:.3f} / {p['qps']:,.0f}")
            label = f"{probes}, probeEpsilon={eps:g}" if eps else str(probes)
            out.append(f"| {label} | " + " | ".join(row) + " |")
        out.append("")
    hsweep = (case.get("hnswlib") or {}).get("sweep")
    if hsweep:
        out += ["hnswlib sweep (recall sample): " + ", ".join(
            f"ef {p['efSearch']}: {p['recall']:.3f} / {p['qps']:,.0f} q/s" for p in hsweep), ""]
    s = case.get("sparkann") or {}
    if s.get("build_stages"):
        out += ["sparkann fit, slowest Spark stages (wall s / task s): " + "; ".join(
            f"{r['name']} {r['wall_s']:.1f} / {r['task_s']:.1f}" for r in s["build_stages"][:5]),
            ""]
    for key, m in methods.items():
        stages = m.get("stages") if key != "hnswlib" else None
        if stages:
            out += [f"{METHOD_LABELS.get(key, key)}, full-set search, slowest Spark stages "
                    "(wall s / task s, all repeats): " + "; ".join(
                        f"{r['name']} {r['wall_s']:.1f} / {r['task_s']:.1f}"
                        for r in stages[:4]), ""]
    return out


def setting_text(chosen: dict) -> str:
    """A sweep point's search settings, e.g. 'numProbes=6, probeEpsilon=0.1, efSearch=48'."""
    parts = [f"{k}={chosen[k]:g}" for k in ("numProbes", "probeEpsilon", "efSearch")
             if chosen.get(k)]
    return ", ".join(parts)


def plot_recall_vs_qps(results: dict, path: str) -> None:
    """One panel per case: recall@10 against queries/s (log scale) for every method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [(n, c) for n, c in results.get("cases", {}).items() if c.get("sparkann")]
    if not cases:
        return
    cols = min(3, len(cases))
    rows = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    colours = {"sparkann_local": "tab:blue", "sparkann_partition": "tab:purple"}
    for ax, (name, case) in zip(axes.ravel(), cases):
        for key, m in _methods(case).items():
            if key == "hnswlib":
                continue
            colour = colours.get(key, "tab:blue")
            pts = (m.get("sweep") or {}).get("points") or []
            if pts:
                ax.scatter([p["qps"] for p in pts], [p["recall"] for p in pts], s=10,
                           c=colour, alpha=0.3)
                front = pareto(pts)
                ax.plot([p["qps"] for p in front], [p["recall"] for p in front], "-o",
                        c=colour, ms=3, label=METHOD_LABELS.get(key, key))
            d = m.get("defaults") or {}
            if d.get("qps"):
                ax.scatter([d["qps"]], [d["recall"]], marker="*", s=90, c=colour,
                           edgecolors="black", linewidths=0.5,
                           label=f"{key.replace('sparkann_', '')}: calibrated defaults")
            c = m.get("chosen") or {}
            if c.get("qps"):
                ax.scatter([c["qps"]], [c["recall"]], marker="s", s=40, facecolors="none",
                           edgecolors=colour, label=f"{key.replace('sparkann_', '')}: full set")
        h = (case.get("hnswlib") or {}).get("sweep") or []
        if h:
            ax.plot([p["qps"] for p in h], [p["recall"] for p in h], "-s", c="tab:orange", ms=3,
                    label="hnswlib, one process (ef)")
        for key, marker, colour in (("mllib_lsh", "^", "tab:red"),
                                    ("exact_spark", "D", "tab:green"),
                                    ("spark_knn_join", "v", "tab:brown")):
            for v in (case.get(key) or {}).get("variants", []):
                if v.get("qps") and v.get("recall") is not None:
                    ax.scatter([v["qps"]], [v["recall"]], marker=marker, c=colour, s=36,
                               label=f"{key}: {v['name']}")
        pq = case.get("pq") or {}
        for key, marker in (("sparkann_pq", "P"), ("faiss_ivfpq", "X")):
            if pq.get(key):
                ax.scatter([pq[key]["qps"]], [pq[key]["recall"]], marker=marker, s=40, label=key)
        ax.axhline(TARGET_RECALL, c="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("queries / s (log)")
        ax.set_ylabel("recall@10")
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=5.5, loc="lower left")
    for ax in axes.ravel()[len(cases):]:
        ax.axis("off")
    fig.suptitle(f"recall@10 vs throughput, {results['machine']['cores']} cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stage_summary(stages: list[dict], top: int = 6) -> list[dict]:
    """Stages grouped by name, slowest first: wall seconds, task seconds, shuffle bytes."""
    groups: dict[str, dict] = {}
    for s in stages:
        name = f"{s['description']}: {s['name']}" if s.get("description") else s["name"]
        g = groups.setdefault(name, {"name": name, "stages": 0, "wall_s": 0.0,
                                          "task_s": 0.0, "cpu_s": 0.0, "tasks": 0,
                                          "shuffle_read_mib": 0.0, "shuffle_write_mib": 0.0,
                                          "input_mib": 0.0})
        g["stages"] += 1
        g["wall_s"] += s.get("wall_s") or 0.0
        g["task_s"] += s.get("task_s") or 0.0
        g["cpu_s"] += s.get("cpu_s") or 0.0
        g["tasks"] += s.get("tasks") or 0
        g["shuffle_read_mib"] += (s.get("shuffle_read_bytes") or 0) / 2**20
        g["shuffle_write_mib"] += (s.get("shuffle_write_bytes") or 0) / 2**20
        g["input_mib"] += (s.get("input_bytes") or 0) / 2**20
    ordered = sorted(groups.values(), key=lambda g: -g["wall_s"])[:top]
    for g in ordered:
        for key in ("wall_s", "task_s", "cpu_s", "shuffle_read_mib", "shuffle_write_mib",
                    "input_mib"):
            g[key] = round(g[key], 2)
    return ordered


def clear_worker_caches(spark, cores: int) -> None:
    """Drop what sparkann keeps loaded in the Python workers (each worker runs a task of
    a small job), so a strategy's memory is measured from an empty cache."""

    def clear(batches):
        import ctypes
        import gc as collector

        from sparkann import loader

        loader.CACHE.clear()
        collector.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        for batch in batches:
            yield batch

    tasks = 4 * cores
    spark.range(0, tasks, 1, tasks).mapInArrow(clear, "id long").collect()
