"""Small partitions share a build task: the packing itself (pure), and a fit of many
small partitions in few tasks that still builds each partition from its own rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import job_group, vectors_frame

from sparkann import ANNIndex, datasets
from sparkann.build import per_partition
from sparkann.partitioning.packing import pack, task_capacity


def test_pack_is_first_fit_decreasing():
    sizes = [5, 9, 1, 4, 6, 3]
    task_of = pack(sizes, 10)
    loads = np.bincount(task_of, weights=sizes)
    assert loads.max() <= 10 and len(loads) == 3  # 28 rows: 3 tasks of 10 at best
    # 9 opens task 0, 6 task 1, 5 task 2; 4 joins 6, 3 joins 5, 1 joins 9
    assert task_of.tolist() == [2, 0, 0, 1, 1, 2]


def test_large_partitions_have_tasks_of_their_own():
    sizes = [50, 3, 12, 10, 2]
    task_of = pack(sizes, 10)
    assert len({task_of[0], task_of[2], task_of[3]}) == 3
    assert {task_of[1], task_of[4]}.isdisjoint({task_of[0], task_of[2], task_of[3]})
    assert task_of[1] == task_of[4]


def test_pack_is_deterministic_and_numbers_tasks_densely():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 200, 4500).astype(float)
    sizes[::7] = 90.0  # many ties
    first, again = pack(sizes, 5000), pack(sizes.copy(), 5000)
    assert (first == again).all()
    assert set(first.tolist()) == set(range(first.max() + 1))
    loads = np.bincount(first, weights=sizes)
    assert loads.max() <= 5000 and len(loads) <= np.ceil(sizes.sum() / 5000) + 1
    assert pack([], 10).tolist() == []


def test_task_capacity():
    assert task_capacity([100] * 90, cores=2, max_rows=10**6) == 2250  # 4 even tasks
    assert task_capacity([100] * 90, cores=2, max_rows=1000) == 1000  # never past a shard
    assert task_capacity([0.0], cores=8, max_rows=10) == 1


@pytest.mark.parametrize("task_of", [None, np.array([0, 1, 0, 2, 1, 0], np.int32)])
def test_per_partition_applies_the_function_to_each_partition_once(spark, task_of):
    from pyspark import TaskContext

    rows = spark.createDataFrame(pa.table({
        "id": pa.array(np.arange(600), pa.int64()),
        "partition_id": pa.array(np.arange(600) % 6, pa.int32())}))

    def fn(pid, table):
        return pa.table({"pid": pa.array([pid], pa.int32()),
                         "task": pa.array([TaskContext.get().partitionId()], pa.int32()),
                         "ids": pa.array([sorted(table.column("id").to_pylist())],
                                         pa.list_(pa.int64()))})

    out = per_partition(rows, 6, fn, "pid int, task int, ids array<long>", task_of).collect()
    assert sorted(r.pid for r in out) == list(range(6))
    assert all(r.ids == list(range(r.pid, 600, 6)) for r in out)
    tasks = {r.pid: r.task for r in out}
    if task_of is None:
        assert tasks == {pid: pid for pid in range(6)}
    else:
        assert tasks == {pid: int(task_of[pid]) for pid in range(6)}


def test_a_fit_of_many_small_partitions_packs_them_into_few_tasks(spark, tmp_path):
    base = datasets.clustered(3000, 8, seed=4)
    items = vectors_frame(spark, base)
    tracker = spark.sparkContext.statusTracker()
    with job_group(spark, "sparkann-packed-fit") as job_ids:
        model = ANNIndex(numPartitions=120, k=5, targetRecall=0.9, seed=3,
                         indexPath=str(tmp_path / "index")).fit(items)
        jobs = [tracker.getJobInfo(j) for j in job_ids()]
    stages = [tracker.getStageInfo(s) for job in jobs if job for s in job.stageIds]
    most = max(s.numTasks for s in stages if s is not None)
    assert most < 120 / 4, most  # no stage runs a task per partition
    summary = model.summary()
    assert summary["numShards"] == 120 and sum(summary["partitionSizes"]) == 3000
    files = model.manifest.partitions.files
    assert all(files) and len(set(files)) <= 120 / 4  # built in few tasks, written to few files
    found = model.transform(items.limit(200)).collect()
    assert all(row.neighbors[0].id == row.id for row in found)  # every row findable
    assert summary["calibration"]["reached"], summary["calibration"]
