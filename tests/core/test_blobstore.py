"""The local content-addressed blob store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from core.blobstore import LocalBlobStore
from core.errors import BlobMissing, ValidationFailed


class TestLocalBlobStore:
    def test_put_is_content_addressed_and_idempotent(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        key = store.put(b"hello")
        assert key == hashlib.sha256(b"hello").hexdigest()
        assert store.put(b"hello") == key
        assert store.get(key) == b"hello"
        assert store.exists(key)
        assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1

    def test_delete_and_missing(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        key = store.put(b"bytes")
        store.delete(key)
        store.delete(key)
        assert not store.exists(key)
        with pytest.raises(BlobMissing):
            store.get(key)

    @pytest.mark.parametrize("key", ["../../etc/passwd", "ab", "Z" * 64, ""])
    def test_keys_never_become_paths(self, tmp_path: Path, key: str) -> None:
        with pytest.raises(ValidationFailed):
            LocalBlobStore(tmp_path).get(key)

    def test_ping(self, tmp_path: Path) -> None:
        LocalBlobStore(tmp_path).ping()

    def test_put_fsyncs_the_file_and_its_folder_before_returning(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # After a power loss a row written after put() returned must find the whole file: the
        # file's bytes are synced before the rename and the folder entry after it.
        events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: str, dst: str) -> None:
            events.append(("replace", str(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        store = LocalBlobStore(tmp_path)
        key = store.put(b"durable")
        target = store.path(key)
        at = events.index(("replace", str(target)))
        before, after = events[:at], events[at + 1 :]
        assert any(kind == "fsync" and Path(p).name.startswith(".tmp-") for kind, p in before)
        assert ("fsync", str(target.parent)) in after
        # The two folders the first blob created are durable in their parents too.
        assert ("fsync", str(tmp_path)) in events
        assert ("fsync", str(target.parent.parent)) in events

    @pytest.mark.parametrize("damage", [b"", b"durabl", b"Durable"])
    def test_put_rewrites_a_damaged_blob(self, tmp_path: Path, damage: bytes) -> None:
        # An empty file left by a crash, a short one, one of the right size but other bytes.
        store = LocalBlobStore(tmp_path)
        key = store.put(b"durable")
        store.path(key).write_bytes(damage)
        assert store.put(b"durable") == key
        assert store.get(key) == b"durable"


class TestS3BlobStore:
    """The S3 backend against moto's in-process S3 (same interface as the local store)."""

    @pytest.fixture
    def store(self, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
        moto = pytest.importorskip("moto")
        import boto3

        from core.blobstore import S3BlobStore
        from core.settings import StorageSettings

        with moto.mock_aws():
            boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="blobs")
            settings = StorageSettings(
                backend="s3",
                s3_bucket="blobs",
                s3_access_key="k" * 16,
                s3_secret_key="s" * 16,
                s3_region="us-east-1",
            )
            yield S3BlobStore(settings)

    def test_round_trip(self, store) -> None:  # type: ignore[no-untyped-def]
        key = store.put(b"portrait bytes")
        assert key == hashlib.sha256(b"portrait bytes").hexdigest()
        assert store.put(b"portrait bytes") == key
        assert store.exists(key)
        assert store.get(key) == b"portrait bytes"
        store.ping()
        store.delete(key)
        assert not store.exists(key)
        with pytest.raises(BlobMissing):
            store.get(key)
        with pytest.raises(ValidationFailed):
            store.get("../x")

    def test_scan_and_a_second_put_renews_the_time(self, store) -> None:  # type: ignore[no-untyped-def]
        """What the garbage collection reads: blobs by LastModified, and a `put` of bytes the
        bucket already has renews it (a server-side copy, nothing uploaded again)."""
        import time
        from datetime import UTC, datetime, timedelta

        key = store.put(b"an old portrait")
        store.client.put_object(Bucket="blobs", Key="notes.txt", Body=b"not a blob")
        first = store.stored_at(key)
        assert first is not None
        later = datetime.now(UTC) + timedelta(seconds=5)
        assert list(store.scan(later)) == [key]
        assert list(store.scan(first - timedelta(seconds=1))) == []
        time.sleep(1.1)
        uploads: list[str] = []
        store.client.meta.events.register(
            "before-call.s3.PutObject", lambda **kw: uploads.append("put")
        )
        assert store.put(b"an old portrait") == key
        renewed = store.stored_at(key)
        assert renewed is not None
        assert renewed > first
        assert uploads == []
        assert store.get(key) == b"an old portrait"
        assert store.stored_at("0" * 64) is None
