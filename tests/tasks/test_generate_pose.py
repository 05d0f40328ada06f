"""Portrait jobs with a pose: a photo becomes the annotator's skeleton map (with a preview on io)
before anything is painted, a ready map is used as is, and a photo with nobody in it fails the
job without generating."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from PIL import Image

from core.blobstore import LocalBlobStore
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    EngineSettings,
    StorageSettings,
    TelegramSettings,
)
from db.base import utcnow
from db.models import Job, JobKind, JobStatus
from db.session import Database
from facechain.engine import Engine, EngineConfig, letterbox
from tasks.celery_app import create_celery
from tasks.context import set_context
from tasks.deliver import OPERATOR_CODES, send_pose_preview
from tasks.dispatch import CeleryPublisher
from tasks.generate import generate
from tasks.jobs import JobSnapshot, run_gpu_job
from tasks.pose import prepare_pose
from telegram_ui.i18n import translate
from tests.bot.conftest import published
from tests.utils.factories import FACES, make_portrait_job, make_selfie, make_style, make_user
from tests.utils.fake_pose import ARMS_UP, FakePoseAnnotator, skeleton_map
from tests.utils.fake_telegram import TOKEN, FakeTelegram

TASK = SimpleNamespace(request=SimpleNamespace(hostname="test@pose"))


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=2))
    torch.set_num_threads(threads)


def make_config(database_url: str, tmp_path: Path, tg: FakeTelegram | None = None) -> AppConfig:
    telegram = (
        TelegramSettings(token=TOKEN, api_base_url=tg.api_base_url, file_base_url=tg.file_base_url)
        if tg is not None
        else TelegramSettings(token=TOKEN)
    )
    return AppConfig(
        telegram=telegram,
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://"),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
        engine=EngineSettings(
            profile="tiny",
            models_dir=tmp_path / "models",
            num_images=2,
            num_candidates=2,
            similarity_floor=-1,
        ),
    )


@pytest.fixture
def ctx(
    db: Database, blobs: LocalBlobStore, tmp_path: Path, database_url: str, engine: Engine
) -> Iterator[SimpleNamespace]:
    config = make_config(database_url, tmp_path)
    celery = create_celery(config)
    for queue in ("gpu", "io"):
        published(celery, queue)
    context = SimpleNamespace(
        config=config,
        db=db,
        blobs=blobs,
        engine=engine,
        celery=celery,
        publisher=CeleryPublisher(celery, db),
    )
    set_context(context)  # type: ignore[arg-type]
    yield context
    set_context(None)
    engine.set_pose_annotator(None)


@pytest.fixture
def pipeline_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict[str, Any]]]:
    """kwargs of every txt2img and ControlNet pipeline call."""
    calls: dict[str, list[dict[str, Any]]] = {"plain": [], "pose": []}
    for name, cls in (
        ("plain", StableDiffusionPipeline),
        ("pose", StableDiffusionControlNetPipeline),
    ):
        original = cls.__call__

        def spy(self: Any, *args: Any, _o: Any = original, _n: str = name, **kwargs: Any) -> Any:
            calls[_n].append(kwargs)
            return _o(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    return calls


def pose_job(ctx: SimpleNamespace, pose: bytes) -> int:
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=8101)
        photo = make_selfie(s, ctx.blobs, user, "man_pose1.png")
        style = make_style(s)
        job = make_portrait_job(s, user, photo, style, pose_blob=ctx.blobs.put(pose))
        job.chat_id = 8101
        return job.id


def job_row(ctx: SimpleNamespace, job_id: int) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def io_tasks(ctx: SimpleNamespace) -> list[str]:
    return [name for name, _ in published(ctx.celery, "io") if name != "delivery.progress"]


class TestPosePhoto:
    def test_photo_becomes_the_annotators_map_with_a_preview_first(
        self, ctx: SimpleNamespace, pipeline_calls: dict[str, list[dict[str, Any]]]
    ) -> None:
        fake = FakePoseAnnotator()
        ctx.engine.set_pose_annotator(fake)
        photo = (FACES / "man_pose3.png").read_bytes()
        job_id = pose_job(ctx, photo)

        assert run_gpu_job(TASK, job_id, generate) is JobStatus.SUCCEEDED  # type: ignore[arg-type]

        [call] = fake.calls
        assert call["include_body"]
        assert call["include_hand"]
        assert call["shape"] == (512, 512, 3)
        assert pipeline_calls["plain"] == []
        assert len(pipeline_calls["pose"]) == 1
        control = np.asarray(pipeline_calls["pose"][0]["image"])
        size = ctx.engine.config.output_size()
        assert np.array_equal(control, np.asarray(letterbox(Image.fromarray(fake.body_map), size)))
        assert not np.array_equal(
            control, np.asarray(letterbox(Image.open(io.BytesIO(photo)), size))
        )

        job = job_row(ctx, job_id)
        assert len(job.result_blobs) == 2
        stored = np.asarray(Image.open(io.BytesIO(ctx.blobs.get(job.params["pose_map_blob"]))))
        assert np.array_equal(stored, fake.body_map)
        # The preview is queued before generation, so before the album.
        assert io_tasks(ctx) == ["delivery.pose_preview", "delivery.send_result"]

    def test_nobody_in_the_photo_fails_before_painting(
        self, ctx: SimpleNamespace, pipeline_calls: dict[str, list[dict[str, Any]]]
    ) -> None:
        ctx.engine.set_pose_annotator(FakePoseAnnotator(people=0))
        job_id = pose_job(ctx, (FACES / "man_pose3.png").read_bytes())

        assert run_gpu_job(TASK, job_id, generate) is JobStatus.FAILED  # type: ignore[arg-type]

        job = job_row(ctx, job_id)
        assert job.error_code == "pose_no_person"
        assert job.result_blobs == []
        assert "pose_map_blob" not in job.params
        assert pipeline_calls == {"plain": [], "pose": []}
        assert io_tasks(ctx) == ["delivery.send_result"]
        assert "pose_no_person" not in OPERATOR_CODES

    def test_annotator_missing_fails_for_the_operator(
        self, ctx: SimpleNamespace, pipeline_calls: dict[str, list[dict[str, Any]]]
    ) -> None:
        ctx.engine.set_pose_annotator(None)
        job_id = pose_job(ctx, (FACES / "man_pose3.png").read_bytes())

        assert run_gpu_job(TASK, job_id, generate) is JobStatus.FAILED  # type: ignore[arg-type]

        assert job_row(ctx, job_id).error_code == "pose_annotator_missing"
        assert "pose_annotator_missing" in OPERATOR_CODES
        assert pipeline_calls == {"plain": [], "pose": []}


class TestReadyMap:
    def test_skeleton_map_is_used_as_is(
        self, ctx: SimpleNamespace, pipeline_calls: dict[str, list[dict[str, Any]]]
    ) -> None:
        fake = FakePoseAnnotator()
        ctx.engine.set_pose_annotator(fake)
        drawn = skeleton_map(ARMS_UP)
        job_id = pose_job(ctx, png(drawn))

        assert run_gpu_job(TASK, job_id, generate) is JobStatus.SUCCEEDED  # type: ignore[arg-type]

        assert fake.calls == []
        [call] = pipeline_calls["pose"]
        size = ctx.engine.config.output_size()
        expected = letterbox(Image.fromarray(drawn), size)
        assert np.array_equal(np.asarray(call["image"]), np.asarray(expected))
        assert "pose_map_blob" not in job_row(ctx, job_id).params
        assert io_tasks(ctx) == ["delivery.send_result"]

    def test_a_retried_job_reuses_its_extracted_map(self, ctx: SimpleNamespace) -> None:
        fake = FakePoseAnnotator()
        ctx.engine.set_pose_annotator(fake)
        extracted = ctx.blobs.put(png(skeleton_map()))
        snapshot = JobSnapshot(
            id=1,
            user_id=None,
            params={"pose_blob": ctx.blobs.put(b"not read"), "pose_map_blob": extracted},
            style_id=None,
            template_id=None,
            attempts=2,
        )
        image = prepare_pose(ctx, snapshot)  # type: ignore[arg-type]
        assert image is not None
        assert np.array_equal(np.asarray(image), skeleton_map())
        assert fake.calls == []
        assert io_tasks(ctx) == []


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


class TestPosePreview:
    @pytest.fixture
    def preview_ctx(
        self,
        tg: FakeTelegram,
        db: Database,
        blobs: LocalBlobStore,
        tmp_path: Path,
        database_url: str,
    ) -> Iterator[SimpleNamespace]:
        from telegram_ui.client import BotRunner, make_bot

        config = make_config(database_url, tmp_path, tg)
        # The io worker's one Bot (`WorkerContext.call_telegram`).
        runner = BotRunner(lambda: make_bot(config.telegram))
        context = SimpleNamespace(
            config=config,
            db=db,
            blobs=blobs,
            call_telegram=lambda fn: runner.run(fn, timeout=30),
        )
        set_context(context)  # type: ignore[arg-type]
        yield context
        set_context(None)
        runner.close()

    def _job(
        self,
        ctx: SimpleNamespace,
        status: JobStatus,
        language: str = "ru",
        *,
        delivered: bool = False,
    ) -> int:
        with ctx.db.session() as s:
            user = make_user(s, telegram_id=8201, language=language)
            job = Job(
                user_id=user.id,
                kind=JobKind.PORTRAIT,
                params={"pose_map_blob": ctx.blobs.put(png(skeleton_map()))},
                chat_id=8201,
            )
            s.add(job)
            s.flush()
            for step in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                if job.status is status:
                    break
                job.transition(step)
            if delivered:
                job.delivered_at = utcnow()
            return job.id

    async def test_sends_a_small_map_with_a_translated_caption(
        self, tg: FakeTelegram, preview_ctx: SimpleNamespace
    ) -> None:
        job_id = self._job(preview_ctx, JobStatus.RUNNING)
        assert await asyncio.to_thread(send_pose_preview, job_id) == "sent"
        [call] = tg.calls_to("sendPhoto")
        assert call.chat_id == 8201
        assert call.get("caption") == translate("ru", "pose.found")
        [data] = call.files.values()
        preview = Image.open(io.BytesIO(data))
        assert preview.size == (320, 320)
        assert 256 <= preview.width <= 384

    async def test_not_after_the_album(
        self, tg: FakeTelegram, preview_ctx: SimpleNamespace
    ) -> None:
        job_id = self._job(preview_ctx, JobStatus.SUCCEEDED, delivered=True)
        assert await asyncio.to_thread(send_pose_preview, job_id) == "skipped"
        assert tg.calls_to("sendPhoto") == []
