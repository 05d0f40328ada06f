"""The hourly `maintenance.expire` beat task: photos, results past LIMITS_RESULT_RETENTION_DAYS
and the pictures of ended trainings, in one run on the real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.blobstore import LocalBlobStore
from core.settings import AppConfig, BrokerSettings, DatabaseSettings, LimitsSettings
from db.base import utcnow
from db.models import Job, JobStatus, StyleTraining
from db.session import Database
from tasks.celery_app import create_celery
from tasks.context import set_context
from tests.utils.factories import make_user


@pytest.fixture
def ctx(committed_db: Database, database_url: str, tmp_path: Path) -> Iterator[SimpleNamespace]:
    config = AppConfig(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://"),
        limits=LimitsSettings(result_retention_days=7),
    )
    context = SimpleNamespace(
        config=config,
        db=committed_db,
        celery=create_celery(config),
        blobs=LocalBlobStore(tmp_path / "blobs"),
    )
    set_context(context)  # type: ignore[arg-type]
    yield context
    set_context(None)


def test_expire_deletes_old_results_and_ended_training_pictures(ctx: SimpleNamespace) -> None:
    from tasks.sweep import expire

    blobs: LocalBlobStore = ctx.blobs
    portrait, picture = blobs.put(b"an old portrait"), blobs.put(b"a training picture")
    with ctx.db.session() as s:
        ann = make_user(s, 6501)
        job = Job(user_id=ann.id, kind="portrait", params={}, result_blobs=[portrait])
        training_job = Job(user_id=ann.id, kind="training", params={})
        s.add_all([job, training_job])
        s.flush()
        job.transition(JobStatus.RUNNING)
        job.transition(JobStatus.SUCCEEDED, now=utcnow() - timedelta(days=8))
        training_job.transition(JobStatus.RUNNING)
        training_job.fail("internal", "boom")
        training = StyleTraining(
            user_id=ann.id,
            job_id=training_job.id,
            name="ink",
            trigger_word="ink",
            image_blobs=[picture],
            captions=[],
        )
        s.add(training)
        s.flush()
        job_id, training_id = job.id, training.id
    expire()
    assert not blobs.exists(portrait)
    assert not blobs.exists(picture)
    with ctx.db.session() as s:
        expired = s.get(Job, job_id)
        assert expired is not None
        assert expired.result_blobs == []
        assert expired.result_meta["expired_at"]
        row = s.get(StyleTraining, training_id)
        assert row is not None
        assert row.image_blobs == []
