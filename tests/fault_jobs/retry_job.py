"""Injected task failures under local[2,4]: build (with calibration) and search in
both strategies, fault-free then with every first task attempt failing.

Usage: python retry_job.py [hnsw] [pq]   (index types to run; default hnsw)

``spark.sparkann.test.failFirstAttempt=build,search`` is read inside the tasks;
the failures are counted from Spark's own task records (failed attempts whose
error is the injected one), per stage, so the result shows which stages failed.
"""

from __future__ import annotations

import sys

from common import (
    FAIL_CONF,
    STRATEGIES,
    answers,
    checksums,
    data,
    emit,
    exactly_k_distinct,
    injected,
    recall,
    session,
    task_attempts,
    timed,
    vectors_frame,
)

from sparkann import ANNIndex


def params_of(index_type: str) -> dict:
    params = {"numPartitions": 6, "deterministic": True, "indexType": index_type, "seed": 11}
    if index_type == "pq":
        params.update(pqSubvectors=8, rerankK=50)
    return params


def run(spark, items, queries, index_type: str) -> dict:
    """Fault-free then faulty build + search (both strategies) of one index type."""
    params = params_of(index_type)
    spark.sparkContext.setJobGroup(f"clean-{index_type}", "no faults")
    clean, clean_build = timed(ANNIndex(**params).fit, items)
    clean_found = {s: timed(answers, clean, queries, s) for s in STRATEGIES}
    spark.conf.set(FAIL_CONF, "build,search")
    try:
        spark.sparkContext.setJobGroup(f"faulty-build-{index_type}", "injected failures")
        faulty, faulty_build = timed(ANNIndex(**params).fit, items)
        found = {}
        for strategy in STRATEGIES:
            spark.sparkContext.setJobGroup(f"faulty-search-{strategy}-{index_type}",
                                           "injected failures")
            found[strategy] = timed(answers, faulty, queries, strategy)
    finally:
        spark.conf.unset(FAIL_CONF)
        spark.sparkContext.setJobGroup("after", "no faults")
    build_attempts = task_attempts(spark, f"faulty-build-{index_type}")
    result = {
        "same_checksums": checksums(clean) == checksums(faulty),
        "same_meta": clean.manifest.meta_sha256 == faulty.manifest.meta_sha256,
        "search_defaults": [clean.summary()["searchDefaults"],
                            faulty.summary()["searchDefaults"]],
        "num_vectors": faulty.manifest.num_vectors,
        "nonempty_partitions": sum(1 for f in faulty.manifest.partitions.files if f),
        "injected": {"build": injected(build_attempts, "build"),
                     # no search task runs during a build (calibration has no hook)
                     "search in build": injected(build_attempts, "search")},
        "seconds": {"clean build": clean_build, "faulty build": faulty_build},
        "strategies": {},
    }
    for strategy in STRATEGIES:
        attempts = task_attempts(spark, f"faulty-search-{strategy}-{index_type}")
        faulty_answers, faulty_seconds = found[strategy]
        clean_answers, clean_seconds = clean_found[strategy]
        result["strategies"][strategy] = {
            "injected": injected(attempts, "search"),
            "other_failures": [a["error"][:300] for a in attempts if a["status"] == "FAILED"
                               and "injected failure in the first attempt" not in a["error"]],
            "same_answers": faulty_answers == clean_answers,
            "exactly_k": exactly_k_distinct(faulty_answers, faulty.manifest.num_vectors),
            "num_queries": len(faulty_answers),
            "answers": faulty_answers,
            "clean_answers": clean_answers,
            "seconds": {"clean": clean_seconds, "faulty": faulty_seconds},
        }
    return result


def main() -> None:
    spark = session("local[2,4]")
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    result = {kind: run(spark, items, queries, kind) for kind in sys.argv[1:] or ["hnsw"]}
    for kind in result.values():
        for run_ in kind["strategies"].values():
            run_["recall"] = recall(run_.pop("answers"), base, query_vectors)
            run_["clean_recall"] = recall(run_.pop("clean_answers"), base, query_vectors)
    emit(master=spark.sparkContext.master,
         query_partitions=queries.rdd.getNumPartitions(), **result)
    spark.stop()


if __name__ == "__main__":
    main()
