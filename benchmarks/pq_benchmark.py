"""Product quantization: sparkann's PQ index against single-process faiss, and
per-partition codebooks against one single-process PQ.

    python benchmarks/pq_benchmark.py [--data ../shared/data] [--out notebooks/benchmarks]
        [--datasets clustered-1000000,fashion-mnist] [--quick]

1. sparkann ``indexType="pq"`` (pqBits 4 and 8; fit with ``rerankK`` > 0 so the exact
   vectors are stored; searched with ``setRerankK(0)`` and with re-ranking) against
   faiss ``IndexIVFPQFastScan`` (4 bits) and ``IndexIVFPQ`` (8 bits), wrapped in
   ``IndexRefineFlat`` for re-ranking, with the same nlist (= sparkann numPartitions),
   M (= pqSubvectors), nbits and cores (``faiss.omp_set_num_threads``). A sweep of
   numProbes / nprobe x re-rank depth on the recall sample, then at equal recall the
   fastest setting of each side on the full query set; bytes per vector in memory
   and on disk.
2. Fashion-MNIST only: for pqSubvectors in {8, 16, 28, 56, 112} x pqBits in {4, 8},
   the reconstruction RMSE of sparkann's per-partition residual codebooks (trained in
   parallel inside the build tasks) and of one PQ trained in a single process on all
   vectors (``sparkann.index.pq.train_codebook`` + a faiss ``ProductQuantizer``).

Writes pq_results.json and PQ_RESULTS.md to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as papq

from sparkann import ANNIndex, datasets
from sparkann.index import pq
from sparkann.index.pq import PQKnobs

# bench, benchmark and shared_data sit next to this script and are not installed
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import shared_data  # noqa: E402
from benchmark import (  # noqa: E402
    make_spark,
    neighbor_ids,
    write_parquet,
)

log = logging.getLogger("sparkann.pq_benchmark")

K = 10
SEED = 42
RMSE_CONFIGS = [(m, bits) for m in (8, 16, 28, 56, 112) for bits in (4, 8)]
# per dataset: numPartitions = nlist, and pqSubvectors = M per pqBits (the same code size,
# dim / 4 bytes, at both widths: M = dim / 2 at 4 bits, dim / 4 at 8 bits)
LAYOUT = {"clustered-1000000": (100, {4: 64, 8: 32}), "fashion-mnist": (16, {4: 112, 8: 56})}


# --------------------------------------------------------------------------
# Options and data
# --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=shared_data.default_data_root())
    p.add_argument("--out", default="notebooks/benchmarks")
    p.add_argument("--datasets", default=None,
                   help="clustered-<rows> and/or fashion-mnist, comma separated "
                        "(default clustered-1000000,fashion-mnist; quick clustered-20000)")
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None, help="default 3; quick 1")
    p.add_argument("--queries", type=int, default=None,
                   help="clustered full query set (default 100000; quick 2000)")
    p.add_argument("--full-queries", type=int, default=None,
                   help="queries of the timed full runs: a smaller query set (Fashion-MNIST's "
                        "10,000) is repeated up to this many (default 100000; quick 2000)")
    p.add_argument("--recall-queries", type=int, default=None,
                   help="queries of the sweeps, with exact truth (default 10000; quick 1000)")
    p.add_argument("--partitions", type=int, default=0,
                   help="numPartitions = nlist (default per dataset: clustered-1000000 100, "
                        "fashion-mnist 16, other clustered sizes rows / 10000)")
    p.add_argument("--m", type=int, default=0,
                   help="pqSubvectors = M (default dim / 2 at 4 bits, dim / 4 at 8 bits: "
                        "clustered 64 / 32, fashion-mnist 112 / 56)")
    p.add_argument("--bits", default="4,8")
    p.add_argument("--rerank-fit", type=int, default=200,
                   help="rerankK at fit (> 0 stores the exact vectors; default 200)")
    p.add_argument("--probes", default="1,2,4,8,16,32")
    p.add_argument("--reranks", default="0,20,50,100,200",
                   help="rerankK of the sparkann sweep; faiss uses k_factor = rerankK / 10")
    p.add_argument("--rmse-configs", default=None,
                   help="m x bits of the RMSE table, e.g. 16x8,8x4 (default: all 10; "
                        "quick 8x4,16x8; 'none' = skip)")
    p.add_argument("--work-dir", default=None)
    args = p.parse_args(argv)
    q = args.quick
    names = args.datasets or ("clustered-20000" if q else "clustered-1000000,fashion-mnist")
    args.datasets = [n for n in names.split(",") if n]
    args.repeats = args.repeats or (1 if q else 3)
    args.queries = args.queries or (2000 if q else 100_000)
    args.recall_queries = args.recall_queries or (1000 if q else 10_000)
    args.full_queries = args.full_queries or (2000 if q else 100_000)
    args.bits = [int(b) for b in args.bits.split(",")]
    args.probes = [int(x) for x in args.probes.split(",")]
    args.reranks = [int(x) for x in args.reranks.split(",")]
    rmse = args.rmse_configs or ("8x4,16x8" if q else "")
    if rmse == "none":
        args.rmse = []
    elif rmse:
        args.rmse = [tuple(int(x) for x in c.split("x")) for c in rmse.split(",")]
    else:
        args.rmse = RMSE_CONFIGS
    return args


class Data:
    """Base and query vectors, Parquet copies, exact truth of the recall sample."""

    def __init__(self, name, args, work):
        self.name = name
        if name.startswith("clustered-"):
            rows = int(name.split("-")[1])
            self.base = datasets.clustered(rows, 128, seed=1)
            self.queries = datasets.clustered(args.queries, 128, seed=1, sample_seed=2)
            self.description = (f"`sparkann.datasets.clustered({rows}, 128, seed=1)`, "
                                f"{args.queries:,} queries (sample_seed=2)")
        else:
            data = shared_data.load_dataset(name, args.data)
            self.base, self.queries = data["base"], data["queries"]
            self.description = (f"{name}: {len(self.base):,} × {self.base.shape[1]} indexed, "
                                f"{len(self.queries):,} test queries")
        self.recall_n = min(args.recall_queries, len(self.queries))
        if len(self.queries) < args.full_queries:  # timed runs long enough to amortise start-up
            repeats = -(-args.full_queries // len(self.queries))
            self.description += (f", repeated {repeats}× to {args.full_queries:,} queries for "
                                 "the timed full runs")
            self.queries = np.tile(self.queries, (repeats, 1))[: args.full_queries]
        self.full_n = len(self.queries)
        self.work = os.path.join(work, name)
        self.base_path = write_parquet(self.base, os.path.join(self.work, "base"))
        self.recall_path = write_parquet(self.queries[: self.recall_n],
                                         os.path.join(self.work, "q-recall"), files=args.cores,
                                         row_group_rows=10_000)
        self.full_path = (self.recall_path if self.full_n == self.recall_n else write_parquet(
            self.queries, os.path.join(self.work, "q-full"), files=args.cores,
            row_group_rows=10_000))
        self.truth = bench.ground_truth(self.base, self.queries[: self.recall_n], K, args.cores)

    def layout(self, args, bits: int) -> tuple[int, int]:
        dim = self.base.shape[1]
        nlist, ms = LAYOUT.get(self.name, (max(1, len(self.base) // 10_000),
                                           {4: dim // 2, 8: dim // 4}))
        return args.partitions or nlist, args.m or ms[bits]


# --------------------------------------------------------------------------
# sparkann
# --------------------------------------------------------------------------


def disk_bytes(path: str) -> dict:
    """Bytes of an index's partition files: all, and without the codebook, exact-vector
    and calibration columns (codes + ids + file overhead)."""
    files = glob.glob(os.path.join(path, "data", "*", "partition_id=*", "*.parquet"))
    total = sum(os.path.getsize(f) for f in files)
    columns = {"codebook": 0, "vectors": 0, "calibration": 0}
    for f in files:
        meta = papq.ParquetFile(f).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        for name in columns:
            if name in names:
                col = names.index(name)
                columns[name] += sum(meta.row_group(g).column(col).total_compressed_size
                                     for g in range(meta.num_row_groups))
    return {"total": total, **columns,
            "codes_ids": total - sum(columns.values()),
            "with_vectors": total - columns["codebook"] - columns["calibration"]}


def loaded_bytes(spark, model) -> dict:
    """Bytes per vector one process holds with every partition loaded as a search task
    loads it (codes only, then with the exact vectors): RSS growth of this process, after
    a warm-up load and search so that faiss's and OpenMP's one-time allocations are not
    counted, and the size of the loaded arrays (``memory_bytes`` + ids)."""
    import ctypes
    import gc

    import psutil

    from sparkann.build import with_checked_meta
    from sparkann.loader import LoadedIndex, fresh_partition

    index = LoadedIndex.create(model.manifest, with_checked_meta(spark, model.manifest))
    pids = [p for p, f in enumerate(model.manifest.partitions.files) if f]
    n = model.manifest.num_vectors
    proc = psutil.Process()

    def rss():
        gc.collect()
        pa.default_memory_pool().release_unused()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        return proc.memory_info().rss

    warm = fresh_partition(index, pids[0], True)
    probe = np.zeros((64, model.manifest.dim), np.float32)
    warm.index.search(probe, K, PQKnobs(rerank_k=2 * K))
    del warm
    start = rss()
    codes = [fresh_partition(index, p, False) for p in pids]
    after_codes = rss()
    estimate = sum(part.index.memory_bytes() + part.ids.nbytes for part in codes)
    del codes
    middle = rss()
    exact = [fresh_partition(index, p, True) for p in pids]
    after_exact = rss()
    with_vectors = sum(part.index.memory_bytes() + part.ids.nbytes for part in exact)
    del exact
    return {"codes_bytes_per_vector": (after_codes - start) / n,
            "with_vectors_bytes_per_vector": (after_exact - middle) / n,
            "arrays_codes_bytes_per_vector": estimate / n,
            "arrays_with_vectors_bytes_per_vector": with_vectors / n}


def search(spark, model, path: str, probes: int, rerank: int):
    m = model.copy().setSearchStrategy("local").setNumProbes(probes).setRerankK(rerank)
    return m.transform(spark.read.parquet(path)).select("id", "neighbors").toArrow()


def run_sparkann(spark, data: Data, args, bits: int, nlist: int, m: int) -> dict:
    path = os.path.join(data.work, f"index-pq-{m}x{bits}")
    shutil.rmtree(path, ignore_errors=True)
    base = spark.read.parquet(data.base_path)
    with bench.measure() as build:
        model = ANNIndex(indexType="pq", numPartitions=nlist, pqSubvectors=m, pqBits=bits,
                         rerankK=args.rerank_fit, k=K, seed=SEED, indexPath=path).fit(base)
    summary = model.summary()
    n = summary["numVectors"]
    disk = disk_bytes(path)
    memory = {"one_process": loaded_bytes(spark, model),
              "estimate_bytes_per_vector": summary["memoryBytesPerWorker"] / n}
    points = []
    probes = sorted({min(p, nlist) for p in args.probes})
    for r in sorted({min(r, 1) * 2 * K for r in args.reranks}):
        search(spark, model, data.recall_path, probes[-1], r)  # warm-up: every partition cached
    for p in probes:
        for r in args.reranks:
            times, table = bench.timed_repeats(
                lambda: search(spark, model, data.recall_path, p, r), 1)
            points.append({"numProbes": p, "rerankK": r, "seconds": times,
                           "qps": data.recall_n / times[0],
                           "recall": bench.recall(neighbor_ids(table, data.recall_n),
                                                  data.truth, K)})
            log.info("%s sparkann pq %dx%d probes=%d rerank=%d recall=%.4f qps=%.0f", data.name,
                     m, bits, p, r, points[-1]["recall"], points[-1]["qps"])
    defaults = model.searchSettings()
    table = model.copy().setSearchStrategy("local").transform(
        spark.read.parquet(data.recall_path)).select("id", "neighbors").toArrow()
    default_point = {"numProbes": defaults["numProbes"], "rerankK": defaults["rerankK"],
                     "recall": bench.recall(neighbor_ids(table, data.recall_n), data.truth, K)}

    def full(point):
        times, table = bench.timed_repeats(
            lambda: search(spark, model, data.full_path, point["numProbes"], point["rerankK"]),
            args.repeats)
        mm = min(data.full_n, data.recall_n)
        return {"numProbes": point["numProbes"], "rerankK": point["rerankK"],
                "queries": data.full_n, "seconds": times,
                "qps": data.full_n / bench.median(times),
                "recall": bench.recall(neighbor_ids(table, data.full_n)[:mm], data.truth[:mm], K)}

    return {"build_seconds": build.seconds, "build_memory": build.memory,
            "summary": json.loads(json.dumps(summary, default=str)), "disk": disk,
            "disk_bytes_per_vector": {k: v / n for k, v in disk.items()}, "memory": memory,
            "sweep": points, "defaults": default_point, "path": path, "full": full,
            "model": model}


# --------------------------------------------------------------------------
# faiss
# --------------------------------------------------------------------------


def run_faiss(data: Data, args, bits: int, nlist: int, m: int) -> dict:
    faiss.omp_set_num_threads(args.cores)
    dim = data.base.shape[1]
    train_n = min(len(data.base), max(100_000, 64 * nlist))
    rng = np.random.default_rng(SEED)
    train = data.base[np.sort(rng.choice(len(data.base), train_n, replace=False))]
    kind = "IndexIVFPQFastScan" if bits == 4 else "IndexIVFPQ"
    with bench.measure() as build:
        quantizer = faiss.IndexFlatL2(dim)
        if bits == 4:
            index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, m, 4)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8)
        index.cp.seed = SEED
        index.train(train)
        refine = faiss.IndexRefineFlat(index)  # keeps the exact vectors beside the codes
        refine.add(data.base)  # encodes into the IVF index and copies the vectors
    codes_bytes = int(index.code_size)
    serialized = faiss.serialize_index(index).size
    serialized_refine = faiss.serialize_index(refine).size
    n = index.ntotal
    memory = {
        "code_size": int(index.code_size), "code_plus_id_bytes": int(index.code_size) + 8,
        "serialized_bytes_per_vector": serialized / n,
        "serialized_refine_bytes_per_vector": serialized_refine / n,
    }
    sample = data.queries[: data.recall_n]
    points = []
    probes = sorted({min(p, nlist) for p in args.probes})
    for p in probes:
        index.nprobe = p
        for r in args.reranks:
            target = index if r == 0 else refine
            if r:
                refine.k_factor = r / K
            times, (_, labels) = bench.timed_repeats(lambda: target.search(sample, K), 1)
            points.append({"nprobe": p, "rerankK": r, "seconds": times,
                           "qps": len(sample) / times[0],
                           "recall": bench.recall(labels, data.truth, K)})
    queries = data.queries

    def full(point):
        index.nprobe = point["nprobe"]
        target = index if point["rerankK"] == 0 else refine
        if point["rerankK"]:
            refine.k_factor = point["rerankK"] / K
        times, (_, labels) = bench.timed_repeats(lambda: target.search(queries, K), args.repeats)
        mm = min(len(queries), data.recall_n)
        return {"nprobe": point["nprobe"], "rerankK": point["rerankK"],
                "queries": len(queries), "seconds": times,
                "qps": len(queries) / bench.median(times),
                "recall": bench.recall(labels[:mm], data.truth[:mm], K)}

    return {"kind": kind, "build_seconds": build.seconds, "train_rows": train_n,
            "memory": memory, "codes_bytes": codes_bytes, "sweep": points, "full": full}


# --------------------------------------------------------------------------
# Equal recall
# --------------------------------------------------------------------------


def fastest(points: list[dict], target: float, probe_key: str, full) -> dict:
    """The fastest on the full query set of the sweep points reaching ``target`` with
    the cheapest re-rank depth of their probe count: the two with the fewest probes
    and the fastest on the sweep (whose short timings carry a fixed start-up cost, so
    the choice is made on the full set)."""
    frontier: dict[int, dict] = {}
    for p in sorted(points, key=lambda p: p["rerankK"]):
        if p["recall"] >= target:
            frontier.setdefault(p[probe_key], p)
    cheapest = [frontier[p] for p in sorted(frontier)[:2]]
    chosen = cheapest + [p for p in sorted(frontier.values(), key=lambda p: -p["qps"])[:1]
                         if p not in cheapest]
    return max((full(p) for p in chosen), key=lambda r: r["qps"])


def equal_recall(s: dict, f: dict) -> list[dict]:
    """For codes only and with re-ranking: the fastest point of each side reaching the
    same recall (0.95 with re-ranking; without, the lower of the two sides' best
    recall), both run on the full query set."""
    out = []
    for rerank in (False, True):
        sp = [p for p in s["sweep"] if (p["rerankK"] > 0) == rerank]
        fp = [p for p in f["sweep"] if (p["rerankK"] > 0) == rerank]
        if not sp or not fp:
            continue
        reachable = min(max(p["recall"] for p in sp), max(p["recall"] for p in fp))
        target = 0.95 if rerank and reachable >= 0.95 else np.floor(reachable * 100) / 100
        s_full = fastest(sp, target, "numProbes", s["full"])
        f_full = fastest(fp, target, "nprobe", f["full"])
        out.append({"rerank": rerank, "target_recall": float(target),
                    "sparkann": s_full, "faiss": f_full,
                    "ratio": s_full["qps"] / f_full["qps"],
                    "best_recall": {"sparkann": max(p["recall"] for p in sp),
                                    "faiss": max(p["recall"] for p in fp)}})
        log.info("equal recall %s: %s", target, out[-1])
    return out


# --------------------------------------------------------------------------
# RMSE: per-partition codebooks vs one single-process PQ (Fashion-MNIST)
# --------------------------------------------------------------------------


def single_process_rmse(base: np.ndarray, m: int, bits: int) -> tuple[float, float]:
    """(RMSE, training seconds) of one PQ trained on all vectors in one process."""
    started = time.perf_counter()
    codewords = pq.train_codebook(base, m, bits, seed=0)
    seconds = time.perf_counter() - started
    quantizer = faiss.ProductQuantizer(base.shape[1], m, bits)
    faiss.copy_array_to_vector(codewords.ravel(), quantizer.centroids)
    decoded = quantizer.decode(quantizer.compute_codes(np.ascontiguousarray(base)))
    return float(np.sqrt(((base - decoded) ** 2).sum(axis=1).mean())), seconds


def rmse_row(spark, data: Data, args, m: int, bits: int, nlist: int, fitted: dict) -> dict:
    path_to_remove = None
    if (m, bits) in fitted:
        s = fitted[m, bits]
        model, build_seconds, disk = s["model"], s["build_seconds"], s["disk"]
        summary = s["summary"]
    else:
        path = os.path.join(data.work, f"index-rmse-{m}x{bits}")
        shutil.rmtree(path, ignore_errors=True)
        started = time.perf_counter()
        model = ANNIndex(indexType="pq", numPartitions=nlist, pqSubvectors=m, pqBits=bits,
                         rerankK=args.rerank_fit, k=K, seed=SEED, indexPath=path).fit(
            spark.read.parquet(data.base_path))
        build_seconds = time.perf_counter() - started
        summary, disk = model.summary(), disk_bytes(path)
        path_to_remove = path
    single, single_seconds = single_process_rmse(data.base, m, bits)
    queries = spark.read.parquet(data.recall_path)

    def recall_of(rerank):
        table = model.copy().setSearchStrategy("local").setRerankK(rerank).transform(
            queries).select("id", "neighbors").toArrow()
        return bench.recall(neighbor_ids(table, data.recall_n), data.truth, K)

    row = {
        "pqSubvectors": m, "pqBits": bits,
        "partitionRMSE": summary["pqReconstructionRMSE"], "singleProcessRMSE": single,
        "partitionFitSeconds": round(build_seconds, 1),
        "singleProcessTrainSeconds": round(single_seconds, 1),
        "numProbes": model.searchSettings()["numProbes"],
        "recallNoRerank": recall_of(0), "recallRerank": recall_of(args.rerank_fit),
        "codesOnlyBytesPerVector": disk["codes_ids"] / summary["numVectors"],
        "buildSeconds": summary["buildSeconds"],
    }
    log.info("rmse %s", row)
    if path_to_remove:
        shutil.rmtree(path_to_remove, ignore_errors=True)
    return row


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def markdown(results: dict) -> str:
    m = results["machine"]
    out = [
        "# PQ benchmark: sparkann vs faiss", "",
        f"Generated by `{results['command']}` on {results['started']} "
        f"({results['total_seconds'] / 60:.1f} min). {m['cores']} cores ({m['cpu_model']}), "
        f"{m['ram_gib']} GiB; faiss {m['faiss']}, PySpark {m['pyspark']}. Load average at "
        f"start {m['loadavg_at_start']}, at end {results.get('loadavg_at_end')} (a shared "
        "machine).", "",
        "sparkann: `ANNIndex(indexType='pq', numPartitions=nlist, pqSubvectors=M, pqBits=b, "
        f"rerankK={results['rerank_fit']})` on `local[{m['cores']}]` (per-partition residual "
        "codebooks; the exact vectors are stored because rerankK > 0 at fit), searched with the "
        "local strategy, `setNumProbes(p).setRerankK(r)` (r = 0: codes only, the vectors are not "
        "loaded). faiss: one process, "
        f"{m['cores']} threads, `IndexIVFPQFastScan` (4 bits) or `IndexIVFPQ` (8 bits) with the "
        "same nlist, M and nbits, its own coarse quantizer and one global residual codebook "
        "trained on up to 100k rows; re-ranking with `IndexRefineFlat` (k_factor = r / 10). "
        "Sweeps on the recall sample. At equal recall, each side's candidates (per probe "
        "count the cheapest re-rank depth reaching the target: the two with the fewest "
        "probes and the fastest on the sweep) are timed on the full query set (median of "
        "the repeats) and the fastest is reported. Memory: the loaded arrays, and the RSS "
        "growth of one process loading every partition (after a warm-up load; it includes "
        "what the allocators keep).", "",
    ]
    for name, ds in results["datasets"].items():
        ms = ", ".join(f"{m} at {b} bits" for b, m in ds["m"].items())
        out += [f"## {name}", "", ds["description"] + f"; nlist = numPartitions = "
                f"{ds['nlist']}, M = pqSubvectors = {ms} (the same code size).", ""]
        out += ["| Bits (M) | Re-rank | Target recall | sparkann setting | sparkann recall | "
                "sparkann q/s | faiss | faiss setting | faiss recall | faiss q/s | "
                "sparkann / faiss | Target ≥ 0.5× |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for bits, entry in ds["bits"].items():
            for e in entry["equal_recall"]:
                s, f = e["sparkann"], e["faiss"]
                out.append(
                    f"| {bits} ({entry['m']}) | {'yes' if e['rerank'] else 'no'} | "
                    f"{e['target_recall']:.2f} | "
                    f"numProbes={s['numProbes']}, rerankK={s['rerankK']} | {s['recall']:.3f} | "
                    f"{s['qps']:,.0f} | {entry['faiss']['kind']} | nprobe={f['nprobe']}, "
                    f"rerankK={f['rerankK']} | {f['recall']:.3f} | {f['qps']:,.0f} | "
                    f"{e['ratio']:.2f}× | {'**pass**' if e['ratio'] >= 0.5 else '**miss**'} |")
        out += ["", f"Queries on the full set: {ds['full_queries']:,}; sweeps on "
                f"{ds['recall_queries']:,}.", "",
                "| Bits | sparkann fit s | faiss build s | sparkann bytes/vector in memory "
                "(loaded arrays: codes, codes + exact vectors / RSS growth of one process "
                "loading every partition: codes, codes + exact vectors) | faiss bytes/vector "
                "(code + id / serialized / serialized with refine) | sparkann bytes/vector on "
                "disk (codes + ids / with exact vectors / all) | sparkann RMSE | calibrated "
                "numProbes, rerankK (recall) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for bits, entry in ds["bits"].items():
            s, f = entry["sparkann"], entry["faiss"]
            mem, disk = s["memory"], s["disk_bytes_per_vector"]
            one = mem["one_process"]
            d = s["defaults"]
            out.append(
                f"| {bits} | {s['build_seconds']:.1f} | {f['build_seconds']:.1f} | "
                f"{one['arrays_codes_bytes_per_vector']:.1f}, "
                f"{one['arrays_with_vectors_bytes_per_vector']:.1f} / "
                f"{one['codes_bytes_per_vector']:.1f}, "
                f"{one['with_vectors_bytes_per_vector']:.1f} | "
                f"{f['memory']['code_plus_id_bytes']} / "
                f"{f['memory']['serialized_bytes_per_vector']:.1f} / "
                f"{f['memory']['serialized_refine_bytes_per_vector']:.1f} | "
                f"{disk['codes_ids']:.1f} / {disk['with_vectors']:.1f} / {disk['total']:.1f} | "
                f"{s['summary'].get('pqReconstructionRMSE', 0):.2f} | "
                f"{d['numProbes']}, {d['rerankK']} ({d['recall']:.3f}) |")
        out.append("")
        for bits, entry in ds["bits"].items():
            for side, key in (("sparkann", "numProbes"), ("faiss", "nprobe")):
                pts = entry[side]["sweep"]
                reranks = sorted({p["rerankK"] for p in pts})
                out += [f"{side} {bits}-bit sweep (recall sample): recall@10 / queries/s", "",
                        f"| {key} \\ rerankK | " + " | ".join(str(r) for r in reranks) + " |",
                        "| --- | " + " | ".join("---" for _ in reranks) + " |"]
                for p in sorted({p[key] for p in pts}):
                    cells = {q["rerankK"]: q for q in pts if q[key] == p}
                    out.append(f"| {p} | " + " | ".join(
                        f"{cells[r]['recall']:.3f} / {cells[r]['qps']:,.0f}" if r in cells
                        else "–" for r in reranks) + " |")
                out.append("")
    rows = results.get("rmse") or []
    if rows:
        out += ["## Per-partition codebooks vs one single-process PQ (Fashion-MNIST)", "",
                "| m | bits | RMSE per-partition | RMSE single-process | fit s (parallel, "
                "whole fit) | train s (single) | numProbes (calibrated) | recall@10 | "
                "recall@10 re-rank | bytes/vector |",
                "|" + " --- |" * 10]
        for r in rows:
            out.append(
                f"| {r['pqSubvectors']} | {r['pqBits']} | {r['partitionRMSE']:.1f} | "
                f"{r['singleProcessRMSE']:.1f} | {r['partitionFitSeconds']} | "
                f"{r['singleProcessTrainSeconds']} | {r['numProbes']} | "
                f"{r['recallNoRerank']:.3f} | {r['recallRerank']:.3f} | "
                f"{r['codesOnlyBytesPerVector']:.1f} |")
        ok = all(r["partitionRMSE"] <= r["singleProcessRMSE"] for r in rows)
        out += ["", f"Fashion-MNIST, 60,000 × 784 indexed, {results['rmse_queries']:,} queries, "
                f"l2; numPartitions={results['rmse_partitions']}, calibrated numProbes, "
                f"rerankK={results['rerank_fit']} for the re-rank column. The single-process "
                "PQ is trained on the raw vectors (no coarse centroids); the parallel column is "
                "the whole fit (sampling, centroids, assignment, per-partition training and "
                "encoding, writing, calibration). bytes/vector: codes + ids + file overhead on "
                "disk (codebooks, exact vectors and calibration columns excluded). "
                f"Per-partition RMSE ≤ single-process in every row: {'yes' if ok else 'no'}.", ""]
    return "\n".join(out) + "\n"


def _clean(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist")
                                 else None))


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    work = args.work_dir or tempfile.mkdtemp(prefix="sparkann-pq-bench-")
    spark = make_spark(args.cores)
    results = {
        "command": "python benchmarks/pq_benchmark.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "started": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": bench.machine_info(), "rerank_fit": args.rerank_fit, "datasets": {},
        "rmse": [], "total_seconds": 0.0,
    }
    os.makedirs(args.out, exist_ok=True)
    try:
        for name in args.datasets:
            data = Data(name, args, work)
            nlist = data.layout(args, args.bits[0])[0]
            entry = {"description": data.description, "nlist": nlist,
                     "m": {bits: data.layout(args, bits)[1] for bits in args.bits},
                     "recall_queries": data.recall_n, "full_queries": data.full_n,
                     "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "bits": {}}
            fitted = {}
            for bits in args.bits:
                m = data.layout(args, bits)[1]
                s = run_sparkann(spark, data, args, bits, nlist, m)
                f = run_faiss(data, args, bits, nlist, m)
                eq = equal_recall(s, f)
                fitted[m, bits] = s
                entry["bits"][bits] = {
                    "sparkann": {k: v for k, v in s.items() if k not in ("full", "model")},
                    "faiss": {k: v for k, v in f.items() if k != "full"}, "m": m,
                    "equal_recall": eq}
                save(results | {"datasets": {**results["datasets"], name: entry}}, args,
                     started)
            if name == "fashion-mnist" and args.rmse:
                results["rmse_partitions"], results["rmse_queries"] = nlist, data.recall_n
                for cm, cbits in args.rmse:
                    results["rmse"].append(rmse_row(spark, data, args, cm, cbits, nlist, fitted))
                    save(results | {"datasets": {**results["datasets"], name: entry}}, args,
                         started)
            entry["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            results["datasets"][name] = entry
            for s in fitted.values():
                shutil.rmtree(s["path"], ignore_errors=True)
            shutil.rmtree(data.work, ignore_errors=True)
            bench.clear_worker_caches(spark, args.cores)
            save(results, args, started)
    finally:
        save(results, args, started)
        spark.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(_clean(results)))
    return 0


def save(results: dict, args, started: float) -> None:
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    clean = _clean(results)
    with open(os.path.join(args.out, "pq_results.json"), "w", encoding="utf-8") as out:
        json.dump(clean, out, indent=1)
    try:
        with open(os.path.join(args.out, "PQ_RESULTS.md"), "w", encoding="utf-8") as out:
            out.write(markdown(clean))
    except Exception:  # noqa: BLE001 - a report problem must not lose the measurements
        log.exception("could not write PQ_RESULTS.md")


if __name__ == "__main__":
    sys.exit(main())
