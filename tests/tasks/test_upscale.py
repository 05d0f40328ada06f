"""gpu task `portrait.upscale`, called in-process on the test database: a ×4 PNG stored and
delivery queued; progress per tile and cancel between tiles; missing weights fail the job."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from core.blobstore import LocalBlobStore
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    EngineSettings,
    StorageSettings,
)
from db.models import Job, JobKind, JobStatus
from db.session import Database
from tasks import jobs as task_jobs
from tasks import upscale as upscale_task
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tests.bot.conftest import published
from tests.utils.factories import make_user


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def worker_context(
    db: Database, database_url: str, tmp_path: Path, profile: Literal["real", "tiny"] = "tiny"
) -> WorkerContext:
    config = AppConfig(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://"),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
        engine=EngineSettings(profile=profile, models_dir=tmp_path / "models", device="cpu"),
    )
    ctx = WorkerContext(config, create_celery(config))
    ctx.db.dispose()
    ctx.db = db
    for queue in ("gpu", "io"):
        published(ctx.celery, queue)
    return ctx


@pytest.fixture
def ctx(committed_db: Database, database_url: str, tmp_path: Path) -> Iterator[WorkerContext]:
    context = worker_context(committed_db, database_url, tmp_path)
    set_context(context)
    yield context
    set_context(None)


def portrait_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def hd_job(ctx: WorkerContext, index: int = 1, size: int | None = 2048) -> tuple[int, int]:
    """A delivered two-portrait job and a queued upscale job for one of its images."""
    blobs = LocalBlobStore(ctx.config.storage.blobs_path)
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=6001)
        source = Job(user_id=user.id, kind=JobKind.PORTRAIT, params={}, chat_id=6001)
        s.add(source)
        s.flush()
        source.result_blobs = [blobs.put(portrait_png(64, 48, i)) for i in range(2)]
        for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            source.transition(status)
        job = Job(
            user_id=user.id,
            kind=JobKind.UPSCALE,
            params={"source_job_id": source.id, "index": index, "size": size},
            chat_id=6001,
        )
        s.add(job)
        s.flush()
        return source.id, job.id


def row(ctx: WorkerContext, job_id: int) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


class TestUpscaleTask:
    def test_stores_a_4x_png_and_queues_delivery(self, ctx: WorkerContext) -> None:
        source_id, job_id = hd_job(ctx, index=1)
        assert upscale_task.upscale_portrait(job_id) == "succeeded"
        job = row(ctx, job_id)
        assert job.status is JobStatus.SUCCEEDED
        assert job.progress == 1.0
        [key] = job.result_blobs
        image = Image.open(io.BytesIO(ctx.blobs.get(key)))
        assert (image.format, image.size) == ("PNG", (256, 192))
        assert job.result_meta == {
            "source_job_id": source_id,
            "index": 1,
            "size": [256, 192],
            "filename": f"portrait-{source_id}-2-256.png",
        }
        assert ("delivery.send_result", [job_id]) in published(ctx.celery, "io")
        # Idempotent: a redelivered message does nothing.
        assert upscale_task.upscale_portrait(job_id) is None

    def test_progress_per_tile_and_cancel_between_tiles(
        self, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, job_id = hd_job(ctx)
        monkeypatch.setattr(upscale_task, "TILE", 16)  # 64x48 -> 4 x 3 tiles
        monkeypatch.setattr(task_jobs, "PROGRESS_DB_INTERVAL_S", 0.0)
        seen: list[float] = []
        report = task_jobs.ProgressReporter.report

        def user_cancels_after_tile_3(self: Any, fraction: float) -> None:
            seen.append(fraction)
            if len(seen) == 3:
                with ctx.db.session() as s:
                    job = s.get(Job, job_id)
                    assert job is not None
                    job.cancel_requested = True
            report(self, fraction)

        monkeypatch.setattr(task_jobs.ProgressReporter, "report", user_cancels_after_tile_3)
        assert upscale_task.upscale_portrait(job_id) == "cancelled"
        assert seen == [1 / 12, 2 / 12, 3 / 12]
        job = row(ctx, job_id)
        assert job.status is JobStatus.CANCELLED
        assert job.progress == pytest.approx(0.25)
        assert job.result_blobs in (None, [])

    def test_someone_elses_portrait_is_not_found(self, ctx: WorkerContext) -> None:
        _, job_id = hd_job(ctx)
        with ctx.db.session() as s:
            other = make_user(s, telegram_id=6002)
            job = s.get(Job, job_id)
            assert job is not None
            job.user_id = other.id
        assert upscale_task.upscale_portrait(job_id) == "failed"
        assert row(ctx, job_id).error_code == "not_found"


def test_missing_weights_fail_the_job_for_the_operator(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    from tasks.deliver import OPERATOR_CODES

    ctx = worker_context(committed_db, database_url, tmp_path, profile="real")
    set_context(ctx)
    try:
        _, job_id = hd_job(ctx)
        assert upscale_task.upscale_portrait(job_id) == "failed"
        job = row(ctx, job_id)
        assert job.error_code == "weights_missing"
        assert "upscaler_rrdb" in (job.error_detail or "")
        assert job.status is JobStatus.FAILED
        assert "weights_missing" in OPERATOR_CODES
        assert ("delivery.send_result", [job_id]) in published(ctx.celery, "io")
    finally:
        set_context(None)
