"""The pose flow in one process: the real bot on the fake Bot API, then the gpu and io tasks run
here on the in-memory broker's messages, with a fake OpenPose annotator that finds a person."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.settings import AppConfig, EngineSettings
from db.models import Job, JobStatus
from facechain.engine import Engine, EngineConfig
from tasks.context import set_context
from tasks.deliver import send_pose_preview, send_progress, send_result
from tasks.dispatch import CeleryPublisher
from tasks.generate import generate
from tasks.jobs import run_gpu_job
from telegram_ui.client import BotRunner, make_bot
from telegram_ui.i18n import error_text, forms, translate
from telegram_ui.keyboards import result_keyboard
from tests.bot.conftest import BotHarness, give_selfie, jobs_of, published
from tests.utils.fake_pose import FakePoseAnnotator

TASK = SimpleNamespace(request=SimpleNamespace(hostname="test@pose-flow"))
IO_TASKS: dict[str, Any] = {
    "delivery.pose_preview": send_pose_preview,
    "delivery.progress": send_progress,
    "delivery.send_result": send_result,
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=2))
    torch.set_num_threads(threads)


@contextmanager
def worker_context(bot: BotHarness, engine: Engine, config: AppConfig) -> Iterator[None]:
    """The gpu and io workers' context, here: the bot's database, blobs and broker, the engine,
    and the io worker's one Bot (`WorkerContext.call_telegram`)."""
    runner = BotRunner(lambda: make_bot(config.telegram))
    set_context(
        SimpleNamespace(  # type: ignore[arg-type]
            config=config,
            db=bot.db,
            blobs=bot.blobs,
            engine=engine,
            celery=bot.celery,
            publisher=CeleryPublisher(bot.celery, bot.db),
            call_telegram=lambda fn: runner.run(fn, timeout=30),
        )
    )
    try:
        yield
    finally:
        set_context(None)
        runner.close()


async def results_message(bot: BotHarness, user: Any) -> dict[str, Any]:
    """A finished portrait job and the "What next?" message the io worker leaves under it."""
    give_selfie(bot, user.id)
    bot.tg.send_text(user, "/style")
    await bot.tg.wait_for("sendPhoto", chat_id=user.id)
    lang = user.language_code
    bot.tg.press_button(user, bot.tg.bot_messages(user.id)[-1], translate(lang, "btn.use_style"))
    await bot.tg.wait_text(user.id, forms(lang)["job.queued"][0].split("{")[0])
    [job] = jobs_of(bot, user.id)
    with bot.db.session() as s:
        row = s.get(Job, job.id)
        assert row is not None
        row.result_blobs = [bot.blobs.put(b"result")]
        for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
            row.transition(status)
    published(bot.celery, "gpu")
    return bot.tg._bot_message(
        user.id,
        text=translate(lang, "job.next"),
        reply_markup=result_keyboard(job.id, job.style_id, lang).to_dict(),
    )


class TestPoseFlow:
    async def test_preview_reaches_the_chat_before_the_album(
        self, bot: BotHarness, engine: Engine, face_bytes: Any
    ) -> None:
        tg = bot.tg
        ann = tg.user(4301, "Ann", "en")
        message = await results_message(bot, ann)
        since = len(tg.calls)
        tg.press_button(ann, message, translate("en", "btn.use_pose"))
        await tg.wait_text(ann.id, translate("en", "pose.send"), since=since)
        tg.send_photo(ann, face_bytes("man_pose3.png"))
        await tg.wait_text(ann.id, "in the queue", since=since)
        await tg.idle()
        [(task, [job_id])] = published(bot.celery, "gpu")
        assert task == "portrait.generate"

        # The gpu worker, here: a fake annotator that finds one person.
        fake = FakePoseAnnotator()
        engine.set_pose_annotator(fake)  # type: ignore[arg-type]
        assert bot.config is not None
        config = bot.config.model_copy(
            update={
                "engine": EngineSettings(
                    profile="tiny", num_images=2, num_candidates=2, similarity_floor=-1
                )
            }
        )
        try:
            with worker_context(bot, engine, config):
                status = await asyncio.to_thread(run_gpu_job, TASK, job_id, generate)  # type: ignore[arg-type]
                assert status is JobStatus.SUCCEEDED
                # The io worker, here, in publish order.
                for name, args in published(bot.celery, "io"):
                    await asyncio.to_thread(IO_TASKS[name], *args)
        finally:
            engine.set_pose_annotator(None)

        assert len(fake.calls) == 1
        preview = await tg.wait_for("sendPhoto", chat_id=ann.id, since=since)
        assert preview.get("caption") == translate("en", "pose.found")
        album = await tg.wait_for("sendMediaGroup", chat_id=ann.id, since=since)
        assert preview.at < album.at
        assert len(album.get("media")) == 2
        await tg.wait_text(ann.id, "✅ Done! Here are your 2 portraits.", since=since)
        job = next(j for j in jobs_of(bot, ann.id) if j.id == job_id)
        assert job.status is JobStatus.SUCCEEDED
        assert job.delivered_at is not None
        stored = Image.open(io.BytesIO(bot.blobs.get(job.params["pose_map_blob"])))
        assert np.array_equal(np.asarray(stored), fake.body_map)

    async def test_nobody_in_the_photo_is_explained(
        self, bot: BotHarness, engine: Engine, face_bytes: Any
    ) -> None:
        tg = bot.tg
        ann = tg.user(4302, "Ann", "ru")
        message = await results_message(bot, ann)
        since = len(tg.calls)
        tg.press_button(ann, message, translate("ru", "btn.use_pose"))
        await tg.wait_text(ann.id, translate("ru", "pose.send"), since=since)
        tg.send_photo(ann, face_bytes("man_pose3.png"))
        await tg.wait_text(ann.id, forms("ru")["job.queued"][0].split("{")[0], since=since)
        await tg.idle()
        [(_, [job_id])] = published(bot.celery, "gpu")

        engine.set_pose_annotator(FakePoseAnnotator(people=0))  # type: ignore[arg-type]
        assert bot.config is not None
        try:
            with worker_context(bot, engine, bot.config):
                status = await asyncio.to_thread(run_gpu_job, TASK, job_id, generate)  # type: ignore[arg-type]
                assert status is JobStatus.FAILED
                for name, args in published(bot.celery, "io"):
                    await asyncio.to_thread(IO_TASKS[name], *args)
        finally:
            engine.set_pose_annotator(None)

        reason = translate("ru", "error.pose_no_person")
        await tg.wait_text(ann.id, translate("ru", "job.failed", reason=reason), since=since)
        assert not [c for c in tg.calls[since:] if c.method in ("sendPhoto", "sendMediaGroup")]


class TestPoseStoredOnlyForAnAcceptedJob:
    async def test_a_refused_pose_job_leaves_no_blob(
        self, harness: BotHarness, face_bytes: Any
    ) -> None:
        from core.blobstore import sha256_hex
        from facechain.imageio import clean_image

        # The day's one free job is used by the first portrait set: the pose job is refused.
        await harness.start(daily_quota=1)
        tg = harness.tg
        ann = tg.user(4310, "Ann", "en")
        message = await results_message(harness, ann)
        since = len(tg.calls)
        tg.press_button(ann, message, translate("en", "btn.use_pose"))
        await tg.wait_text(ann.id, translate("en", "pose.send"), since=since)
        before = {p for p in harness.blobs.root.rglob("*") if p.is_file()}
        pose = face_bytes("man_pose3.png")
        tg.send_photo(ann, pose)
        await tg.wait_text(ann.id, error_text("en", "quota_exceeded", quota=1), since=since)
        await tg.idle()
        assert len(jobs_of(harness, ann.id)) == 1
        # Before, the pose photo was stored first and stayed behind, referenced by nothing.
        assert not harness.blobs.exists(sha256_hex(clean_image(pose)))
        assert {p for p in harness.blobs.root.rglob("*") if p.is_file()} == before
