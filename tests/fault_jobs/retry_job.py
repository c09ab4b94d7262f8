"""Injected task failures under local[2,4]: build and search, fault-free then faulty.

Usage: python retry_job.py [hnsw] [pq]   (index types to run; default hnsw)
"""

from __future__ import annotations

import sys

from common import (
    FAIL_CONF,
    answers,
    data,
    emit,
    failed_tasks,
    recall,
    session,
    timed,
    vectors_frame,
)

from sparkann import ANNIndex


def run(spark, items, queries, index_type: str):
    """Fault-free then faulty build + search of one index type."""
    params = {"numPartitions": 6, "deterministic": True, "indexType": index_type}
    if index_type == "pq":
        params.update(pqSubvectors=8, rerankK=50)
    clean, clean_build = timed(ANNIndex(**params).fit, items)
    clean_answers, clean_search = timed(answers, clean, queries)
    spark.conf.set(FAIL_CONF, "build,search")
    spark.sparkContext.setJobGroup(f"faulty-{index_type}", "injected failures")
    faulty, faulty_build = timed(ANNIndex(**params).fit, items)
    faulty_answers, faulty_search = timed(answers, faulty, queries)
    spark.conf.unset(FAIL_CONF)
    spark.sparkContext.setJobGroup("clean", "no faults")
    return {
        "same_checksums": clean.manifest.checksums == faulty.manifest.checksums,
        "same_answers": clean_answers == faulty_answers,
        "failed_tasks": failed_tasks(spark, f"faulty-{index_type}"),
        "answers": faulty_answers,
        "clean_answers": clean_answers,
        "seconds": {"clean build": clean_build, "clean search": clean_search,
                    "faulty build": faulty_build, "faulty search": faulty_search},
    }


def main() -> None:
    spark = session("local[2,4]")
    base, query_vectors = data()
    items = vectors_frame(spark, base)
    queries = vectors_frame(spark, query_vectors, "qid")
    result = {kind: run(spark, items, queries, kind) for kind in sys.argv[1:] or ["hnsw"]}
    for kind in result.values():
        kind["recall"] = recall(kind.pop("answers"), base, query_vectors)
        kind["clean_recall"] = recall(kind.pop("clean_answers"), base, query_vectors)
    emit(master=spark.sparkContext.master, **result)
    spark.stop()


if __name__ == "__main__":
    main()
