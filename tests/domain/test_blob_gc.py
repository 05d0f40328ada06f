"""Garbage collection of the blob store: files no row points at, left by a process that died
between storing a file and recording it, go once they are older than the grace period; files a
row points at, and young ones, stay; a file written again since the scan stays."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.settings import BrokerSettings
from db.models import Job, JobKind, Photo, PhotoKind
from db.repositories.blobs import BlobReferenceRepository
from db.session import Database
from domain import blobs as gc
from service.blobs_cmd import blobs_command
from tests.utils.factories import make_user

NOW = datetime.now(UTC)


def aged(store: LocalBlobStore, data: bytes, hours: float) -> str:
    """A blob last written `hours` ago."""
    key = store.put(data)
    at = (NOW - timedelta(hours=hours)).timestamp()
    os.utime(store.path(key), (at, at))
    return key


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def record(db: Database, *, photo: str | None = None, result: str | None = None) -> None:
    def add(session: Session) -> None:
        user = make_user(session, telegram_id=6100 + len(session.query(Job).all()) + 1)
        if photo is not None:
            session.add(
                Photo(
                    user_id=user.id,
                    kind=PhotoKind.SELFIE,
                    sha256=photo,
                    size_bytes=1,
                    width=1,
                    height=1,
                    faces=[],
                )
            )
        session.add(
            Job(
                user_id=user.id,
                kind=JobKind.PORTRAIT,
                params={},
                result_blobs=[result] if result else [],
            )
        )

    db.call(add)


class TestCollect:
    def test_only_old_unreferenced_blobs_go(
        self, committed_db: Database, store: LocalBlobStore
    ) -> None:
        selfie = aged(store, b"a selfie", 72)
        album = aged(store, b"a recorded portrait", 72)
        orphan = aged(store, b"a portrait nobody recorded", 72)
        young = aged(store, b"a portrait being recorded", 2)
        record(committed_db, photo=selfie, result=album)

        dry = gc.collect_garbage(committed_db, store, now=NOW, dry_run=True)
        assert (dry.scanned, dry.unreferenced, dry.deleted) == (3, 1, 0)
        assert store.exists(orphan)

        done = gc.collect_garbage(committed_db, store, now=NOW)

        assert (done.scanned, done.unreferenced, done.deleted) == (3, 1, 1)
        assert not store.exists(orphan)
        assert all(store.exists(k) for k in (selfie, album, young))

    def test_the_grace_is_never_under_a_day(
        self, committed_db: Database, store: LocalBlobStore
    ) -> None:
        orphan = aged(store, b"an hour-old orphan", 1)
        assert gc.collect_garbage(committed_db, store, grace=timedelta(0), now=NOW).deleted == 0
        assert store.exists(orphan)

    def test_written_again_since_the_scan_stays(
        self, committed_db: Database, store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The same bytes stored again (a selfie sent twice) renew the blob's time: a job about
        to record it keeps it, even when the scan listed it as old."""
        orphan = aged(store, b"the same selfie", 72)
        listed = list(store.scan(NOW - gc.MIN_GRACE))
        assert listed == [orphan]
        monkeypatch.setattr(LocalBlobStore, "scan", lambda self, before: iter(listed))

        assert store.put(b"the same selfie") == orphan
        assert gc.collect_garbage(committed_db, store, now=NOW).deleted == 0
        assert store.exists(orphan)

    def test_a_row_committed_since_the_first_read_keeps_its_blob(
        self, committed_db: Database, store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        late = aged(store, b"recorded after the snapshot", 72)
        record(committed_db, result=late)
        # The one-pass snapshot was taken before that row committed.
        monkeypatch.setattr(BlobReferenceRepository, "all_referenced", lambda self: set())

        assert gc.collect_garbage(committed_db, store, now=NOW).deleted == 0
        assert store.exists(late)

    def test_scan_skips_files_that_are_not_blobs(self, store: LocalBlobStore) -> None:
        key = aged(store, b"a blob", 48)
        folder = store.path(key).parent
        (folder / ".tmp-partial").write_bytes(b"a write in progress")
        (store.root / ".ping").write_bytes(b"ok")
        old = (NOW - timedelta(hours=48)).timestamp()
        os.utime(folder / ".tmp-partial", (old, old))
        assert list(store.scan(NOW - timedelta(hours=24))) == [key]
        assert list(store.scan(NOW - timedelta(hours=72))) == []


def test_grace_covers_the_longest_job() -> None:
    assert gc.gc_grace(BrokerSettings()) == timedelta(hours=24)
    long_training = BrokerSettings(train_time_limit=20 * 3600)
    assert gc.gc_grace(long_training) == timedelta(hours=40)


def test_beat_collects_daily_on_the_io_queue() -> None:
    from core.settings import AppConfig
    from tasks.celery_app import IO_TASKS, beat_schedule

    [entry] = [e for e in beat_schedule(AppConfig()).values() if "collect_blobs" in str(e["task"])]
    assert entry["schedule"] == timedelta(hours=24)
    assert entry["options"] == {"queue": "io"}
    assert entry["task"] in IO_TASKS


def test_the_command(
    committed_db: Database, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`facechain-bot blobs gc [--dry-run]` on the configured store."""
    import argparse

    from core.settings import AppConfig, DatabaseSettings, StorageSettings

    config = AppConfig(
        database=DatabaseSettings(url=database_url),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
    )
    store = LocalBlobStore(config.storage.blobs_path)
    orphan = aged(store, b"left behind", 72)

    assert blobs_command(config, argparse.Namespace(dry_run=True)) == 0
    assert "1 unreferenced, would delete 1" in capsys.readouterr().out
    assert store.exists(orphan)
    assert blobs_command(config, argparse.Namespace(dry_run=False)) == 0
    assert "deleted 1" in capsys.readouterr().out
    assert not store.exists(orphan)
