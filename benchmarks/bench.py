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
    ("throughput_vs_hnswlib", 0.5, 1.0, "min"),
    ("build_time_vs_hnswlib", 1.5, 1.0, "max"),
    ("throughput_vs_mllib_lsh", 100.0, None, "min"),
    ("throughput_vs_exact_spark", 20.0, None, "min"),
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

    def as_dict(self) -> dict:
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        return {
            "driver_python_peak_mib": mib(self.driver_python),
            "driver_python_growth_mib": mib(max(0, self.driver_python - self.driver_python_start)),
            "jvm_peak_mib": mib(self.jvm),
            "python_workers_peak_mib": mib(self.python_workers),
            "total_peak_mib": mib(self.total),
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


def rss_by_class(classes: dict[int, str]) -> dict[str, int]:
    """Summed RSS (bytes) per class of :func:`process_classes`."""
    import psutil

    out = {"driver_python": 0, "jvm": 0, "python_workers": 0}
    for pid, kind in classes.items():
        try:
            out[kind] += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return out


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
        now = rss_by_class(self._classes)
        p = self.peaks
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


# --------------------------------------------------------------------------
# Ground truth, recall, model fits
# --------------------------------------------------------------------------


def ground_truth(base: np.ndarray, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
    """Exact l2 neighbour row indices (nq, k): faiss's flat index, else numpy."""
    try:
        import faiss
    except ImportError:
        return knn(base, queries, k, "l2")[0]
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatL2(base.shape[1])
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
    """The four ratios of the issue from a headline case's measurements.

    ``headline`` holds ``sparkann``, ``hnswlib``, ``mllib_lsh`` and ``exact_spark``
    dicts with ``qps`` / ``recall`` (and ``build_seconds`` for the first two).
    """
    s, h = headline.get("sparkann") or {}, headline.get("hnswlib") or {}
    lsh, ex = headline.get("mllib_lsh") or {}, headline.get("exact_spark") or {}
    values = {
        "throughput_vs_hnswlib": _ratio(s.get("qps"), h.get("qps")),
        "build_time_vs_hnswlib": _ratio(s.get("build_seconds"), h.get("build_seconds")),
        "throughput_vs_mllib_lsh": _ratio(s.get("qps"), lsh.get("qps")),
        "throughput_vs_exact_spark": _ratio(s.get("qps"), ex.get("qps")),
    }
    out = {}
    for key, threshold, aim, direction in TARGETS:
        value = values[key]
        ok = None
        if value is not None and math.isfinite(value):
            ok = value >= threshold if direction == "min" else value <= threshold
        out[key] = {"ratio": value, "threshold": threshold, "aim": aim, "direction": direction,
                    "pass": ok}
    recall_s, recall_h = s.get("recall"), h.get("recall")
    out["recall_conditions"] = {
        "sparkann_recall": recall_s,
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


def _pass_word(entry: dict) -> str:
    if entry["pass"] is None:
        return "n/a"
    return "**pass**" if entry["pass"] else "**miss**"


def headline_table(results: dict) -> str:
    """Markdown: the four target ratios with pass / miss, and the methods behind them."""
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
    for key, label in (("sparkann", "sparkann"), ("hnswlib", "hnswlib, one process"),
                       ("mllib_lsh", "Spark MLlib BucketedRandomProjectionLSH"),
                       ("exact_spark", "exact search on Spark")):
        m = head.get(key)
        if not m:
            lines.append(f"| {label} | – | – | – | not run |")
            continue
        lines.append(
            f"| {label} | {_fmt(m.get('recall'), 3)} | {_fmt(m.get('qps'))} | "
            f"{_fmt(m.get('build_seconds'), 1)} | {m.get('note', '')} |"
        )
    lines += ["", "| Target | Ratio | Needed | Aim | Result |", "| --- | --- | --- | --- | --- |"]
    names = {
        "throughput_vs_hnswlib": "query throughput / hnswlib",
        "build_time_vs_hnswlib": "build time / hnswlib",
        "throughput_vs_mllib_lsh": "query throughput / MLlib LSH",
        "throughput_vs_exact_spark": "query throughput / exact on Spark",
    }
    for key, _, _, direction in TARGETS:
        t = targets.get(key)
        if not t:
            continue
        sign = "≥" if direction == "min" else "≤"
        aim = f"{t['aim']:g}×" if t["aim"] else "–"
        ratio = "–" if t["ratio"] is None else f"{t['ratio']:,.2f}×"
        lines.append(f"| {names[key]} | {ratio} | {sign} {t['threshold']:g}× | {aim} | "
                     f"{_pass_word(t)} |")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    """The full RESULTS.md: machine, headline, per-case tables, sweep, scaling."""
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
        "(a shared machine: other jobs ran at the same time; compare ratios within this run).",
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
        out += ["", f"Where the time goes, and what would fix the misses: "
                    f"[{results['profile_file']}]({results['profile_file']})."]
    out += ["", "## Per dataset", ""]
    for name, case in results.get("cases", {}).items():
        out += _case_markdown(name, case)
    scaling = results.get("scaling")
    if scaling:
        out += ["## Scaling", "",
                "| Rows | sparkann build s | hnswlib build s | sparkann search s | "
                "hnswlib search s | queries |",
                "| --- | --- | --- | --- | --- | --- |"]
        for row in scaling["rows"]:
            out.append(
                f"| {row['rows']:,} | {_fmt(row.get('sparkann_build_seconds'), 1)} | "
                f"{_fmt(row.get('hnswlib_build_seconds'), 1)} | "
                f"{_fmt(row.get('sparkann_search_seconds'), 1)} | "
                f"{_fmt(row.get('hnswlib_search_seconds'), 1)} | {row.get('queries', '–'):,} |"
            )
        out += ["", "Growth exponents (time ∝ rows^e, least squares on log-log):", ""]
        for key, value in scaling["exponents"].items():
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


def _case_markdown(name: str, case: dict) -> list[str]:
    out = [f"### {name}", "", case.get("description", ""), ""]
    out += ["| Method | Build s | Peak memory MiB (driver py / JVM / py workers) | "
            "Recall@10 | Queries/s at " + " / ".join(f"{n:,}" for n in case.get("query_counts", []))
            + " queries |", "| --- | --- | --- | --- | --- |"]
    for key in ("hnswlib", "sparkann"):
        m = case.get(key)
        if not m:
            continue
        mem = (m.get("build") or {}).get("memory") or {}
        if key == "hnswlib":  # in the driver process; the idle JVM is not part of it
            memory = (f"{_fmt(mem.get('driver_python_peak_mib'))} (+"
                      f"{_fmt(mem.get('driver_python_growth_mib'))} in the build) / – / –")
        else:
            memory = (f"{_fmt(mem.get('driver_python_peak_mib'))} / "
                      f"{_fmt(mem.get('jvm_peak_mib'))} / "
                      f"{_fmt(mem.get('python_workers_peak_mib'))}")
        qps = " / ".join(_fmt(t.get("qps")) for t in m.get("throughput", []))
        chosen = m.get("chosen") or {}
        build_seconds = _fmt((m.get("build") or {}).get("seconds"), 1)
        out.append(f"| {key} ({setting_text(chosen)}) | {build_seconds} | "
                   f"{memory} | {_fmt(chosen.get('recall'), 3)} | {qps} |")
    for key in ("mllib_lsh", "exact_spark"):
        m = case.get(key)
        if not m:
            continue
        for variant in m.get("variants", []):
            out.append(f"| {key}: {variant['name']} | {_fmt(variant.get('build_seconds'), 1)} | "
                       f"– | {_fmt(variant.get('recall'), 3)} | {_fmt(variant.get('qps'))} "
                       f"({variant.get('note', '')}) |")
    out.append("")
    peak = (case.get("sparkann") or {}).get("search_memory")
    if peak:
        out += [f"sparkann search peak memory (largest query set): driver Python "
                f"{_fmt(peak.get('driver_python_peak_mib'))} MiB, JVM "
                f"{_fmt(peak.get('jvm_peak_mib'))} MiB, Python workers "
                f"{_fmt(peak.get('python_workers_peak_mib'))} MiB.", ""]
    sweep = (case.get("sparkann") or {}).get("sweep")
    if sweep:
        out += ["sparkann sweep (recall sample): recall@10 / queries/s", "",
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
    stages = (case.get("sparkann") or {}).get("stage_summary")
    if stages:
        out += ["Slowest Spark stages of the sparkann phases (wall s / task s):", ""]
        for phase, rows in stages.items():
            text = "; ".join(f"{r['name']} {r['wall_s']:.1f} / {r['task_s']:.1f}" for r in rows[:4])
            out.append(f"- {phase}: {text}")
        out.append("")
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
    for ax, (name, case) in zip(axes.ravel(), cases):
        s = case.get("sparkann") or {}
        pts = (s.get("sweep") or {}).get("points") or []
        if pts:
            ax.scatter([p["qps"] for p in pts], [p["recall"] for p in pts], s=12, c="tab:blue",
                       alpha=0.35)
            front = pareto(pts)
            ax.plot([p["qps"] for p in front], [p["recall"] for p in front], "-o", c="tab:blue",
                    ms=4, label="sparkann (numProbes × probeEpsilon × efSearch)")
        h = (case.get("hnswlib") or {}).get("sweep") or []
        if h:
            ax.plot([p["qps"] for p in h], [p["recall"] for p in h], "-s", c="tab:orange", ms=4,
                    label="hnswlib, one process (ef)")
        for key, marker, colour in (("mllib_lsh", "^", "tab:red"),
                                    ("exact_spark", "D", "tab:green")):
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
        ax.legend(fontsize=6, loc="lower left")
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
