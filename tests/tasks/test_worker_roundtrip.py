"""Jobs through a real Celery worker process, on Redis and on the embedded SQLite transport:
round trip, idempotent redelivery, and the outbox sweep re-sending a job that never reached
the broker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from core.blobstore import LocalBlobStore
from core.settings import AppConfig
from db.base import utcnow
from db.models import Job, JobStatus
from db.session import Database
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.dispatch import dispatch_job
from tasks.sweep import sweep_once
from tests.utils.factories import make_portrait_job, make_selfie, make_style, make_user
from tests.utils.workers import WorkerProcess, redis_available, redis_test_url, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["redis", "embedded"])
def worker_env(
    request: pytest.FixtureRequest, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Environment shared by the worker process and the test's own Celery client."""
    if request.param == "redis" and not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    data = tmp_path_factory.mktemp(f"data-{request.param}")
    env = {
        "DATA_DIR": str(data),
        "DATABASE_URL": database_url,
        "ENGINE_PROFILE": "tiny",
        "ENGINE_NUM_CANDIDATES": "2",
        "ENGINE_STEPS": "2",
        "TELEGRAM_TOKEN": "123:test",
        "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
    }
    if request.param == "redis":
        env["BROKER_URL"] = redis_test_url()
    return env


@pytest.fixture(scope="module")
def worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = WorkerProcess(worker_env, "gpu,io", log, concurrency=1)
    yield proc
    proc.stop()


@pytest.fixture
def client(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, committed_db: Database
) -> Iterator[WorkerContext]:
    """This test process's view: same settings, a Celery client, the committed database."""
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    if "BROKER_URL" not in worker_env:
        monkeypatch.delenv("BROKER_URL", raising=False)
    config = AppConfig()
    ctx = WorkerContext(config, create_celery(config))
    ctx.db = committed_db
    set_context(ctx)
    yield ctx
    set_context(None)


def _job(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _new_job(ctx: WorkerContext) -> int:
    blobs = LocalBlobStore(ctx.config.storage.blobs_path)
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=555)
        photo = make_selfie(s, blobs, user)
        style = make_style(s)
        return make_portrait_job(s, user, photo, style).id


class TestRoundTrip:
    def test_job_round_trip_and_idempotent_redelivery(
        self, worker: WorkerProcess, client: WorkerContext
    ) -> None:
        job_id = _new_job(client)
        assert dispatch_job(client.celery, client.db, job_id)
        assert _job(client.db, job_id).dispatched_at is not None

        wait_for(
            lambda: _job(client.db, job_id).delivered_at is not None,
            120,
            "job delivered",
            worker,
        )
        job = _job(client.db, job_id)
        assert job.attempts == 1
        assert job.error_code is None
        assert len(job.result_blobs) == 2
        for key in job.result_blobs:
            image = Image.open(io.BytesIO(client.blobs.get(key)))
            assert image.size == (64, 64)
        assert len(job.result_meta["seeds"]) == 2

        # A redelivered message for a finished job does nothing.
        client.celery.send_task("portrait.generate", args=[job_id], queue="gpu")
        wait_for(lambda: "redelivery ignored" in worker.log(), 60, "redelivery seen", worker)
        again = _job(client.db, job_id)
        assert again.attempts == 1
        assert again.result_blobs == job.result_blobs
        assert again.status is JobStatus.SUCCEEDED
        assert again.delivered_at is not None

    def test_sweep_resends_a_job_that_never_reached_the_broker(
        self, worker: WorkerProcess, client: WorkerContext
    ) -> None:
        job_id = _new_job(client)
        with client.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            # Committed a minute ago, never published (the bot died between commit and send).
            job.created_at = utcnow() - timedelta(minutes=1)
        result = sweep_once(outbox_grace=timedelta(seconds=30), time_limit=timedelta(minutes=15))
        assert result["resent"] == 1
        wait_for(
            lambda: _job(client.db, job_id).delivered_at is not None,
            120,
            "swept job delivered",
            worker,
        )
        # A second sweep finds nothing to do.
        assert (
            sweep_once(outbox_grace=timedelta(seconds=30), time_limit=timedelta(minutes=15))[
                "resent"
            ]
            == 0
        )


def test_worker_fixture_paths_exist(tmp_path: Path) -> None:
    assert (Path(__file__).parents[1] / "fixtures" / "faces" / "man_pose1.png").exists()
