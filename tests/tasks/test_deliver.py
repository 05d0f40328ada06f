"""The io delivery task against the fake Bot API: albums once, failures explained, and the
operator alerted about failures only they can fix; delivery recorded apart from the outcome: a
result Telegram refuses ends as a recorded delivery failure after a bounded number of Bot API
calls, a 40 MP template result goes out within Telegram's photo limits, and a failed job stays
failed (metrics, /history, admin retry) after its failure was delivered."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from telegram.error import NetworkError

from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    StorageSettings,
    TelegramSettings,
)
from db.models import Job, JobKind, JobStatus, WebhookDelivery
from db.session import Database
from domain import jobs, lifecycle, stats
from tasks import deliver
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.deliver import send_progress, send_result
from telegram_ui.i18n import error_text, translate
from telegram_ui.media import PHOTO_MAX_BYTES, PHOTO_MAX_SIDE, PHOTO_MAX_SIDE_SUM
from tests.utils.factories import make_style, make_user
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


def _row(ctx: WorkerContext, job_id: int) -> Job:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _delivered_at(ctx: WorkerContext, job_id: int) -> datetime | None:
    return _row(ctx, job_id).delivered_at


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
        assert _delivered_at(ctx, job_id) is not None
        assert await asyncio.to_thread(send_result, job_id) == "already delivered"
        assert len(tg.calls_to("sendMediaGroup")) == 1

    async def test_a_job_cancelled_while_running_says_it_counts(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        """It ran, so it keeps its free slot or credits (`billing.gives_back`): the notice no
        longer promises it does not count (dbcd432 said "doesn't count towards your daily
        limit")."""
        job_id = _job(ctx, JobStatus.CANCELLED)
        await asyncio.to_thread(send_result, job_id)
        texts = [c.get("text") for c in tg.calls if c.method in ("editMessageText", "sendMessage")]
        assert translate("en", "job.cancelled_after_start") in texts
        assert translate("en", "job.cancelled") not in texts

    async def test_a_second_delivery_goes_on_after_the_recorded_album(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        """The io worker that sent the album died before its follow-ups: the next delivery
        sends the status edit and "what next", never the album again."""
        images = [
            ctx.blobs.put((FACES / n).read_bytes()) for n in ("man_pose1.png", "man_pose2.png")
        ]
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=images, delivery_step=1)
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        assert tg.calls_to("sendMediaGroup") == []
        await tg.wait_for("sendMessage", chat_id=7001)
        row = _row(ctx, job_id)
        assert row.delivered_at is not None
        assert row.delivery_step == 3  # album, status edit, "what next"
        assert row.delivery_owner is None

    async def test_a_live_delivery_lease_of_another_task_sends_nothing(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=[])
        with ctx.db.session() as s:
            claimed = lifecycle.start_delivery(s, job_id, "io-a:task-1", timedelta(minutes=1))
        assert claimed is not None
        assert not claimed.busy
        assert await asyncio.to_thread(send_result, job_id) == "being delivered"
        assert tg.calls == []
        assert _delivered_at(ctx, job_id) is None
        # Once that lease expired (its worker died), the next delivery takes over.
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.delivery_lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
        assert await asyncio.to_thread(send_result, job_id) == "delivered"

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
        assert _delivered_at(ctx, job_id) is not None

    async def test_user_mistakes_do_not_page_the_operator(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.FAILED, error_code="no_face")
        await asyncio.to_thread(send_result, job_id)
        # The status message is gone (the fake never sent it): the notice comes as a new one.
        calls = [c for c in tg.calls if c.method != "getMe"]
        assert [c.method for c in calls] == ["editMessageText", "sendMessage"]
        assert calls[1].chat_id == 7001
        assert calls[1].get("text") == translate(
            "en", "job.failed", reason=error_text("en", "no_face")
        )
        assert _status(ctx, job_id) is JobStatus.FAILED

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

        async def broken(bot: object, d: object, *_: object) -> None:
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
            assert _delivered_at(ctx, job_id) is not None


class TestTransientRetries:
    async def test_a_send_that_keeps_failing_is_retried_a_bounded_number_of_times(
        self, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Celery's own retries (autoretry with backoff and jitter), then the sweep's turn."""
        from celery.app import autoretry

        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=[])
        sends: list[int] = []
        countdowns: list[float] = []

        async def unsent(bot: object, d: object, *_: object) -> None:
            sends.append(1)
            raise NetworkError("Bad Gateway")  # an error answer: certainly not shown

        real_backoff = autoretry.get_exponential_backoff_interval

        def backoff(*args: object, **kwargs: object) -> float:
            countdowns.append(real_backoff(*args, **kwargs))  # type: ignore[arg-type]
            return countdowns[-1]

        monkeypatch.setattr(deliver, "_send_result", unsent)
        monkeypatch.setattr(autoretry, "get_exponential_backoff_interval", backoff)
        # Eager: each retry runs at once, in this thread.
        result = await asyncio.to_thread(send_result.apply, (job_id,))
        assert isinstance(result.result, NetworkError)
        assert len(sends) == 1 + deliver.MAX_RETRIES
        # Exponential backoff from 2 s with full jitter (Celery also works one out for the
        # attempt that finds the retries spent).
        assert len(countdowns) >= deliver.MAX_RETRIES
        assert all(0 <= c <= 2 * 2**n for n, c in enumerate(countdowns))
        row = _row(ctx, job_id)
        assert (row.status, row.delivered_at, row.delivery_error) == (
            JobStatus.SUCCEEDED,
            None,
            None,
        )
        assert row.delivery_attempts == 1 + deliver.MAX_RETRIES


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


# ---- delivery recorded apart from the outcome (issue 12) ----

CHAT = 7001


def _chat_calls(tg: FakeTelegram) -> list[str]:
    return [c.method for c in tg.calls if c.chat_id == CHAT]


class TestRefusedResult:
    async def test_400_is_a_recorded_failure_told_in_a_new_message(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        images = [
            ctx.blobs.put((FACES / n).read_bytes()) for n in ("man_pose1.png", "man_pose2.png")
        ]
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=images)
        # Telegram refuses this album whatever happens.
        tg.fail_next("sendMediaGroup", 400, times=50)

        assert await asyncio.to_thread(send_result, job_id) == "undeliverable"
        row = _row(ctx, job_id)
        assert row.status is JobStatus.SUCCEEDED
        assert row.delivered_at is None
        assert row.delivery_attempts == 1
        assert row.delivery_error is not None
        assert row.delivery_error.startswith("BadRequest")
        texts = tg.sent_texts(CHAT)
        assert texts[-1] == translate("en", "job.undeliverable")

        # Again, and through the sweep: nothing more is sent for this job.
        assert await asyncio.to_thread(send_result, job_id) == "already delivered"
        plan = ctx.db.call(
            lifecycle.sweep,
            outbox_grace=timedelta(0),
            time_limit=timedelta(minutes=15),
            redeliver_after=timedelta(0),
        )
        assert job_id not in plan.undelivered
        # One refused album and one notice: the number of Bot API calls is bounded.
        assert _chat_calls(tg) == ["sendMediaGroup", "sendMessage"]

    @pytest.mark.parametrize(
        ("status", "error", "told"),
        [(403, "Forbidden", False), (413, "NetworkError", True)],
    )
    async def test_403_and_413_are_terminal_too(
        self, tg: FakeTelegram, ctx: WorkerContext, status: int, error: str, told: bool
    ) -> None:
        images = [
            ctx.blobs.put((FACES / n).read_bytes()) for n in ("man_pose1.png", "man_pose2.png")
        ]
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=images)
        tg.fail_next("sendMediaGroup", status, times=50)

        assert await asyncio.to_thread(send_result, job_id) == "undeliverable"
        row = _row(ctx, job_id)
        assert (row.status, row.delivered_at, row.delivery_attempts) == (
            JobStatus.SUCCEEDED,
            None,
            1,
        )
        assert row.delivery_error is not None
        assert row.delivery_error.startswith(error)
        assert await asyncio.to_thread(send_result, job_id) == "already delivered"
        # A blocked bot cannot tell the user anything; a too large upload is explained.
        notice = ["sendMessage"] if told else []
        assert _chat_calls(tg) == ["sendMediaGroup", *notice]

    async def test_transient_failures_end_after_a_bounded_number_of_sends(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=[])
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.delivery_attempts = lifecycle.MAX_DELIVERY_ATTEMPTS
        plan = ctx.db.call(
            lifecycle.sweep,
            outbox_grace=timedelta(0),
            time_limit=timedelta(minutes=15),
            redeliver_after=timedelta(0),
        )
        assert job_id not in plan.undelivered
        assert _row(ctx, job_id).delivery_error == (
            f"gave up after {lifecycle.MAX_DELIVERY_ATTEMPTS} attempts"
        )


def _big_png(width: int, height: int) -> bytes:
    """A smooth, quickly encoded picture of width x height."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class TestPhotoLimits:
    async def test_a_40_mp_template_result_is_sent_within_the_photo_limits(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        full = _big_png(8000, 5000)
        job_id = _job(ctx, JobStatus.SUCCEEDED, result_blobs=[ctx.blobs.put(full)])
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.kind = JobKind.TEMPLATE

        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        [photo_call] = [c for c in tg.calls_to("sendPhoto") if c.chat_id == CHAT]
        assert photo_call.ok
        [photo] = photo_call.files.values()
        image = Image.open(io.BytesIO(photo))
        assert image.format == "JPEG"
        assert len(photo) <= PHOTO_MAX_BYTES
        assert sum(image.size) <= PHOTO_MAX_SIDE_SUM
        assert max(image.size) == PHOTO_MAX_SIDE
        [document] = [c for c in tg.calls_to("sendDocument") if c.chat_id == CHAT]
        assert list(document.files.values()) == [full]
        assert _row(ctx, job_id).delivered_at is not None


class TestFinalStatesStayFinal:
    async def test_a_delivered_failure_stays_failed(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.FAILED, error_code="no_face")
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        row = _row(ctx, job_id)
        assert row.delivered_at is not None
        assert row.status is JobStatus.FAILED
        assert row.user_id is not None

        figures = ctx.db.call(stats.stats)
        assert figures["failures_by_code"] == {"no_face": 1}
        assert figures["jobs"]["by_status"]["failed"] == 1
        assert figures["durations_24h"]["count"] == 0  # failures are not run times
        snapshot = ctx.db.call(stats.read_snapshot)
        assert snapshot.failures == {"no_face": 1}
        rows, _ = ctx.db.call(jobs.history, row.user_id, "en", 0, 10)
        assert [(r.job_id, r.status) for r in rows] == [(job_id, JobStatus.FAILED)]

        retried = ctx.db.call(jobs.retry_job, job_id, "admin:test")
        assert retried.status is JobStatus.QUEUED
        again = _row(ctx, job_id)
        assert again.delivered_at is None
        assert again.delivery_attempts == 0


class TestTrainingDone:
    async def test_the_style_ready_message_names_the_style(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        job_id = _job(ctx, JobStatus.SUCCEEDED)
        with ctx.db.session() as s:
            style = make_style(s, "trained-7-autumn")
            style.names = {"en": "Autumn leaves"}
            row = s.get(Job, job_id)
            assert row is not None
            row.kind = JobKind.TRAINING
            row.style_id = style.id
            row.result_meta = {"style_id": style.id}
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        assert translate("en", "training.done", name="Autumn leaves") in tg.sent_texts(CHAT)


class TestLateProgressEdit:
    @pytest.mark.parametrize("kind", [JobKind.PORTRAIT, JobKind.TRAINING])
    async def test_a_progress_edit_landing_after_the_final_edit_leaves_the_final_text(
        self,
        tg: FakeTelegram,
        ctx: WorkerContext,
        monkeypatch: pytest.MonkeyPatch,
        kind: JobKind,
    ) -> None:
        running_text = translate("en", "job.running", percent=95)
        status = tg._bot_message(CHAT, text=running_text)
        images = [ctx.blobs.put((FACES / "man_pose1.png").read_bytes())]
        job_id = _job(ctx, JobStatus.RUNNING)
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.status_message_id = status["message_id"]
            row.kind = kind
            row.progress = 0.99
        # The progress task read the job while it was still running...
        stale = ctx.db.call(lifecycle.delivery, job_id)
        assert stale is not None
        assert stale.status is JobStatus.RUNNING
        # ...then the job finished and its delivery made the final edit...
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            if kind is JobKind.TRAINING:
                style = make_style(s, "trained-late-edit")
                style.names = {"en": "Ink wash"}
                s.flush()
                row.style_id = style.id
                row.result_meta = {"style_id": style.id}
            else:
                row.result_blobs = images
            row.transition(JobStatus.SUCCEEDED)
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
        final = tg.current(status)["text"]
        assert final != running_text
        # ...and only now does the progress edit (99 %) reach Telegram.
        reads = iter([stale])
        real_snapshot = deliver._snapshot
        monkeypatch.setattr(
            deliver, "_snapshot", lambda jid: next(reads, None) or real_snapshot(jid)
        )
        await asyncio.to_thread(send_progress, job_id)
        late = [c for c in tg.calls_to("editMessageText") if "99" in str(c.get("text"))]
        assert late, "the late progress edit was sent"
        assert tg.current(status)["text"] == final


class TestForgottenWhileRunning:
    async def test_a_job_finishing_after_forget_is_discarded_not_delivered(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        from domain.privacy import forget_user

        job_id = _job(ctx, JobStatus.RUNNING)
        user_id = _row(ctx, job_id).user_id
        ctx.db.call(forget_user, ctx.blobs, user_id)
        # The worker was past its last cancel check: it stores the portraits and finishes.
        images = [ctx.blobs.put((FACES / "man_pose1.png").read_bytes())]
        with ctx.db.session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.result_blobs = images
            row.transition(JobStatus.SUCCEEDED)
        assert await asyncio.to_thread(send_result, job_id) == "discarded"
        assert _chat_calls(tg) == []
        with ctx.db.session() as s:
            assert s.get(Job, job_id) is None
        assert not ctx.blobs.exists(images[0])

    async def test_a_job_its_worker_finishes_after_forget_ends_cancelled(
        self, tg: FakeTelegram, ctx: WorkerContext
    ) -> None:
        from domain.privacy import forget_user
        from domain.webhooks import create_endpoint

        with ctx.db.session() as s:
            create_endpoint(
                s,
                url="https://hooks.example.com/facechain",
                secret="s3cret-s3cret-s3cret",
                events=["job.succeeded", "job.failed", "job.cancelled"],
                enabled=True,
                actor="test",
            )
        job_id = _job(ctx, JobStatus.RUNNING)
        claim = ctx.db.call(lifecycle.claim, job_id, "gpu@host")
        assert claim.owner is not None
        user_id = _row(ctx, job_id).user_id
        ctx.db.call(forget_user, ctx.blobs, user_id)
        # The worker was past its last cancel check: it stores the portraits and finishes
        # through the same path as a real gpu task (`finish` under its lease).
        images = [ctx.blobs.put((FACES / "man_pose1.png").read_bytes())]
        outcome = lifecycle.JobOutcome(result_blobs=images, result_meta={})
        status = ctx.db.call(lifecycle.finish, job_id, outcome, None, False, claim.owner)

        assert status is JobStatus.CANCELLED
        with ctx.db.session() as s:
            events = [
                (d.event, d.payload["job_id"])
                for d in s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
            ]
        assert events == [("job.cancelled", job_id)]
        # Its delivery message may be lost: the sweep sends it again, and delivery discards it.
        plan = ctx.db.call(
            lifecycle.sweep,
            outbox_grace=timedelta(minutes=5),
            time_limit=timedelta(minutes=15),
            redeliver_after=timedelta(0),
        )
        assert job_id in plan.undelivered
        assert await asyncio.to_thread(send_result, job_id) == "discarded"
        assert _chat_calls(tg) == []
        with ctx.db.session() as s:
            assert s.get(Job, job_id) is None
        assert not ctx.blobs.exists(images[0])


class TestEta:
    def test_the_eta_averages_successes_only(self, ctx: WorkerContext) -> None:
        from db.repositories.jobs import JobRepository

        ok = _job(ctx, JobStatus.SUCCEEDED)
        with ctx.db.session() as s:
            failed = Job(user_id=_row(ctx, ok).user_id, kind=JobKind.PORTRAIT, params={})
            s.add(failed)
            s.flush()
            failed.transition(JobStatus.RUNNING)
            failed.fail("internal", "boom")
            bad = failed.id
        with ctx.db.session() as s:
            for job_id, seconds in ((ok, 60), (bad, 3600)):
                row = s.get(Job, job_id)
                assert row is not None
                assert row.finished_at is not None
                row.started_at = row.finished_at - timedelta(seconds=seconds)
        since = datetime.now(tz=UTC) - timedelta(days=1)
        durations = ctx.db.call(lambda s: JobRepository(s).finished_durations(since))
        # The hour-long failure is not a run time: the ETA of the next job is one minute.
        assert durations == [pytest.approx(60, abs=1)]
        assert ctx.db.call(jobs._eta_minutes, 0) == 1
