"""The living index over its whole life: builds, deletes, adds, re-adds, compactions,
rebalances, saves and loads in any order, old versions, racing writers, vacuum, and
what a small update writes.

Every search that is checked against exact search uses explicit settings (all
clusters probed, efSearch=128, rerankK=200 for a PQ index that keeps vectors), so
what is compared is the index's content, not its calibration. The truth of a
version is tracked here independently of the library: a dict id -> vector of its
live rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import loaded_index, vectors_frame
from lifecycle_jobs import race_writer

from sparkann import ANNIndex, ANNIndexModel, datasets, exact
from sparkann.loader import partition_ids
from sparkann.storage import ConcurrentUpdateError, IndexFormatError
from sparkann.storage.transaction import referenced_files
from sparkann.storage.versions import manifest_path

DIM = 16
K = 10
NUM_PARTITIONS = 4
MIN_RECALL = 0.95
JOBS = Path(__file__).resolve().parent / "lifecycle_jobs"
REPO = Path(__file__).resolve().parent.parent
NEVER_INDEXED = 10**9  # ids from here on are never added to any index

KINDS = {
    "hnsw": {"indexType": "hnsw"},
    "pq": {"indexType": "pq", "pqSubvectors": 8, "rerankK": 100},  # 8 divides DIM
    "pq-no-rerank": {"indexType": "pq", "pqSubvectors": 16},  # no exact vectors kept
    "hnsw_sq8": {"indexType": "hnsw_sq8"},  # 8-bit codes only
}
KIND_MIN_RECALL = {"hnsw_sq8": 0.9}  # distances from 8-bit codes, no exact re-ranking


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    """Vectors for ids 0..5999, other vectors for the same ids (used when an id is
    added again), and the fixed query set."""
    base = datasets.clustered(6000, DIM, seed=11)
    other = datasets.clustered(6000, DIM, seed=11, sample_seed=5)
    queries = datasets.clustered(40, DIM, seed=11, sample_seed=7)
    return base, other, queries


class Live:
    """The live rows of one index version, as the test believes them to be."""

    def __init__(self, rows: dict | None = None):
        self.rows = dict(rows or {})

    def copy(self) -> Live:
        return Live(self.rows)

    def put(self, ids, vectors) -> None:
        for i, v in zip(np.asarray(ids).tolist(), vectors):
            assert i not in self.rows, f"test bug: id {i} is live already"
            self.rows[i] = v

    def drop(self, ids) -> None:
        for i in np.asarray(ids).tolist():
            self.rows.pop(i, None)

    def arrays(self):
        ids = np.array(sorted(self.rows), dtype=np.int64)
        return ids, np.stack([self.rows[i] for i in ids.tolist()]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.rows)


def frame(spark, ids, vectors):
    return vectors_frame(spark, np.asarray(vectors, np.float32), np.asarray(ids, np.int64))


def explicit(model: ANNIndexModel) -> ANNIndexModel:
    """The model with fixed, generous search settings."""
    manifest = model.manifest
    searching = model.copy().setK(K).setEfSearch(128).setNumProbes(
        int(manifest.params["numPartitions"]))
    if manifest.index_type == "pq" and int(manifest.params.get("rerankK") or 0) > 0:
        searching = searching.setRerankK(200)
    return searching


def answers(model: ANNIndexModel, qdf) -> tuple[list[list[int]], list[list[float]]]:
    """Neighbour ids and distances of each query, in query order."""
    rows = sorted(explicit(model).transform(qdf).collect(), key=lambda r: r["qid"])
    return ([[n.id for n in r["neighbors"]] for r in rows],
            [[float(n.distance) for n in r["neighbors"]] for r in rows])


def check(model: ANNIndexModel, live: Live, queries, qdf, what: str,
          gone=(), min_recall: float = MIN_RECALL) -> float:
    """The model answers from exactly ``live``: its count, no other id (in particular
    none of ``gone``), and recall@K against exact search over ``live``."""
    ids, vectors = live.arrays()
    assert model.summary()["numVectors"] == len(ids), (
        f"{what}: summary says {model.summary()['numVectors']} vectors, {len(ids)} are live")
    found, _ = answers(model, qdf)
    want = min(K, len(ids))
    assert all(len(f) == want and len(set(f)) == want for f in found), (
        f"{what}: not {want} distinct neighbours per query")
    returned = {i for f in found for i in f}
    deleted = returned & set(np.asarray(gone).tolist())
    assert not deleted, f"{what}: deleted ids answered: {sorted(deleted)[:10]}"
    stray = returned - set(ids.tolist())
    assert not stray, f"{what}: ids not live in this version answered: {sorted(stray)[:10]}"
    truth = ids[exact.knn(vectors, queries, K)[0]]
    recall = exact.recall_at_k(np.array(found), truth, K)
    assert recall >= min_recall, f"{what}: recall@{K} {recall:.3f} < {min_recall}"
    return recall


def listing(root) -> dict[str, int]:
    """Every file under ``root`` (relative path -> size in bytes)."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            files[os.path.relpath(path, root)] = os.path.getsize(path)
    return files


def written_between(before: dict, after: dict) -> dict[str, int]:
    """Files that appeared or changed size between two listings."""
    return {p: s for p, s in after.items() if before.get(p) != s}


def version_bytes(model: ANNIndexModel) -> int:
    """Bytes of the files one version needs: its manifest and every file it names."""
    m = model.manifest
    root = m.root
    total = os.path.getsize(manifest_path(root, m.version))
    return total + sum(os.path.getsize(os.path.join(root, f)) for f in referenced_files(m) if f)


def rows_near_partition(model: ANNIndexModel, pid: int, count: int, seed: int) -> np.ndarray:
    """``count`` vectors that route to partition ``pid`` (close to its centroid)."""
    loaded = loaded_index(model)
    assert len(loaded.meta.centroids) == model.manifest.num_partitions, "test assumes no shards"
    rng = np.random.default_rng(seed)
    centroid = loaded.meta.centroids[loaded.cluster_of[pid]]
    return (centroid + 0.01 * rng.standard_normal((count, DIM))).astype(np.float32)


def changed_partitions(old: ANNIndexModel, new: ANNIndexModel) -> set[int]:
    return {pid for pid, (a, b) in enumerate(zip(old.manifest.partitions.files,
                                                 new.manifest.partitions.files)) if a != b}


def pooled(spark, pool, index_pool, rows: int, target):
    """A copy at ``target`` of a fit of ids 0..rows-1 (NUM_PARTITIONS, no calibration)."""
    base = pool[0]

    def build(path):
        ANNIndex(indexPath=path, numPartitions=NUM_PARTITIONS, targetRecall=0).fit(
            frame(spark, np.arange(rows), base[:rows]))

    return index_pool.copy(f"lifecycle-{rows}", build, target)


def child_env() -> dict:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


# --------------------------------------------------------------------------
# 1. the whole lifecycle, every version answering from its own rows
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hnsw", "pq", "hnsw_sq8"])
def test_lifecycle_every_version_answers_from_its_own_rows(spark, pool, tmp_path, kind):
    """build, delete, add (new and deleted-before ids), delete again, compact, rebalance,
    save elsewhere, load, update the copy; then load(path, version=N) of every version
    of both paths answers from exactly that version's rows."""
    base, other, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    rng = np.random.default_rng(3)
    path = str(tmp_path / "index")
    live, history, gone = Live(), [], set()

    def record(model):
        history.append((model.manifest.root, model.manifest.version, live.copy()))

    live.put(np.arange(2000), base[:2000])
    model = ANNIndex(indexPath=path, numPartitions=NUM_PARTITIONS, seed=3, targetRecall=0,
                     **KINDS[kind]).fit(frame(spark, np.arange(2000), base[:2000]))
    record(model)

    first_deleted = rng.choice(2000, 200, replace=False)
    model = model.delete(first_deleted.tolist() + [NEVER_INDEXED])
    live.drop(first_deleted)
    gone |= set(first_deleted.tolist())
    record(model)

    readded = first_deleted[:100]
    new = np.arange(2000, 2300)
    add_ids = np.concatenate([new, readded])
    add_vectors = np.vstack([base[new], other[readded]])  # a re-added id gets a new vector
    model = model.add(frame(spark, add_ids, add_vectors))
    live.put(add_ids, add_vectors)
    gone -= set(readded.tolist())
    record(model)

    second_deleted = np.concatenate([readded[:50], new[:50], rng.choice(
        np.setdiff1d(np.arange(2000), first_deleted), 50, replace=False)])
    model = model.delete(second_deleted.tolist())
    live.drop(second_deleted)
    gone |= set(second_deleted.tolist())
    record(model)

    model = model.compact(minDeletedShare=0.0)
    assert model.summary()["deletedRows"] == 0
    record(model)

    rebalanced = model.rebalance(maxDrift=0.0)
    assert rebalanced.manifest.version == model.manifest.version + 1
    model = rebalanced
    record(model)

    copy_path = str(tmp_path / "copy")
    model.save(copy_path)
    model = ANNIndexModel.load(copy_path)
    assert model.manifest.version == 1 and model.manifest.root == copy_path
    record(model)
    more = np.arange(2300, 2400)
    model = model.add(frame(spark, more, base[more]))
    live.put(more, base[more])
    record(model)
    last_deleted = np.concatenate([more[:10], rng.choice(list(live.rows), 10, replace=False)])
    model = model.delete(last_deleted.tolist())
    live.drop(last_deleted)
    gone |= set(last_deleted.tolist())
    record(model)

    least = KIND_MIN_RECALL.get(kind, MIN_RECALL)
    check(model, live, queries, qdf, f"{kind}: the last model", gone, min_recall=least)
    for root, version, rows in history:
        loaded = ANNIndexModel.load(root, version=version)
        assert loaded.manifest.version == version
        check(loaded, rows, queries, qdf, f"{kind}: {os.path.basename(root)} version {version}",
              gone=[i for i in gone if i not in rows.rows], min_recall=least)


# --------------------------------------------------------------------------
# 2. a seeded random sequence of mixed steps
# --------------------------------------------------------------------------

RANDOM_STEPS = {"add": 6, "re-add": 5, "delete": 8, "compact": 4, "rebalance": 1,
                "save-copy": 1, "save-same": 2, "old-version": 3}  # 30 steps, shuffled
SHORT_STEPS = {"add": 2, "re-add": 2, "delete": 3, "compact": 1, "rebalance": 1,
               "save-copy": 1, "save-same": 1, "old-version": 1}  # every kind of step, 12


@pytest.mark.parametrize("kind,length", [
    ("hnsw", "short"), pytest.param("hnsw", "long", marks=pytest.mark.heavy),
    pytest.param("pq", "long", marks=pytest.mark.heavy)])
def test_random_mixed_steps_keep_answers_exact(spark, pool, tmp_path, kind, length):
    """Seeded random steps (12 on hnsw, or 30 on each type in the heavy tier); after
    each one the model answers from exactly the live rows (recall@10 >= 0.95, no
    deleted id) and counts them right."""
    base, other, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    rng = np.random.default_rng((2024 if kind == "hnsw" else 4202) + (length == "short"))
    plan = RANDOM_STEPS if length == "long" else SHORT_STEPS
    steps = [name for name, n in plan.items() for _ in range(n)]
    rng.shuffle(steps)
    live, gone = Live(), set()  # gone: deleted and not added again
    live.put(np.arange(1500), base[:1500])
    model = ANNIndex(indexPath=str(tmp_path / "r0"), numPartitions=NUM_PARTITIONS, seed=5,
                     targetRecall=0, **KINDS[kind]).fit(frame(spark, np.arange(1500), base[:1500]))
    history = [(model.manifest.root, model.manifest.version, live.copy())]
    next_id, recalls, done = 1500, [], []
    for number, step in enumerate(steps):
        if step == "re-add" and not gone:
            step = "delete"
        what = f"{kind} step {number} ({step})"
        before = model
        if step == "add":
            ids = np.arange(next_id, next_id + int(rng.integers(40, 160)))
            next_id = int(ids[-1]) + 1
            model = model.add(frame(spark, ids, base[ids]))
            live.put(ids, base[ids])
        elif step == "re-add":
            ids = rng.choice(sorted(gone), min(len(gone), int(rng.integers(10, 60))),
                             replace=False)
            source = other if number % 2 else base  # a new vector, or the old one again
            model = model.add(frame(spark, ids, source[ids]))
            live.put(ids, source[ids])
            gone -= set(ids.tolist())
        elif step == "delete":
            ids = rng.choice(sorted(live.rows), int(rng.integers(20, 120)), replace=False)
            extra = [NEVER_INDEXED + 100 * number + j for j in range(3)]  # never indexed
            extra += [int(rng.choice(sorted(gone)))] if gone else []  # deleted already
            model = model.delete(ids.tolist() + extra)
            live.drop(ids)
            gone |= set(ids.tolist())
        elif step == "compact":
            share = float(rng.choice([0.0, 0.01, 0.03, 0.1, 0.5]))
            p = before.manifest.partitions
            due = [gone_rows > 0 and gone_rows >= share * rows
                   for rows, gone_rows in zip(p.rows, p.deleted)]
            model = model.compact(minDeletedShare=share)
            after = model.manifest.partitions
            for pid, rebuilt in enumerate(due):
                if rebuilt:
                    assert after.deleted[pid] == 0 and after.rows[pid] == p.live[pid], what
                else:
                    assert after.files[pid] == p.files[pid], f"{what}: rebuilt partition {pid}"
            assert (model is before) == (not any(due)), what
            what += f" share={share} rebuilt={sum(due)}"
        elif step == "rebalance":
            model = model.rebalance(maxDrift=0.0)
            assert model.summary()["deletedRows"] == 0, what
        elif step == "save-copy":  # a copy at a new path, where the next steps continue
            target = str(tmp_path / "copy")
            model.save(target)
            model = ANNIndexModel.load(target)
            assert model.manifest.version == 1, what
        elif step == "save-same":  # a new version over the model's own path
            target = model.manifest.root
            model.write().overwrite().save(target)
            model = ANNIndexModel.load(target)
            assert model.manifest.version == before.manifest.version + 1, what
        elif step == "old-version":
            root, version, rows = history[int(rng.integers(0, len(history)))]
            old = ANNIndexModel.load(root, version=version)
            check(old, rows, queries, qdf, f"{what}: {os.path.basename(root)} v{version}",
                  gone=[i for i in gone if i not in rows.rows])
        if model is not before:
            history.append((model.manifest.root, model.manifest.version, live.copy()))
            newest = ANNIndexModel.load(model.manifest.root)
            assert newest.manifest.version == model.manifest.version, what
        recalls.append(check(model, live, queries, qdf, what, gone))
        done.append(what)
    print(f"\n{kind}: {len(done)} steps, {len(history)} versions, {len(live)} live rows, "
          f"min recall@{K} {min(recalls):.3f}")


# --------------------------------------------------------------------------
# 3. regressions
# --------------------------------------------------------------------------


def test_one_partition_delete_then_add_keeps_working(spark, pool):
    """ANNIndex(numPartitions=1).fit, delete([1, 2, 3]), add: and later searches, adds
    (one of them re-adding id 2) and a compaction keep working."""
    base, other, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    live = Live()
    live.put(np.arange(1000), base[:1000])
    model = ANNIndex(numPartitions=1, targetRecall=0).fit(
        frame(spark, np.arange(1000), base[:1000]))
    model = model.delete([1, 2, 3])
    live.drop([1, 2, 3])
    new = np.arange(1000, 1200)
    model = model.add(frame(spark, new, base[new]))
    live.put(new, base[new])
    check(model, live, queries, qdf, "after delete + add", gone=[1, 2, 3])
    more = np.concatenate([[2], np.arange(1200, 1300)])
    vectors = np.vstack([other[[2]], base[1200:1300]])
    model = model.add(frame(spark, more, vectors)).compact(minDeletedShare=0.0)
    live.put(more, vectors)
    assert model.summary()["deletedRows"] == 0
    check(model, live, queries, qdf, "after another add and a compaction", gone=[1, 3])


def test_a_deleted_id_can_be_added_again_and_is_found(spark, pool, index_pool, tmp_path):
    """Delete an id, add it again with a vector from another cluster: it is found at
    its new place (distance 0), no longer at its old one; delete it again: gone."""
    base, other, _ = pool
    model = pooled(spark, pool, index_pool, 2000, tmp_path / "index")
    target = 7
    moved = (base[1500] + 0.5 * (other[0] - base[1500])).astype(np.float32)  # elsewhere
    probes = vectors_frame(spark, np.vstack([base[target], moved]), id_name="qid")

    def top(m):
        found, dists = answers(m, probes)
        return [f[0] for f in found], [d[0] for d in dists], found

    assert top(model)[0][0] == target
    deleted = model.delete([target])
    assert target not in {i for f in top(deleted)[2] for i in f}
    again = deleted.add(frame(spark, [target], moved[None]))
    assert again.summary()["numVectors"] == 2000
    first, dist, _ = top(again)
    assert first[1] == target and dist[1] == pytest.approx(0.0, abs=1e-4), (
        "the re-added id is not found at its new vector")
    assert first[0] != target, "the re-added id is still found at its old vector"
    gone = again.delete([target])
    assert gone.summary()["numVectors"] == 1999
    assert target not in {i for f in top(gone)[2] for i in f}


@pytest.fixture(scope="module")
def emptied(spark, pool):
    """An index whose partition 0 had all rows deleted and was compacted to zero rows,
    and the ids that partition held."""
    base, _, _ = pool
    model = ANNIndex(numPartitions=NUM_PARTITIONS, targetRecall=0, seed=9).fit(
        frame(spark, np.arange(2000), base[:2000]))
    emptied = np.asarray(partition_ids(loaded_index(model), 0).to_pylist())
    compacted = model.delete(emptied.tolist()).compact(minDeletedShare=0.5)
    assert compacted.summary()["partitionSizes"][0] == 0
    assert compacted.manifest.partitions.rows[0] == 0
    return compacted, emptied


def test_compacting_a_partition_with_every_row_deleted_then_adding_to_it(spark, pool, emptied):
    """Compaction of a partition whose rows are all deleted leaves an empty partition
    that searches skip, and new rows can be added to it."""
    base, _, queries = pool
    model, removed = emptied
    qdf = vectors_frame(spark, queries, id_name="qid")
    live = Live()
    kept = np.setdiff1d(np.arange(2000), removed)
    live.put(kept, base[kept])
    check(model, live, queries, qdf, "after compacting an emptied partition", gone=removed)
    fresh = rows_near_partition(model, 0, 50, seed=1)
    new_ids = np.arange(7000, 7050)
    grown = model.add(frame(spark, new_ids, fresh))
    assert changed_partitions(model, grown) == {0}
    assert grown.summary()["partitionSizes"][0] == 50
    live.put(new_ids, fresh)
    check(grown, live, queries, qdf, "after adding to the emptied partition", gone=removed)
    found, _ = answers(grown, vectors_frame(spark, fresh[:5], id_name="qid"))
    assert [f[0] for f in found] == new_ids[:5].tolist()


def test_ids_of_an_emptied_partition_can_be_added_again(spark, pool, emptied):
    """After the compaction empties partition 0, its old ids can be added again."""
    base, _, _ = pool
    model, removed = emptied
    model = ANNIndexModel.load(model.summary()["path"])  # other tests may have updated it
    again = model.add(frame(spark, removed[:20], base[removed[:20]]))
    assert again.summary()["numVectors"] == model.summary()["numVectors"] + 20


def test_compacting_a_pq_index_without_exact_vectors(spark, pool):
    """A PQ index fitted without rerankK (no exact vectors) compacts from its codes:
    deleted rows are dropped and the answers are the same as before compaction."""
    base, _, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    model = ANNIndex(numPartitions=NUM_PARTITIONS, targetRecall=0, **KINDS["pq-no-rerank"]).fit(
        frame(spark, np.arange(3000), base[:3000]))
    assert model.manifest.params["rerankK"] == 0
    deleted_ids = np.random.default_rng(0).choice(3000, 900, replace=False)
    deleted = model.delete(deleted_ids.tolist())
    compacted = deleted.compact(minDeletedShare=0.2)
    assert compacted.summary()["deletedRows"] == 0
    assert sum(compacted.manifest.partitions.rows) == 2100
    live = Live()
    kept = np.setdiff1d(np.arange(3000), deleted_ids)
    live.put(kept, base[kept])
    recall = check(compacted, live, queries, qdf, "compacted PQ", deleted_ids, min_recall=0.9)
    before, _ = answers(deleted, qdf)
    after, _ = answers(compacted, qdf)
    same = np.mean([len(set(a) & set(b)) / K for a, b in zip(before, after)])
    assert same >= 0.99, f"compaction changed the answers ({same:.3f} overlap, recall {recall})"
    grown = compacted.add(frame(spark, np.arange(3000, 3200), base[3000:3200]))
    live.put(np.arange(3000, 3200), base[3000:3200])
    check(grown, live, queries, qdf, "compacted PQ after an add", deleted_ids, min_recall=0.9)


def test_rebalance_keeps_the_users_column_names(spark, pool, tmp_path):
    """fit(vectorCol="emb", idCol="key"), rebalance, then ANNIndexModel.load(path) reads
    and answers a DataFrame with those column names, and adds to it work too."""
    base, _, _ = pool
    path = str(tmp_path / "index")
    items = frame(spark, np.arange(2000), base[:2000]).withColumnRenamed(
        "id", "key").withColumnRenamed("vector", "emb")
    model = ANNIndex(vectorCol="emb", idCol="key", numPartitions=NUM_PARTITIONS,
                     targetRecall=0, indexPath=path).fit(items)
    rebalanced = model.rebalance(maxDrift=0.0)
    assert rebalanced.manifest.version == 2
    loaded = ANNIndexModel.load(path)
    assert (loaded.getVectorCol(), loaded.getIdCol()) == ("emb", "key")
    rows = loaded.transform(items.where("key < 20")).collect()
    assert sorted((r["key"], r["neighbors"][0].id) for r in rows) == [(i, i) for i in range(20)]
    more = frame(spark, np.arange(2000, 2100), base[2000:2100]).withColumnRenamed(
        "id", "key").withColumnRenamed("vector", "emb")
    assert loaded.add(more).summary()["numVectors"] == 2100


def test_save_into_an_existing_empty_directory(spark, pool, index_pool, tmp_path):
    """save() into a directory that exists but is empty needs no overwrite."""
    base, _, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    model = pooled(spark, pool, index_pool, 1000, tmp_path / "index")
    target = tempfile.mkdtemp(dir=tmp_path)
    assert os.path.isdir(target) and not os.listdir(target)
    model.save(target)
    loaded = ANNIndexModel.load(target)
    assert loaded.manifest.version == 1
    assert answers(loaded, qdf) == answers(model, qdf)


def test_a_saved_copy_lists_each_file_once_and_can_be_copied_again(spark, pool, index_pool,
                                                                   tmp_path):
    """save() to a new path writes a manifest that names each id-location file once, so
    the copy can itself be saved elsewhere, loaded and searched."""
    base, _, queries = pool
    qdf = vectors_frame(spark, queries, id_name="qid")
    model = pooled(spark, pool, index_pool, 1000, tmp_path / "index")
    model.save(str(tmp_path / "copy"))
    copy = ANNIndexModel.load(str(tmp_path / "copy"))
    for files in copy.manifest.locations.files:
        assert len(files) == len(set(files)), f"{len(files)} entries, {len(set(files))} files"
    # Regression: copy_index once named one file per id row, so a task loaded
    # num_vectors**2 location rows. The named files hold each id once.
    named = [f for files in copy.manifest.locations.files for f in files]
    assert sum(pq.ParquetFile(os.path.join(copy.manifest.root, f)).metadata.num_rows
               for f in named) == copy.manifest.num_vectors == 1000
    source_size = os.path.getsize(manifest_path(model.manifest.root, model.manifest.version))
    assert os.path.getsize(manifest_path(copy.manifest.root, 1)) < 2 * source_size
    copy.save(str(tmp_path / "copy-of-copy"))
    again = ANNIndexModel.load(str(tmp_path / "copy-of-copy"))
    assert answers(again, qdf) == answers(model, qdf)


# --------------------------------------------------------------------------
# 4. optimistic concurrency
# --------------------------------------------------------------------------

RACE_ROWS = 300


@pytest.fixture(scope="module")
def race(spark, pool, tmp_path_factory):
    """Two writers in two processes, a driver started here and this test process, load
    version 1 and add different rows; their publishes meet at a barrier right after
    both have read the newest version number (see lifecycle_jobs/race_writer.py)."""
    base, _, _ = pool
    root = tmp_path_factory.mktemp("race")
    path = str(root / "index")
    barrier_dir = root / "barrier"
    barrier_dir.mkdir()
    writers = {"child": (10_000, 101), "parent": (20_000, 202)}  # first id, data seed
    child = subprocess.Popen(  # starts its Spark while the index is built, then waits for it
        [sys.executable, str(JOBS / "race_writer.py"), path, "1", str(writers["child"][0]),
         str(RACE_ROWS), str(writers["child"][1]), str(barrier_dir), "child"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        cwd=str(REPO))
    try:
        ANNIndex(indexPath=path, numPartitions=NUM_PARTITIONS, targetRecall=0).fit(
            frame(spark, np.arange(2000), base[:2000]))
    except BaseException:
        child.kill()
        child.communicate()
        raise
    before = listing(path)
    outcome = {}
    first, seed = writers["parent"]
    vectors, table = race_writer.vectors_table(first, RACE_ROWS, seed)
    with pytest.MonkeyPatch.context() as patch:
        paused = race_writer.pause_publishing(str(barrier_dir), "parent", patch.setattr)
        try:
            version = ANNIndexModel.load(path, version=1).add(
                spark.createDataFrame(table)).manifest.version
            outcome["parent"] = {"code": 0, "result": {"status": "published",
                                                       "version": version}}
        except ConcurrentUpdateError as err:
            outcome["parent"] = {"code": race_writer.CONFLICT_EXIT,
                                 "result": {"status": "conflict", "message": str(err)}}
        finally:
            race_writer.barrier(str(barrier_dir), "parent")  # never leave the child waiting
    outcome["parent"]["result"]["metAtBarrier"] = paused["met"]
    outcome["parent"].update(stderr="", first=first, vectors=vectors)
    try:
        out, err = child.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    lines = [json.loads(line[len("RESULT "):]) for line in out.splitlines()
             if line.startswith("RESULT ")]
    first, seed = writers["child"]
    outcome["child"] = {"code": child.returncode, "result": lines[-1] if lines else {},
                        "stderr": err[-3000:], "first": first,
                        "vectors": race_writer.vectors_table(first, RACE_ROWS, seed)[0]}
    print(f"\nrace: {({n: o['result'].get('status') for n, o in outcome.items()})}, "
          f"child driver took {outcome['child']['result'].get('seconds')} s")
    met = {n: o["result"].get("metAtBarrier") for n, o in outcome.items()}
    assert met == {"parent": True, "child": True}, (
        f"the writers did not both publish at the barrier: {met}; "
        f"child: {outcome['child']['result']} {outcome['child']['stderr'][-1500:]}")
    return path, before, outcome


def _winner_and_loser(outcome):
    codes = {name: o["code"] for name, o in outcome.items()}
    assert sorted(codes.values()) == [0, 3], (
        f"expected one writer to publish (0) and one to get ConcurrentUpdateError (3): "
        f"{ {n: (o['code'], o['result'], o['stderr'][-800:]) for n, o in outcome.items()} }")
    winner = next(n for n, c in codes.items() if c == 0)
    loser = next(n for n, c in codes.items() if c == 3)
    return outcome[winner], outcome[loser]


@pytest.mark.heavy
def test_racing_writers_in_two_processes_exactly_one_wins(spark, pool, race):
    base, _, queries = pool
    path, before, outcome = race
    winner, loser = _winner_and_loser(outcome)
    assert winner["result"]["version"] == 2
    assert "version 2" in loser["result"]["message"]
    newest = ANNIndexModel.load(path)
    assert newest.manifest.version == 2 and newest.summary()["numVectors"] == 2000 + RACE_ROWS
    for side, expect_found in ((winner, True), (loser, False)):
        ids = np.arange(side["first"], side["first"] + RACE_ROWS)
        probes = vectors_frame(spark, side["vectors"][:30], id_name="qid")
        found, _ = answers(newest, probes)
        tops = [f[0] for f in found]
        if expect_found:
            assert tops == ids[:30].tolist(), "the winner's rows are not in the newest version"
        else:
            assert not {i for f in found for i in f} & set(ids.tolist()), (
                "the loser's rows are in the newest version")
    live = Live()
    live.put(np.arange(2000), base[:2000])
    previous = ANNIndexModel.load(path, version=1)
    check(previous, live, queries, vectors_frame(spark, queries, id_name="qid"),
          "version 1 after the race")
    new_files = set(listing(path)) - set(before)
    runs = {"/".join(f.split("/")[:2]) + "/" for f in referenced_files(newest.manifest)}
    stray = {f for f in new_files
             if not f.startswith("manifests/") and not any(f.startswith(r) for r in runs)}
    assert not stray, f"files left behind by the losing writer: {sorted(stray)[:10]}"


@pytest.mark.heavy
def test_racing_loser_error_names_both_versions(race):
    _, _, outcome = race
    _, loser = _winner_and_loser(outcome)
    message = loser["result"]["message"]
    assert "version 2" in message and "version 1" in message, message


@pytest.fixture(scope="module")
def contested(spark, pool, index_pool, tmp_path_factory):
    """An index with deleted rows in every partition, for stale writers to race on."""
    model = pooled(spark, pool, index_pool, 2000, tmp_path_factory.mktemp("stale") / "index")
    return model.delete(np.arange(0, 2000, 5).tolist())


@pytest.mark.parametrize("operation", [
    "add", "delete", "compact",
    "rebalance",
])
def test_a_stale_writer_fails_and_leaves_nothing(spark, pool, contested, operation):
    """Another writer publishes from the same version first: the stale one raises
    ConcurrentUpdateError naming both versions, the other's version stays the newest
    and answers, and the stale writer leaves no file behind."""
    base, _, _ = pool
    path = contested.manifest.root
    stale = ANNIndexModel.load(path)
    offset = 3000 + 100 * ["add", "delete", "compact", "rebalance"].index(operation)
    other_ids = np.arange(offset, offset + 50)
    winner = stale.add(frame(spark, other_ids, base[other_ids]))
    before = listing(path)
    with pytest.raises(ConcurrentUpdateError) as caught:
        if operation == "add":
            stale.add(frame(spark, [5000, 5001], base[[5000, 5001]]))
        elif operation == "delete":
            stale.delete([1, 2, 3])
        elif operation == "compact":
            stale.compact(minDeletedShare=0.0)
        else:
            stale.rebalance(maxDrift=0.0)
    message = str(caught.value)
    assert f"version {winner.manifest.version}" in message
    assert f"version {stale.manifest.version}" in message
    newest = ANNIndexModel.load(path)
    assert newest.manifest.version == winner.manifest.version
    found, _ = answers(newest, vectors_frame(spark, base[other_ids[:5]], id_name="qid"))
    assert [f[0] for f in found] == other_ids[:5].tolist()
    after = listing(path)
    assert after == before, (
        f"the stale {operation} left files: {sorted(set(after) - set(before))[:10]}")


# --------------------------------------------------------------------------
# 5. vacuum
# --------------------------------------------------------------------------


def data_bytes(root) -> int:
    return sum(s for p, s in listing(root).items() if p.startswith("data/"))


def unreferenced(root, models) -> list[str]:
    """Run and partition directories under data/, deletes/ and locations/ that hold no
    file any of ``models`` names, and part files in runs that none of them names."""
    needed = set().union(*(referenced_files(m.manifest) for m in models))
    stale = []
    for kind in ("data", "deletes", "locations"):
        for run in sorted(os.listdir(os.path.join(root, kind))) if os.path.isdir(
                os.path.join(root, kind)) else []:
            prefix = f"{kind}/{run}/"
            if not any(f.startswith(prefix) for f in needed):
                stale.append(prefix)
                continue
            for part in sorted(os.listdir(os.path.join(root, prefix))):
                if os.path.isdir(os.path.join(root, prefix, part)) and not any(
                        f.startswith(prefix + part + "/") for f in needed):
                    stale.append(prefix + part)
                elif part.startswith("part-") and prefix + part not in needed:
                    stale.append(prefix + part)
    return stale


@pytest.fixture(scope="module")
def versions5(spark, pool, index_pool, tmp_path_factory):
    """Five versions: fit; add to partitions 0 and 1; delete; add to 0; add to 1.
    Returns the path, the answers of every version, and the data bytes."""
    base, _, queries = pool
    path = str(tmp_path_factory.mktemp("vacuum") / "index")
    qdf = vectors_frame(spark, queries, id_name="qid")
    v1 = pooled(spark, pool, index_pool, 2000, path)
    near = {p: rows_near_partition(v1, p, 40, seed=p) for p in (0, 1)}
    v2 = v1.add(frame(spark, np.arange(3000, 3080), np.vstack([near[0], near[1]])))
    assert changed_partitions(v1, v2) == {0, 1}
    v3 = v2.delete(np.arange(0, 2000, 7).tolist())
    v4 = v3.add(frame(spark, np.arange(3100, 3110), rows_near_partition(v1, 0, 10, seed=10)))
    assert changed_partitions(v3, v4) == {0}
    v5 = v4.add(frame(spark, np.arange(3200, 3210), rows_near_partition(v1, 1, 10, seed=11)))
    assert changed_partitions(v4, v5) == {1}
    models = [v1, v2, v3, v4, v5]
    assert [m.manifest.version for m in models] == [1, 2, 3, 4, 5]
    return path, {m.manifest.version: answers(m, qdf) for m in models}, data_bytes(path), qdf


@pytest.fixture(scope="module")
def vacuumed(spark, versions5):
    path, _, _, _ = versions5
    return ANNIndexModel.load(path).vacuum(retainVersions=2, retentionHours=0), data_bytes(path)


def test_vacuum_keeps_every_file_retained_versions_need(spark, versions5, vacuumed):
    """vacuum(retainVersions=2): versions 4 and 5 load and answer exactly as before,
    versions 1-3 fail to load with IndexFormatError, and no run, partition directory
    or part file that neither retained version names is left (a file of several
    partitions' rows stays while a retained version names it for one of them)."""
    path, before, bytes_before, qdf = versions5
    report, bytes_after = vacuumed
    assert report["keptVersions"] == [4, 5] and report["removedVersions"] == [1, 2, 3]
    kept = [ANNIndexModel.load(path, version=v) for v in (4, 5)]
    for model in kept:
        assert answers(model, qdf) == before[model.manifest.version]
        for f in referenced_files(model.manifest):
            assert os.path.isfile(os.path.join(path, f)), f
    for version in (1, 2, 3):
        with pytest.raises(IndexFormatError, match=f"no committed version {version}"):
            ANNIndexModel.load(path, version=version)
    assert bytes_after <= bytes_before and report["removedPaths"]
    assert unreferenced(path, kept) == []
    print(f"\nvacuum(retainVersions=2): data/ {bytes_before} -> {bytes_after} bytes")


@pytest.fixture(scope="module")
def vacuumed_by_cli(spark, versions5, vacuumed):
    """``sparkann vacuum`` run in this process, on the test session: (exit code, stdout)."""
    from sparkann import cli

    path, _, _, _ = versions5
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["vacuum", "--index", path, "--retain-versions", "1",
                         "--retention-hours", "0", "--log-level", "ERROR"])
    return code, out.getvalue()


def test_vacuum_command_line(spark, versions5, vacuumed_by_cli):
    """sparkann vacuum --index PATH --retain-versions 1 prints a JSON report; the
    newest version still answers as before, version 4 is gone."""
    path, before, _, qdf = versions5
    code, stdout = vacuumed_by_cli
    assert code == 0, stdout[-3000:]
    report = json.loads(stdout[stdout.index("{"):])
    assert report["keptVersions"] == [5] and report["removedVersions"] == [4]
    newest = ANNIndexModel.load(path)
    assert answers(newest, qdf) == before[5]
    with pytest.raises(IndexFormatError):
        ANNIndexModel.load(path, version=4)


def test_a_second_vacuum_removes_what_the_first_left_partly(versions5, vacuumed_by_cli):
    path, _, _, _ = versions5
    assert vacuumed_by_cli[0] == 0
    assert unreferenced(path, [ANNIndexModel.load(path)]) == []


# --------------------------------------------------------------------------
# 6. a small delete writes little
# --------------------------------------------------------------------------

BIG_ROWS = 50_000  # the smaller the index, the harder its one-percent bound


@pytest.fixture(scope="module")
def big(spark, tmp_path_factory):
    vectors = datasets.clustered(BIG_ROWS, DIM, seed=23)
    path = str(tmp_path_factory.mktemp("big") / "index")
    started = time.perf_counter()
    model = ANNIndex(indexPath=path, numPartitions=NUM_PARTITIONS, targetRecall=0,
                     efConstruction=40).fit(frame(spark, np.arange(BIG_ROWS), vectors))
    print(f"\nbuilt {BIG_ROWS} x {DIM} in {time.perf_counter() - started:.1f} s")
    return model, vectors


def _measured(model, update):
    root = model.manifest.root
    before = listing(root)
    updated = update(model)
    written = written_between(before, listing(root))
    return updated, sum(written.values()), written


def test_a_one_id_delete_writes_under_one_percent_of_the_index(spark, big):
    model, vectors = big
    total = version_bytes(model)
    deleted, nbytes, files = _measured(model, lambda m: m.delete([12345]))
    share = nbytes / total
    print(f"\n1-id delete: {nbytes} bytes written in {len(files)} files = {share:.5%} of the "
          f"index version's {total} bytes")
    assert deleted.summary()["numVectors"] == BIG_ROWS - 1
    found, _ = answers(deleted, vectors_frame(spark, vectors[[12345]], id_name="qid"))
    assert 12345 not in found[0]
    assert share < 0.01, sorted(files.items())

    rng = np.random.default_rng(1)
    scattered = datasets.clustered(100, DIM, seed=23, sample_seed=3)
    added, add_bytes, _ = _measured(
        deleted, lambda m: m.add(frame(spark, np.arange(BIG_ROWS, BIG_ROWS + 100), scattered)))
    base_bytes = version_bytes(deleted)
    touched = changed_partitions(deleted, added)
    print(f"100-row add (rows from every cluster, {len(touched)} of {NUM_PARTITIONS} partitions "
          f"touched): {add_bytes} bytes = {add_bytes / base_bytes:.2%} of the index")
    local = rows_near_partition(added, 0, 100, seed=int(rng.integers(1 << 30)))
    one, one_bytes, _ = _measured(
        added, lambda m: m.add(frame(spark, np.arange(BIG_ROWS + 100, BIG_ROWS + 200), local)))
    assert changed_partitions(added, one) == {0}
    part_share = os.path.getsize(os.path.join(
        added.manifest.root, added.manifest.partitions.files[0])) / version_bytes(added)
    one_share = one_bytes / version_bytes(added)
    print(f"100-row add (rows of one partition): {one_bytes} bytes = {one_share:.2%} of the "
          f"index (that partition's file: {part_share:.2%})")
    assert one_share < part_share + 0.01
    assert one.summary()["numVectors"] == BIG_ROWS - 1 + 200
