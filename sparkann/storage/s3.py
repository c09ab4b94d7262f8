"""Atomic creates on S3: ``PutObject`` with ``If-None-Match: *``.

S3 (since 2024) and S3-compatible stores that support conditional writes create an
object only if its key is free, and answer 412 ``PreconditionFailed`` otherwise; of
writers racing for one key exactly one succeeds. :class:`ConditionalS3Store` uses
that for :meth:`Store.create_new` (the commit point of a version) on ``s3://`` and
``s3a://`` roots when boto3 is importable; everything else goes through the store it
wraps (Hadoop's or pyarrow's file system).

The client comes from boto3's own configuration (environment, profiles, instance
roles; ``AWS_ENDPOINT_URL`` for another endpoint), and for ``s3a://`` roots from the
Spark session's Hadoop settings where they are set: ``fs.s3a.endpoint``,
``fs.s3a.endpoint.region``, ``fs.s3a.access.key``, ``fs.s3a.secret.key``,
``fs.s3a.session.token``, ``fs.s3a.path.style.access`` and
``fs.s3a.connection.ssl.enabled``, each also per bucket
(``fs.s3a.bucket.<bucket>.<name>``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from typing import Any, Callable

from .store import Entry, Store

S3_SCHEMES = ("s3", "s3a")
CONFLICT_ATTEMPTS = 8  # tries while S3 answers 409 (a conditional write to the key is running)
log = logging.getLogger(__name__)

Settings = Callable[[str], "str | None"]  # a Hadoop setting's value by name, or None


def boto3_available() -> bool:
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True


def split_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket, key) of ``s3://bucket/key`` or ``s3a://bucket/key``."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() not in S3_SCHEMES or not bucket or not key:
        raise ValueError(f"{uri!r} is not an S3 object URI (s3://bucket/key)")
    return scheme.lower(), bucket, key


def s3a_client_args(settings: Settings, bucket: str) -> dict:
    """boto3 client arguments from the Hadoop settings of an ``s3a://`` bucket (those
    set; boto3's own configuration supplies the rest)."""
    def get(name: str) -> str | None:
        value = settings(f"fs.s3a.bucket.{bucket}.{name}") or settings(f"fs.s3a.{name}")
        return value.strip() if isinstance(value, str) and value.strip() else None

    args: dict[str, Any] = {}
    endpoint = get("endpoint")
    if endpoint:
        if "://" not in endpoint:
            secure = (get("connection.ssl.enabled") or "true").lower() != "false"
            endpoint = f"{'https' if secure else 'http'}://{endpoint}"
        args["endpoint_url"] = endpoint
    if get("endpoint.region"):
        args["region_name"] = get("endpoint.region")
    if get("access.key") and get("secret.key"):
        args["aws_access_key_id"] = get("access.key")
        args["aws_secret_access_key"] = get("secret.key")
        if get("session.token"):
            args["aws_session_token"] = get("session.token")
    if (get("path.style.access") or "").lower() == "true":
        from botocore.config import Config

        args["config"] = Config(s3={"addressing_style": "path"})
    return args


class ConditionalS3Store(Store):
    """A store whose :meth:`create_new` is a conditional PUT; the rest is ``inner``'s."""

    def __init__(self, inner: Store, settings: Settings | None = None):
        self.inner = inner
        self._settings = settings
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def client(self, scheme: str, bucket: str):
        with self._lock:
            key = (scheme, bucket)
            if key not in self._clients:
                import boto3

                args = {}
                if scheme == "s3a" and self._settings is not None:
                    args = s3a_client_args(self._settings, bucket)
                self._clients[key] = boto3.session.Session().client("s3", **args)
            return self._clients[key]

    def create_new(self, path, data):
        scheme, bucket, key = split_uri(path)
        client = self.client(scheme, bucket)
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
                return True
            except Exception as err:
                status, code = _error(err)
                if status == 412 or code == "PreconditionFailed":
                    # taken: by another writer, or by this PUT if its response was lost
                    # and the client sent it again
                    return self._holds(client, bucket, key, data)
                if status == 409 or code == "ConditionalRequestConflict":
                    time.sleep(random.uniform(0.5, 1.0) * min(0.05 * 2 ** attempt, 2.0))
                    continue
                raise
        raise OSError(f"could not create {path}: S3 kept answering 409 "
                      "ConditionalRequestConflict")

    @staticmethod
    def _holds(client, bucket: str, key: str, data: bytes) -> bool:
        """Whether the object at ``key`` holds exactly ``data``."""
        try:
            found = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as err:
            if _error(err)[1] in ("NoSuchKey", "404"):
                return False
            raise
        return hashlib.sha256(found).digest() == hashlib.sha256(data).digest()

    def read(self, path: str, max_bytes: int) -> bytes:
        return self.inner.read(path, max_bytes)

    def write(self, path: str, data: bytes) -> None:
        self.inner.write(path, data)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def list(self, path: str) -> list[Entry]:
        return self.inner.list(path)

    def delete(self, path: str) -> None:
        self.inner.delete(path)

    def qualify(self, path: str) -> str:
        return self.inner.qualify(path)


def _error(err: Exception) -> tuple[int, str]:
    """(HTTP status, error code) of a botocore ClientError; (0, "") otherwise."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return 0, ""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0), str(response.get("Error", {}).get("Code", ""))
