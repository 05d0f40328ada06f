"""Content-addressed blob storage (sha256 keys): a local folder, or an S3-compatible bucket.

Keys are the hex sha256 of the bytes, so writing the same image twice stores it once and a
key can never point at different content. Deleting is explicit (privacy: /forget)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from core.errors import BlobMissing, ValidationFailed
from core.settings import StorageSettings

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    """The blob key of these bytes."""
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (a rename, a new file or subfolder) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(path: Path) -> None:
    """`mkdir -p`, with each folder it creates made durable in its parent."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see either nothing or all of it, even after a power loss.

    The bytes go to a temp file that is fsynced, renamed over `path`, and the folder is fsynced
    too: once this returns, a database row may point at the file (without the fsyncs a crash
    can leave the renamed name pointing at an empty or partial file)."""
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _check_key(key: str) -> str:
    # Keys reach us from the database and the admin API; never let one become a path.
    if not _KEY.match(key):
        raise ValidationFailed(f"not a blob key: {key!r}")
    return key


class BlobStore(Protocol):
    """What every blob backend offers."""

    def put(self, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def ping(self) -> None: ...

    def scan(self, before: datetime) -> Iterator[str]:
        """Keys of the blobs last written before `before` (a `put` of bytes already stored
        counts as a write), for the garbage collection of unreferenced blobs."""
        ...

    def stored_at(self, key: str) -> datetime | None:
        """When the blob was last written (None: it is gone)."""
        ...


class LocalBlobStore:
    """Blobs as files `ab/cd/abcd…` under a root folder; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the blob with this key lives (it may not exist)."""
        _check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        """Store bytes, return their key; a damaged copy already there is written again."""
        key = sha256_hex(data)
        target = self.path(key)
        if self._intact(target, key, len(data)):
            # Already stored: written again, so the garbage collection counts its age from now.
            os.utime(target)
        else:
            write_atomic(target, data)
        return key

    @staticmethod
    def _intact(target: Path, key: str, size: int) -> bool:
        """Whether the file holds exactly the blob (a crash or a bad disk can leave it empty,
        short or changed, and a put that trusted the name would never repair it)."""
        try:
            if target.stat().st_size != size:
                return False
            return sha256_hex(target.read_bytes()) == key
        except FileNotFoundError:
            return False

    def get(self, key: str) -> bytes:
        """Read a blob; BlobMissing if it is gone."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {key} not found") from None

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        """Remove a blob; deleting a missing blob is fine."""
        self.path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        """Raise if the folder is not writable."""
        probe = self.root / ".ping"
        probe.write_bytes(b"ok")
        probe.unlink()

    def scan(self, before: datetime) -> Iterator[str]:
        cutoff = before.timestamp()
        for first in sorted(self.root.iterdir()):
            if not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for entry in os.scandir(second):
                    # Only blob files: temp files of a write in progress start with ".tmp-".
                    if _KEY.match(entry.name) and entry.stat().st_mtime < cutoff:
                        yield entry.name

    def stored_at(self, key: str) -> datetime | None:
        try:
            return datetime.fromtimestamp(self.path(key).stat().st_mtime, UTC)
        except FileNotFoundError:
            return None


class S3BlobStore:
    """Blobs as objects named by their key in an S3-compatible bucket (boto3, optional extra)."""

    def __init__(self, settings: StorageSettings) -> None:
        import boto3  # optional dependency: pip install 'facechain-bot[s3]'

        assert settings.s3_access_key is not None
        assert settings.s3_secret_key is not None
        self.bucket = settings.s3_bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        )

    def put(self, data: bytes) -> str:
        from botocore.exceptions import ClientError

        key = sha256_hex(data)
        try:
            # Already stored: a server-side copy onto itself renews LastModified, from which the
            # garbage collection counts its age (no upload of bytes the bucket already has).
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
            )
        except ClientError:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return key

    def get(self, key: str) -> bytes:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=_check_key(key))
        except self.client.exceptions.NoSuchKey:
            raise BlobMissing(f"blob {key} not found") from None
        body: bytes = obj["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=_check_key(key))
        except ClientError:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=_check_key(key))

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    def scan(self, before: datetime) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        for page in pages:
            for item in page.get("Contents", []):
                if _KEY.match(item["Key"]) and item["LastModified"] < before:
                    yield item["Key"]

    def stored_at(self, key: str) -> datetime | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=_check_key(key))
        except ClientError:
            return None
        modified: datetime = head["LastModified"]
        return modified


def create_blob_store(settings: StorageSettings) -> BlobStore:
    """The blob backend the settings name."""
    if settings.backend == "s3":
        return S3BlobStore(settings)
    return LocalBlobStore(settings.blobs_path)
