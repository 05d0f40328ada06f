"""The local content-addressed blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.blobstore import LocalBlobStore
from service.errors import BlobMissing, ValidationFailed


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
