"""The io delivery task against the fake Bot API: albums once, failures explained, and the
operator alerted about failures only they can fix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from telegram.error import NetworkError

from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    StorageSettings,
    TelegramSettings,
)
from db.models import Job, JobKind, JobStatus
from db.session import Database
from tasks import deliver
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.deliver import send_progress, send_result
from telegram_ui.i18n import error_text, translate
from tests.utils.factories import make_user
from tests.utils.fake_telegram import TOKEN, FakeTelegram

ADMIN_CHAT = 424242
FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def ctx(
    tg: FakeTelegram, db: Database, tmp_path: Path, database_url: str
) -> Iterator[WorkerContext]:
    config = AppConfig(
        telegram=TelegramSettings(
            token=TOKEN,
            api_base_url=tg.api_base_url,
            file_base_url=tg.file_base_url,
            admin_chat_id=ADMIN_CHAT,
        ),
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://"),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),
    )
    context = WorkerContext(config, create_celery(config))
    context.db = db
    set_context(context)
    yield context
    set_context(None)


def _job(ctx: WorkerContext, status: JobStatus, **fields: object) -> int:
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=7001)
        job = Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={},
            chat_id=7001,
            status_message_id=1,
            **fields,
        )
        s.add(job)
        s.flush()
        job.transition(JobStatus.RUNNING)
        if status is JobStatus.FAILED:
            job.fail(str(fields.get("error_code") or "internal"), "boom")
        else:
            job.transition(status)
        return job.id


def _status(ctx: WorkerContext, job_id: int) -> JobStatus:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status


class TestSendResult:
    async def test_album_sent_once(self, tg: FakeTelegram, ctx: WorkerContext) -> None:
        images = [
            ctx.blobs.put((FACES / n).read_bytes()) for n in ("man_pose1.png", "man_pose2.png")
        ]
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=images)
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        album = await tg.wait_for("sendMediaGroup", chat_id=7001)
        assert len(album.get("media")) == 2
        await tg.wait_for("sendMessage", chat_id=7001)
        assert _status(ctx, job_id) is JobStatus.DELIVERED
        assert await asyncio.to_thread(send_result, job_id) == "already delivered"
        assert len(tg.calls_to("sendMediaGroup")) == 1

    async def test_operator_hears_about_missing_weights(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.FAILED, error_code="weights_missing")
        await asyncio.to_thread(send_result, job_id)
        # The task has returned, so every call it made is recorded (the fake answers 400 to
        # edits of messages it never sent, which the task tolerates).
        (edit,) = [c for c in tg.calls if c.method == "editMessageText"]
        assert error_text("en", "weights_missing") in edit.get("text")
        alert = await tg.wait_for("sendMessage", chat_id=ADMIN_CHAT)
        assert "weights_missing" in alert.get("text")
        assert _status(ctx, job_id) is JobStatus.DELIVERED

    async def test_user_mistakes_do_not_page_the_operator(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.FAILED, error_code="no_face")
        await asyncio.to_thread(send_result, job_id)
        assert [c.method for c in tg.calls if c.method != "getMe"] == ["editMessageText"]

    @pytest.mark.parametrize(
        ("cause", "resent"),
        [(aiohttp.ServerDisconnectedError(), False), (ConnectionRefusedError(), True)],
    )
    async def test_album_is_resent_only_when_it_cannot_have_arrived(
        self,
        ctx: WorkerContext,
        monkeypatch: pytest.MonkeyPatch,
        cause: BaseException,
        resent: bool,
    ) -> None:
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=[])

        async def broken(bot: object, d: object) -> None:
            if isinstance(cause, ConnectionRefusedError):
                key = aiohttp.client_reqrep.ConnectionKey(
                    "api.telegram.org", 443, True, True, None, None, None
                )
                raise NetworkError("connect") from aiohttp.ClientConnectorError(key, cause)
            raise NetworkError("disconnected") from cause

        monkeypatch.setattr(deliver, "_send_result", broken)
        if resent:
            # Called directly, a Celery retry re-raises the error it retries for.
            with pytest.raises(NetworkError):
                await asyncio.to_thread(send_result, job_id)
            assert _status(ctx, job_id) is JobStatus.SUCCEEDED
        else:
            assert await asyncio.to_thread(send_result, job_id) == "delivered"
            assert _status(ctx, job_id) is JobStatus.DELIVERED


class TestHdDelivery:
    def _hd_job(self, ctx: WorkerContext, status: JobStatus) -> tuple[int, bytes]:
        png = (FACES / "man_pose1.png").read_bytes()
        with ctx.db.session() as s:
            user = make_user(s, telegram_id=7001, language="ru")
            job = Job(
                user_id=user.id,
                kind=JobKind.UPSCALE,
                params={"source_job_id": 5, "index": 1, "size": 2048},
                chat_id=7001,
                status_message_id=1,
            )
            s.add(job)
            s.flush()
            job.transition(JobStatus.RUNNING)
            job.progress = 0.5
            if status is JobStatus.SUCCEEDED:
                job.result_blobs = [ctx.blobs.put(png)]
                job.result_meta = {
                    "source_job_id": 5,
                    "index": 1,
                    "size": [2048, 2048],
                    "filename": "portrait-5-2-2048.png",
                }
                job.transition(JobStatus.SUCCEEDED)
            return job.id, png

    async def test_hd_is_a_document_with_a_caption(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id, png = self._hd_job(ctx, JobStatus.SUCCEEDED)
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        sent = [c.method for c in tg.calls if c.method not in ("getMe", "editMessageText")]
        assert sent == ["sendDocument"]  # no photo, no album, no "what next" buttons
        (document,) = tg.calls_to("sendDocument")
        assert list(document.files.values()) == [png]
        assert document.get("filename") == "portrait-5-2-2048.png"
        assert document.get("caption") == translate(
            "ru", "hd.caption", n=2, width=2048, height=2048
        )
        (edit,) = tg.calls_to("editMessageText")
        assert edit.get("text") == translate("ru", "hd.done")

    async def test_hd_progress_says_hd(self, tg: FakeTelegram, ctx: WorkerContext) -> None:
        job_id, _ = self._hd_job(ctx, JobStatus.RUNNING)
        await asyncio.to_thread(send_progress, job_id)
        (edit,) = tg.calls_to("editMessageText")
        assert edit.get("text") == translate("ru", "hd.running", percent=50)
