"""Conditional creates on S3 (``If-None-Match: *``), against a local S3 server. No Spark.

moto's server, started here on 127.0.0.1 only, answers conditional PUTs as S3 does:
412 PreconditionFailed when the key exists.
"""

from __future__ import annotations

import threading

import pytest

from sparkann.storage.fs import ArrowStore, Entry, Store, join, store_for
from sparkann.storage.s3 import ConditionalS3Store, s3a_client_args, split_uri

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

BUCKET = "sparkann-test"
WRITERS = 8


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield host, port, client
    server.stop()


@pytest.fixture
def aws_env(endpoint, monkeypatch, tmp_path):
    """boto3's and pyarrow's standard environment, pointing at the local server."""
    host, port, _ = endpoint
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


class Conf:
    def __init__(self, values: dict):
        self.values = values

    def get(self, key, default=None):
        return self.values.get(key, default)


class ConnectSession:
    """What store_for needs of a Spark Connect session: its settings."""

    def __init__(self, values: dict | None = None):
        self.conf = Conf(values or {})


def s3a_session(endpoint) -> ConnectSession:
    host, port, _ = endpoint
    return ConnectSession({f"spark.hadoop.fs.s3a.{k}": v for k, v in {
        "endpoint": f"{host}:{port}", "connection.ssl.enabled": "false",
        "access.key": "test", "secret.key": "test", "endpoint.region": "us-east-1",
        "path.style.access": "true"}.items()})


def race(stores, path: str) -> tuple[list[bool], list[bytes]]:
    """Every store creates ``path`` with its own bytes at once."""
    barrier = threading.Barrier(len(stores))
    payloads = [f'{{"writer": {i}, "pad": "{"x" * 4096}"}}'.encode() for i in range(len(stores))]
    results: list = [None] * len(stores)

    def write(i):
        barrier.wait()
        try:
            results[i] = stores[i].create_new(path, payloads[i])
        except Exception as err:  # pragma: no cover - reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, payloads


def test_the_local_server_honours_if_none_match(endpoint):
    client = endpoint[2]
    client.put_object(Bucket=BUCKET, Key="probe/once", Body=b"1", IfNoneMatch="*")
    with pytest.raises(Exception) as caught:
        client.put_object(Bucket=BUCKET, Key="probe/once", Body=b"2", IfNoneMatch="*")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=BUCKET, Key="probe/once")["Body"].read() == b"1"


@pytest.mark.parametrize("round_", range(3))
def test_racing_creates_on_s3a_have_exactly_one_winner(endpoint, aws_env, round_):
    """Writers (each with its own store and client, configured from the session's
    fs.s3a settings) race to create one manifest: one True, the rest False, and the
    object holds the winner's bytes."""
    session = s3a_session(endpoint)
    stores = [store_for(session, f"s3a://{BUCKET}/race{round_}") for _ in range(WRITERS)]
    assert all(isinstance(s, ConditionalS3Store) for s in stores)
    path = f"s3a://{BUCKET}/race{round_}/manifests/v00000002.json"
    results, payloads = race(stores, path)
    assert sorted(map(str, results)) == ["False"] * (WRITERS - 1) + ["True"], results
    winner = results.index(True)
    stored = endpoint[2].get_object(Bucket=BUCKET, Key=split_uri(path)[2])["Body"].read()
    assert stored == payloads[winner]


def test_racing_creates_on_s3_use_boto3s_environment(aws_env):
    stores = [store_for(ConnectSession(), f"s3://{BUCKET}/env") for _ in range(WRITERS)]
    path = f"s3://{BUCKET}/env/manifests/v00000001.json"
    results, payloads = race(stores, path)
    assert results.count(True) == 1 and results.count(False) == WRITERS - 1, results
    assert stores[0].read(path, 1 << 20) == payloads[results.index(True)]


def test_a_create_sent_again_after_a_lost_response_counts_as_ours(endpoint, aws_env):
    """The client retries a PUT whose response was lost: S3 answers 412, and the object
    holding this write's bytes makes it a success; another writer's bytes do not."""
    store = store_for(s3a_session(endpoint), f"s3a://{BUCKET}/lost")
    path = f"s3a://{BUCKET}/lost/manifests/v00000001.json"
    assert store.create_new(path, b"mine")
    assert store.create_new(path, b"mine")
    assert not store.create_new(path, b"theirs")


class ConflictingClient:
    """S3 answering 409 ConditionalRequestConflict ``conflicts`` times, then ``final``."""

    def __init__(self, conflicts: int, final: str, stored: bytes = b""):
        self.conflicts, self.final, self.stored, self.calls = conflicts, final, stored, 0

    def put_object(self, **kwargs):
        from botocore.exceptions import ClientError

        assert kwargs["IfNoneMatch"] == "*"
        self.calls += 1
        if self.calls <= self.conflicts:
            raise ClientError({"Error": {"Code": "ConditionalRequestConflict"},
                               "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject")
        if self.final == "taken":
            raise ClientError({"Error": {"Code": "PreconditionFailed"},
                               "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject")
        self.stored = kwargs["Body"]

    def get_object(self, **kwargs):
        import io

        return {"Body": io.BytesIO(self.stored)}


@pytest.fixture
def no_sleep(monkeypatch):
    from sparkann.storage import s3

    monkeypatch.setattr(s3.time, "sleep", lambda seconds: None)


@pytest.mark.parametrize("final, expected", [("created", True), ("taken", False)])
def test_a_conflict_is_retried_until_the_key_is_settled(final, expected, no_sleep):
    store = ConditionalS3Store(ArrowStore())
    client = ConflictingClient(2, final, stored=b"another writer's")
    store._clients[("s3", BUCKET)] = client
    assert store.create_new(f"s3://{BUCKET}/m/v00000001.json", b"ours") is expected
    assert client.calls == 3


def test_endless_conflicts_raise_for_the_commit_to_read_back(no_sleep):
    store = ConditionalS3Store(ArrowStore())
    store._clients[("s3", BUCKET)] = ConflictingClient(100, "created")
    with pytest.raises(OSError, match="409"):
        store.create_new(f"s3://{BUCKET}/m/v00000001.json", b"ours")


def test_s3a_settings_become_client_arguments():
    settings = {"fs.s3a.endpoint": "minio.local:9000", "fs.s3a.connection.ssl.enabled": "false",
                "fs.s3a.access.key": "ak", "fs.s3a.secret.key": "sk",
                "fs.s3a.path.style.access": "true",
                "fs.s3a.bucket.special.endpoint": "https://other.example"}
    args = s3a_client_args(settings.get, "plain")
    assert args["endpoint_url"] == "http://minio.local:9000"
    assert (args["aws_access_key_id"], args["aws_secret_access_key"]) == ("ak", "sk")
    assert args["config"].s3["addressing_style"] == "path"
    assert s3a_client_args(settings.get, "special")["endpoint_url"] == "https://other.example"
    assert s3a_client_args({"fs.s3a.endpoint": "s3.amazonaws.com"}.get, "b") == {
        "endpoint_url": "https://s3.amazonaws.com"}
    assert s3a_client_args({}.get, "b") == {}


def test_other_stores_keep_their_create():
    assert type(store_for(ConnectSession(), "gs://bucket/index")) is ArrowStore
    assert type(store_for(ConnectSession(), "hdfs://nn/index")) is ArrowStore


class BotoStore(Store):
    """Reads, writes, lists and deletes through boto3 (pyarrow's multipart writes do not
    complete against moto); creates are the conditional store's."""

    def __init__(self, client):
        self.client = client

    def read(self, path, max_bytes):
        return self.client.get_object(Bucket=BUCKET, Key=split_uri(path)[2])["Body"].read()

    def write(self, path, data):
        self.client.put_object(Bucket=BUCKET, Key=split_uri(path)[2], Body=data)

    def exists(self, path):
        key = split_uri(path)[2]
        found = self.client.list_objects_v2(Bucket=BUCKET, Prefix=key, MaxKeys=2)
        return any(o["Key"] == key or o["Key"].startswith(key + "/")
                   for o in found.get("Contents", []))

    def list(self, path):
        prefix = split_uri(path)[2].rstrip("/") + "/"
        found = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
        return ([Entry(o["Key"][len(prefix):], False, o["LastModified"].timestamp())
                 for o in found.get("Contents", [])]
                + [Entry(p["Prefix"][len(prefix):].rstrip("/"), True, 0.0)
                   for p in found.get("CommonPrefixes", [])])

    def delete(self, path):
        key = split_uri(path)[2]
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                           Prefix=key):
            for item in page.get("Contents", []):
                if item["Key"] == key or item["Key"].startswith(key.rstrip("/") + "/"):
                    self.client.delete_object(Bucket=BUCKET, Key=item["Key"])


def test_racing_publishes_keep_every_file_of_the_committed_version(endpoint, aws_env,
                                                                    monkeypatch):
    """Two transactions on version 1 commit at once through the store layer: one
    commits version 2, the other gets ConcurrentUpdateError and removes only the file
    it wrote; every file the committed version names is still there."""
    from sparkann.storage import transaction, versions
    from sparkann.storage.format import Manifest, Partitions
    from sparkann.storage.transaction import Transaction, referenced_files
    from sparkann.storage.versions import (
        ConcurrentUpdateError,
        latest_version,
        manifest_path,
        new_run,
        publish,
        read_manifest,
    )

    root = f"s3://{BUCKET}/publish"
    session = ConnectSession()
    store = ConditionalS3Store(BotoStore(endpoint[2]))
    monkeypatch.setattr(versions, "store_for", lambda spark, path: store)
    monkeypatch.setattr(transaction, "store_for", lambda spark, path: store)

    run = new_run("data")
    files = [f"{run}/partition_id={p}/part-0.parquet" for p in range(2)]
    for name in files + [f"meta/{run.split('/')[1]}.bin"]:
        store.write(join(root, name), b"data of " + name.encode())
    publish(session, Manifest(
        root=root, version=0, index_type="hnsw", metric="l2", dim=4, id_type="long",
        build_spec={"hnswM": 16, "efConstruction": 40, "numPartitions": 2}, user_set=[],
        meta_file=f"meta/{run.split('/')[1]}.bin", meta_sha256="ab" * 32,
        partitions=Partitions(files=files, rows=[3, 4], payload_bytes=[10, 10],
                              checksums=["c0", "c1"], sq_errors=[0.0, 0.0],
                              deletes=[[], []])), None)
    assert latest_version(store, root) == 1
    base, _ = read_manifest(store, root, 1)
    barrier = threading.Barrier(2)
    outcome: list = [None, None]
    metas: list = [None, None]

    def update(i):
        try:
            with Transaction(session, root, base) as txn:
                metas[i] = txn.write_meta(f"meta of writer {i}".encode())
                barrier.wait()
                outcome[i] = txn.commit("add")[0].version
        except ConcurrentUpdateError:
            outcome[i] = "lost"

    threads = [threading.Thread(target=update, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(map(str, outcome)) == ["2", "lost"], outcome
    committed, _ = read_manifest(store, root, 2)
    winner = outcome.index(2)
    assert committed.meta_file == metas[winner] and committed.operation == "add"
    assert all(store.exists(join(root, f)) for f in referenced_files(committed))
    assert all(store.exists(join(root, f)) for f in referenced_files(base))
    assert not store.exists(join(root, metas[1 - winner]))
    assert not store.exists(manifest_path(root, 3))
    assert latest_version(store, root) == 2
