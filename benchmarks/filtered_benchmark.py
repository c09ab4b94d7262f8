"""Filtered search: sparkann's ``setFilter`` against faiss with an ``IDSelector``,
Spark's ``DataFrame.nearestByJoin`` over the passing items, and sparkann without the
filter, post-filtered by the user.

    python benchmarks/filtered_benchmark.py [--items 200000] [--dim 128] [--queries 2000]
        [--spark-queries 100] [--repeats 3] [--shares 0.001,0.01,0.1,0.5]
        [--tag-shares 0.001,0.01,0.1,0.5] [--datasets clustered,fashion-mnist]
        [--post-filter-cap 1000] [--max-ef 32768] [--skip-sparkann]
        [--out notebooks/benchmarks/filtered.json]

The full run is ``--items 1000000``. Item attributes are drawn as the big-ann-benchmarks
NeurIPS'23 filtered track draws them, independently of the vectors: a ``tag`` out of
1,000 with Zipf-like frequencies (the tag of rank r has weight 1 / r) and a ``num``
uniform in [0, 1). The share of items passing the filter is swept: ``num < s`` passes a
share s exactly in expectation, and ``tag IN (...)`` lists tags whose summed frequency
comes closest to s from below; the measured share is reported.

Datasets: ``sparkann.datasets.clustered`` (``--items`` x ``--dim``, l2) and Fashion-MNIST
from the shared data folder (a seeded sample of at most ``--items`` of its 60,000 train
images, cosine; skipped with a message when absent). Queries are a separate seeded draw
(another sample of the mixture; Fashion-MNIST's test images), never indexed rows.

Per predicate, all in one run on the same data:

* sparkann, filtered (``setFilter``), fitted with its defaults on ``local[2]``, with the
  local and the partition search strategy: recall@10 against exact filtered search (brute
  force over the passing items only) and queries/s (median of ``--repeats`` runs of
  ``transform`` collected with ``toArrow``);
* faiss in one process on 2 threads with an ``IDSelectorBitmap``: ``IndexHNSWFlat`` (M=16,
  efConstruction=200), efSearch swept upwards until recall reaches sparkann's ("equal
  recall"; recall 0.95 with ``--skip-sparkann``), and an exact ``IndexFlat``;
* ``nearestByJoin(..., "exact")`` over the items passing the filter, on
  ``--spark-queries`` queries, compared per query;
* sparkann fitted and searched without the filter for k' = min(items, ceil(10 / share),
  ``--post-filter-cap``) neighbours, the failing ones dropped in numpy, the first 10 kept.

Prints a markdown table per dataset and writes every measurement, with the machine's
facts, to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import bench  # benchmarks/ (this script's folder): shared helpers
import numpy as np
import pyarrow as pa
import shared_data

from sparkann import ANNIndex, ANNIndexModel, datasets

K = 10
THREADS = 2
TAGS = 1000
ZIPF_EXPONENT = 1.0
ATTRIBUTE_SEED = 17
MIXTURE_SEED = 5
HNSW_M, EF_CONSTRUCTION = 16, 200
EF_START = 16  # efSearch doubles from here up to --max-ef, refined between the last two
DATASETS = ("clustered", "fashion-mnist")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200_000,
                   help="clustered rows; also caps the Fashion-MNIST sample (full run: 1000000)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--spark-queries", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shares", type=_floats, default=(0.001, 0.01, 0.1, 0.5),
                   help="shares passed by the predicates num < share")
    p.add_argument("--tag-shares", type=_floats, default=(0.001, 0.01, 0.1, 0.5),
                   help="target shares of the predicates tag IN (...) ('' for none)")
    p.add_argument("--datasets", type=lambda s: tuple(x for x in s.split(",") if x),
                   default=DATASETS, help="comma separated: " + ",".join(DATASETS))
    p.add_argument("--post-filter-cap", type=int, default=1000,
                   help="largest k' of the post-filtered search")
    p.add_argument("--max-ef", type=int, default=32_768,
                   help="largest efSearch of the faiss HNSW sweep")
    p.add_argument("--skip-sparkann", action="store_true",
                   help="skip sparkann's filtered search (a sparkann without setFilter); "
                        "the other methods, the post-filtered search included, still run")
    p.add_argument("--out", default="notebooks/benchmarks/filtered.json")
    args = p.parse_args(argv)
    unknown = set(args.datasets) - set(DATASETS)
    if unknown:
        p.error(f"unknown datasets {sorted(unknown)}; known: {', '.join(DATASETS)}")
    if not args.skip_sparkann and not hasattr(ANNIndexModel, "setFilter"):
        p.error("this sparkann has no ANNIndexModel.setFilter; pass --skip-sparkann")
    return args


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def session():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{THREADS}]")
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "4g").config("spark.sql.shuffle.partitions", "4")
             .appName("sparkann-filtered-benchmark").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# --------------------------------------------------------------------------
# Data: vectors, attributes, predicates
# --------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    base: np.ndarray  # (n, dim) float32; item ids are the row positions
    queries: np.ndarray
    metric: str  # sparkann's metric: "l2" or "cosine" (the vectors are then unit length)
    description: str

    @property
    def exact_metric(self) -> str:
        """bench.ground_truth's metric: inner product of the unit vectors for cosine."""
        return "ip" if self.metric == "cosine" else "l2"


@dataclass
class Predicate:
    kind: str  # "num" or "tag"
    target: float  # the share asked for
    sql: str  # over the item columns
    mask: np.ndarray  # (n,) bool: the items passing it
    label: str

    @property
    def share(self) -> float:
        return float(self.mask.mean())


def load_datasets(args) -> list[Dataset]:
    out = []
    if "clustered" in args.datasets:
        out.append(clustered_data(args))
    if "fashion-mnist" in args.datasets:
        data = fashion_data(args)
        if data is not None:
            out.append(data)
    return out


def clustered_data(args) -> Dataset:
    base = datasets.clustered(args.items, args.dim, seed=MIXTURE_SEED)
    queries = datasets.clustered(args.queries, args.dim, seed=MIXTURE_SEED, sample_seed=1)
    return Dataset(f"clustered-{args.items}x{args.dim}", base, queries, "l2",
                   f"sparkann.datasets.clustered({args.items}, {args.dim}, "
                   f"seed={MIXTURE_SEED}); queries sample_seed=1")


def fashion_data(args) -> Dataset | None:
    root = shared_data.default_data_root()
    if root is None or not os.path.isdir(os.path.join(root, "fashion-mnist")):
        print("fashion-mnist: not found in the shared data folder (../shared/data or "
              "$SPARKANN_DATA); skipped")
        return None
    data = shared_data.load_dataset("fashion-mnist", root)
    rng = np.random.default_rng(MIXTURE_SEED)
    base = _sample(data["base"], args.items, rng)
    queries = _sample(data["queries"], args.queries, rng)
    return Dataset(f"fashion-mnist-{len(base)}", _unit(base), _unit(queries), "cosine",
                   f"Fashion-MNIST: {len(base):,} of the 60,000 train images (seeded sample), "
                   f"{len(queries):,} test images as queries; cosine")


def _sample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n >= len(rows):
        return rows
    return rows[np.sort(rng.choice(len(rows), n, replace=False))]


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def attributes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(tag int32, num float64) of ``n`` items: Zipf-like tags, uniform nums."""
    rng = np.random.default_rng([ATTRIBUTE_SEED, n])
    weights = 1.0 / np.arange(1, TAGS + 1) ** ZIPF_EXPONENT
    by_rank = rng.choice(TAGS, size=n, p=weights / weights.sum())
    tag = rng.permutation(TAGS)[by_rank].astype(np.int32)  # tag ids unrelated to frequency
    return tag, rng.random(n)


def num_predicate(num: np.ndarray, share: float) -> Predicate:
    sql = f"num < {share!r}"
    return Predicate("num", share, sql, num < share, sql)


def tag_predicate(tag: np.ndarray, share: float) -> Predicate:
    """``tag IN (...)``: tags, most frequent first, added while their summed count stays
    within ``share`` of the items (the tag nearest the target when none fits)."""
    counts = np.bincount(tag, minlength=TAGS)
    target = share * len(tag)
    chosen, total = [], 0
    for t in np.argsort(-counts, kind="stable"):
        if counts[t] and total + counts[t] <= target:
            chosen.append(int(t))
            total += counts[t]
    if not chosen:
        present = np.flatnonzero(counts)
        chosen = [int(present[np.argmin(np.abs(counts[present] - target))])]
    chosen.sort()
    sql = f"tag IN ({', '.join(map(str, chosen))})"
    label = f"tag IN ({len(chosen)} tag{'s' if len(chosen) > 1 else ''})"
    return Predicate("tag", share, sql, np.isin(tag, chosen), label)


def predicates(tag: np.ndarray, num: np.ndarray, args) -> list[Predicate]:
    """The predicates of the sweep, the ones passing fewer than K items left out."""
    out = [num_predicate(num, s) for s in args.shares]
    out += [tag_predicate(tag, s) for s in args.tag_shares]
    kept = [p for p in out if p.mask.sum() >= K]
    for p in out:
        if p.mask.sum() < K:
            print(f"{p.sql}: only {p.mask.sum()} items pass, fewer than k={K}; left out")
    return sorted(kept, key=lambda p: (p.target, p.kind))


def filtered_truth(data: Dataset, mask: np.ndarray) -> np.ndarray:
    """Exact filtered neighbours (nq, K): brute force over the passing items only."""
    rows = np.flatnonzero(mask)
    local = bench.ground_truth(data.base[rows], data.queries, K, THREADS, data.exact_metric)
    return rows[local]


# --------------------------------------------------------------------------
# Spark frames, sparkann
# --------------------------------------------------------------------------


def _vectors(vectors: np.ndarray) -> pa.ListArray:
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, n * dim + 1, dim), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def frames(spark, data: Dataset, tag: np.ndarray, num: np.ndarray):
    """Cached (items: id, vector, tag, num; queries: qid, qvec)."""
    items = spark.createDataFrame(pa.table({
        "id": pa.array(np.arange(len(data.base))), "vector": _vectors(data.base),
        "tag": pa.array(tag), "num": pa.array(num)})).cache()
    queries = spark.createDataFrame(pa.table({
        "qid": pa.array(np.arange(len(data.queries))),
        "qvec": _vectors(data.queries)})).cache()
    items.count(), queries.count()
    return items, queries


def fit(items, data: Dataset, work: str) -> tuple[ANNIndexModel, float]:
    started = time.perf_counter()
    model = ANNIndex(k=K, metric=data.metric, itemCols=["tag", "num"], seed=7,
                     indexPath=os.path.join(work, "index")).fit(items)
    model.setVectorCol("qvec")
    return model, time.perf_counter() - started


def neighbour_ids(table: pa.Table, n: int, width: int) -> np.ndarray:
    """(n, width) neighbour ids by qid, best first, -1 past a query's last neighbour."""
    lists = table.column("neighbors").combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    ids = lists.flatten().field("id").to_numpy(zero_copy_only=False)
    rows = np.repeat(table.column("qid").to_numpy(), lengths)
    slots = np.arange(len(ids)) - np.repeat(offsets[:-1], lengths)
    found = np.full((n, width), -1, np.int64)
    found[rows, slots] = ids
    return found


def search(model: ANNIndexModel, queries) -> pa.Table:
    return model.transform(queries).select("qid", model.getNeighborsCol()).toArrow()


def sparkann_filtered(model: ANNIndexModel, queries, pred: Predicate, truth: np.ndarray,
                      repeats: int) -> dict:
    """Filtered search with both strategies: recall and queries/s of each."""
    n = len(truth)
    out = {}
    model.setFilter(pred.sql)
    try:
        for strategy in ("local", "partition"):
            model.setSearchStrategy(strategy)
            times, table = bench.timed_repeats(lambda: search(model, queries), repeats)
            out[strategy] = {"recall": bench.recall(neighbour_ids(table, n, K), truth, K),
                             "seconds": bench.median(times), "qps": n / bench.median(times),
                             "times": times}
    finally:
        model.setFilter(None)
        model.setSearchStrategy("auto")
    return out


def post_filtered(model: ANNIndexModel, queries, pred: Predicate, truth: np.ndarray,
                  repeats: int, cap: int) -> dict:
    """Search k' neighbours without the filter, drop the failing ones, keep K."""
    n = len(truth)
    wide = int(min(len(pred.mask), math.ceil(K / pred.share), cap))

    def run():
        found = neighbour_ids(search(model, queries), n, wide)
        keep = (found >= 0) & pred.mask[np.maximum(found, 0)]
        first = np.argsort(~keep, axis=1, kind="stable")[:, :K]
        return np.where(np.take_along_axis(keep, first, 1),
                        np.take_along_axis(found, first, 1), -1)

    model.setK(wide)
    try:
        times, found = bench.timed_repeats(run, repeats)
    finally:
        model.setK(K)
    return {"k_prime": wide, "recall": bench.recall(found, truth, K),
            "seconds": bench.median(times), "qps": n / bench.median(times), "times": times}


# --------------------------------------------------------------------------
# Spark's nearestByJoin over the passing items
# --------------------------------------------------------------------------


def check_predicate(items, pred: Predicate) -> None:
    """Spark and numpy must pass the same items."""
    passing = items.where(pred.sql).count()
    if passing != pred.mask.sum():
        raise AssertionError(f"{pred.sql}: Spark passes {passing} items, numpy "
                             f"{pred.mask.sum()}")


def nearest_by_join(items, queries, data: Dataset, pred: Predicate, truth: np.ndarray,
                    args) -> dict:
    """``nearestByJoin(..., "exact")`` of ``--spark-queries`` queries with the items
    passing the filter: seconds per query and recall."""
    from pyspark.sql import functions as F

    n = min(args.spark_queries, len(truth))
    q, v = F.col("qvec"), F.col("vector")
    if data.metric == "cosine":
        ranking, direction = F.vector_cosine_similarity(q, v), "similarity"
        distance = F.lit(1.0) - F.vector_cosine_similarity(q, v)
    else:
        ranking, direction = F.vector_l2_distance(q, v), "distance"
        distance = F.vector_l2_distance(q, v)
    sample = queries.where(F.col("qid") < n)
    passing = items.where(pred.sql)

    def run():
        return sample.nearestByJoin(passing, ranking, K, "exact", direction).select(
            "qid", "id", distance.alias("distance")).toArrow()

    times, table = bench.timed_repeats(run, args.repeats - 1)
    seconds = bench.median(times)
    return {"queries": n, "seconds": seconds, "seconds_per_query": seconds / n,
            "recall": bench.recall(join_ids(table, n), truth[:n], K), "times": times}


def join_ids(table: pa.Table, n: int) -> np.ndarray:
    """(n, K) ids of a join's (qid, id, distance) rows, nearest first."""
    qid = table.column("qid").to_numpy()
    ids = table.column("id").to_numpy()
    order = np.lexsort((table.column("distance").to_numpy(), qid))
    qid, ids = qid[order], ids[order]
    slots = np.arange(len(qid)) - np.searchsorted(qid, qid)
    found = np.full((n, K), -1, np.int64)
    keep = slots < K
    found[qid[keep], slots[keep]] = ids[keep]
    return found


# --------------------------------------------------------------------------
# faiss with an IDSelector, one process
# --------------------------------------------------------------------------


def faiss_indexes(data: Dataset) -> tuple[object, object, float]:
    """(HNSW index, flat index, HNSW build seconds) over all items."""
    import faiss

    faiss.omp_set_num_threads(THREADS)
    metric = faiss.METRIC_INNER_PRODUCT if data.metric == "cosine" else faiss.METRIC_L2
    dim = data.base.shape[1]
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
    hnsw.hnsw.efConstruction = EF_CONSTRUCTION
    hnsw.add(data.base)
    build = time.perf_counter() - started
    flat = faiss.IndexFlat(dim, metric)
    flat.add(data.base)
    return hnsw, flat, build


def faiss_point(index, params, data: Dataset, truth: np.ndarray, repeats: int) -> dict:
    times, (_, labels) = bench.timed_repeats(
        lambda: index.search(data.queries, K, params=params), repeats)
    seconds = bench.median(times)
    return {"recall": bench.recall(labels, truth, K), "seconds": seconds,
            "qps": len(data.queries) / seconds}


def faiss_filtered(hnsw, flat, data: Dataset, pred: Predicate, truth: np.ndarray,
                   targets: list[float], args) -> dict:
    """The exact flat search and an efSearch sweep of HNSW, both with the predicate's
    bitmap as IDSelector."""
    import faiss

    bitmap = np.packbits(pred.mask, bitorder="little")  # kept alive while searched
    selector = faiss.IDSelectorBitmap(len(pred.mask), faiss.swig_ptr(bitmap))
    exact = faiss_point(flat, faiss.SearchParameters(sel=selector), data, truth, args.repeats)
    points: dict[int, dict] = {}

    def at(ef: int) -> dict:
        if ef not in points:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            points[ef] = {"efSearch": ef,
                          **faiss_point(hnsw, params, data, truth, args.repeats)}
        return points[ef]

    grid = sorted({min(EF_START * 2**i, len(pred.mask), args.max_ef)
                   for i in range(int(math.log2(max(args.max_ef, EF_START) / EF_START)) + 1)})
    for target in sorted(targets):
        hnsw_sweep(at, grid, target)
    return {"flat": exact, "hnsw_sweep": [points[ef] for ef in sorted(points)]}


def hnsw_sweep(at, grid: list[int], target: float) -> None:
    """Go up the doubling ``grid`` of efSearch until ``at(ef)`` reaches ``target``, then try
    three steps of 2 ** (1/4) between the last two: the fastest ef reaching it, within 19 %."""
    below = None
    for ef in grid:
        if at(ef)["recall"] >= target:
            break
        below = ef
    else:
        return
    for step in (1, 2, 3) if below else ():
        middle = round(below * 2 ** (step / 4))
        if middle < ef and at(middle)["recall"] >= target:
            return


def at_recall(sweep: list[dict], target: float) -> dict:
    """The fastest sweep point reaching ``target`` (``reached``: whether one did)."""
    best = bench.fastest_at_recall(sweep, target)
    return {**best, "target": target, "reached": best["recall"] >= target}


# --------------------------------------------------------------------------
# One dataset
# --------------------------------------------------------------------------


def run_dataset(spark, data: Dataset, args, work: str) -> dict:
    tag, num = attributes(len(data.base))
    preds = predicates(tag, num, args)
    items, queries = frames(spark, data, tag, num)
    hnsw, flat, faiss_build = faiss_indexes(data)
    model, fit_seconds = fit(items, data, work)
    print(f"{data.name}: sparkann fit {fit_seconds:.1f} s, faiss HNSW build "
          f"{faiss_build:.1f} s", flush=True)
    cases = [run_predicate(data, pred, items, queries, model, hnsw, flat, args)
             for pred in preds]
    items.unpersist(), queries.unpersist()
    return {"description": data.description, "items": len(data.base),
            "dim": int(data.base.shape[1]), "metric": data.metric, "queries": len(data.queries),
            "tags": TAGS, "zipf_exponent": ZIPF_EXPONENT,
            "sparkann_fit_seconds": round(fit_seconds, 2),
            "sparkann_calibration": model.summary()["calibration"],
            "sparkann_search_settings": model.searchSettings(),
            "faiss_hnsw_build_seconds": round(faiss_build, 2), "cases": cases}


def run_predicate(data, pred, items, queries, model, hnsw, flat, args) -> dict:
    check_predicate(items, pred)
    truth = filtered_truth(data, pred.mask)
    case = {"predicate": pred.sql, "label": pred.label, "kind": pred.kind,
            "target_share": pred.target, "share": pred.share,
            "passing_items": int(pred.mask.sum())}
    if not args.skip_sparkann:
        case["sparkann"] = sparkann_filtered(model, queries, pred, truth, args.repeats)
    targets = {s: m["recall"] for s, m in case.get("sparkann", {}).items()} or {
        "no_sparkann": bench.TARGET_RECALL}
    case["faiss"] = faiss_filtered(hnsw, flat, data, pred, truth, list(targets.values()), args)
    sweep = case["faiss"]["hnsw_sweep"]
    case["faiss"]["at_recall"] = {s: at_recall(sweep, r) for s, r in targets.items()}
    case["nearest_by_join"] = nearest_by_join(items, queries, data, pred, truth, args)
    case["post_filter"] = post_filtered(model, queries, pred, truth, args.repeats,
                                        args.post_filter_cap)
    case["ratios"] = ratios(case)
    print(f"  {pred.label}: share {pred.share:.4%}, {summary_line(case)}", flush=True)
    return case


def ratios(case: dict) -> dict:
    """sparkann's queries/s over faiss HNSW's at equal recall and over nearestByJoin's."""
    join_qps = 1.0 / case["nearest_by_join"]["seconds_per_query"]
    out = {}
    for strategy, m in case.get("sparkann", {}).items():
        hnsw_point = case["faiss"]["at_recall"][strategy]
        out[strategy] = {"vs_faiss_hnsw": m["qps"] / hnsw_point["qps"],
                         "vs_faiss_flat": m["qps"] / case["faiss"]["flat"]["qps"],
                         "vs_nearest_by_join": m["qps"] / join_qps}
    return out


def summary_line(case: dict) -> str:
    s = case.get("sparkann", {}).get("local")
    head = f"sparkann recall {s['recall']:.3f} at {s['qps']:,.0f} q/s; " if s else ""
    f = next(iter(case["faiss"]["at_recall"].values()))
    p = case["post_filter"]
    return (head + f"faiss HNSW {f['qps']:,.0f} q/s at {f['recall']:.3f} (ef {f['efSearch']}); "
            f"nearestByJoin {case['nearest_by_join']['seconds_per_query']:.3f} s/query; "
            f"post-filter k'={p['k_prime']} recall {p['recall']:.3f} at {p['qps']:,.0f} q/s")


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(value, digits=0, suffix="") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


COLUMNS = ("predicate", "share", "sparkann recall local / partition",
           "sparkann q/s local / partition", "faiss HNSW q/s at equal recall (ef, recall)",
           "sparkann / faiss HNSW, / faiss flat", "faiss flat q/s", "nearestByJoin s/query",
           "sparkann / nearestByJoin", "post-filter k'", "post-filter recall / q/s")


def markdown(name: str, result: dict) -> list[str]:
    out = [f"### {name}: {result['items']:,} x {result['dim']} ({result['metric']}), "
           f"{result['queries']:,} queries, recall@{K}", "",
           "| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    out += ["| " + " | ".join(row_cells(case)) + " |" for case in result["cases"]]
    target = ("sparkann local's recall" if any(c.get("sparkann") for c in result["cases"])
              else f"recall {bench.TARGET_RECALL} (sparkann skipped)")
    return out + ["", f"faiss HNSW at equal recall: the fastest efSearch reaching {target}; "
                  "ratios are sparkann's (local) queries/s over the other method's.", ""]


def row_cells(case: dict) -> list[str]:
    s = case.get("sparkann", {})
    local, part = s.get("local", {}), s.get("partition", {})
    hnsw = case["faiss"]["at_recall"].get("local") or next(
        iter(case["faiss"]["at_recall"].values()))
    reached = "" if hnsw["reached"] else ", not reached"
    ratio = case["ratios"].get("local", {})
    post = case["post_filter"]
    return [case["label"], f"{case['share']:.2%}",
            f"{_fmt(local.get('recall'), 3)} / {_fmt(part.get('recall'), 3)}",
            f"{_fmt(local.get('qps'))} / {_fmt(part.get('qps'))}",
            f"{hnsw['qps']:,.0f} (ef {hnsw['efSearch']}, {hnsw['recall']:.3f}{reached})",
            f"{_fmt(ratio.get('vs_faiss_hnsw'), 2, 'x')} / "
            f"{_fmt(ratio.get('vs_faiss_flat'), 2, 'x')}",
            f"{case['faiss']['flat']['qps']:,.0f}",
            f"{case['nearest_by_join']['seconds_per_query']:.3f}",
            _fmt(ratio.get("vs_nearest_by_join"), 0, "x"), str(post["k_prime"]),
            f"{post['recall']:.3f} / {post['qps']:,.0f}"]


def main(argv=None) -> int:
    args = parse_args(argv)
    result = {"machine": bench.machine_info(), "k": K, "threads": THREADS,
              "args": {k: v for k, v in vars(args).items()}, "datasets": {}}
    spark = session()
    with tempfile.TemporaryDirectory(prefix="sparkann-filtered-") as work:
        for data in load_datasets(args):
            result["datasets"][data.name] = run_dataset(spark, data, args,
                                                        os.path.join(work, data.name))
    for name, dataset in result["datasets"].items():
        print("\n".join(markdown(name, dataset)))
    if args.out:
        bench.write_json(args.out, result)
        print(f"wrote {args.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
