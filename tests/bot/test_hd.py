"""The HD buttons under a portrait album: an upscale job per press (no quota, one active job),
and forged, foreign or stale presses refused without creating anything."""

from __future__ import annotations

from typing import Any

from db.models import Job, JobKind, JobStatus
from telegram_ui.i18n import translate
from telegram_ui.keyboards import result_keyboard
from tests.bot.conftest import BotHarness, jobs_of, published
from tests.utils.factories import make_user


def finished_portraits(
    bot: BotHarness, telegram_id: int, count: int = 2, status: JobStatus = JobStatus.SUCCEEDED
) -> Job:
    """A user with a portrait job holding `count` result images, as the workers leave it."""
    with bot.db.session() as s:
        user = make_user(s, telegram_id)
        job = Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={"style_id": bot.style_ids[0]},
            style_id=bot.style_ids[0],
            chat_id=telegram_id,
        )
        s.add(job)
        s.flush()
        job.result_blobs = [bot.blobs.put(f"portrait-{i}".encode()) for i in range(count)]
        path = {
            JobStatus.CANCELLED: [JobStatus.CANCELLED],
            JobStatus.SUCCEEDED: [JobStatus.RUNNING, JobStatus.SUCCEEDED],
        }[status]
        for step in path:
            job.transition(step)
        s.flush()
        s.expunge(job)
        return job


def album_follow_up(bot: BotHarness, telegram_id: int, job: Job) -> dict[str, Any]:
    """The "What next?" message the io worker sends after the album (with the HD row)."""
    return bot.tg._bot_message(
        telegram_id,
        text=translate("en", "job.next"),
        reply_markup=result_keyboard(
            job.id, job.style_id, "en", len(job.result_blobs or [])
        ).to_dict(),
    )


def hd_labels(message: dict[str, Any]) -> list[str]:
    return [
        b["text"]
        for row in message["reply_markup"]["inline_keyboard"]
        for b in row
        if b["callback_data"].startswith("hd:")
    ]


class TestHdButtons:
    async def test_one_button_per_portrait_and_a_press_starts_an_upscale_job(
        self, harness: BotHarness
    ) -> None:
        # The portrait already used the whole daily quota: HD still runs (it is not counted).
        await harness.start(daily_quota=1)
        tg = harness.tg
        ann = tg.user(5001, "Ann", "en")
        source = finished_portraits(harness, ann.id, count=3)
        message = album_follow_up(harness, ann.id, source)
        assert hd_labels(message) == ["HD 1", "HD 2", "HD 3"]

        since = len(tg.calls)
        tg.press_button(ann, message, "HD 2")
        status = await tg.wait_text(ann.id, "#1 in the queue", since=since)
        assert status.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == (
            f"jc:{source.id + 1}"
        )
        await tg.idle()
        [_, hd] = jobs_of(harness, ann.id)
        assert hd.kind is JobKind.UPSCALE
        assert hd.status is JobStatus.QUEUED
        assert hd.params == {"source_job_id": source.id, "index": 1, "size": 2048}
        assert hd.chat_id == ann.id
        assert hd.status_message_id is not None
        assert published(harness.celery) == [("portrait.upscale", [hd.id])]

        # One active job per user still holds.
        since = len(tg.calls)
        tg.press_button(ann, message, "HD 3")
        await tg.wait_text(ann.id, translate("en", "error.active_job_exists"), since=since)
        assert len(jobs_of(harness, ann.id)) == 2

    def test_no_hd_row_for_templates(self) -> None:
        markup = result_keyboard(7, None, "en", 1).to_dict()
        assert not hd_labels({"reply_markup": markup})

    async def test_forged_data_is_rejected(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5002, "Ann", "en")
        source = finished_portraits(bot, ann.id)
        message = album_follow_up(bot, ann.id, source)
        for data in (f"hd:{source.id}", f"hd:{source.id}:x", f"hd:{source.id}:-1", "hd::0"):
            since = len(tg.calls)
            query_id = tg.press(ann, message, data)
            answer = await tg.wait_for(
                "answerCallbackQuery", since=since, callback_query_id=query_id
            )
            assert answer.params.get("text") == translate("en", "callback.stale")
        await tg.idle()
        assert [j.kind for j in jobs_of(bot, ann.id)] == [JobKind.PORTRAIT]
        assert published(bot.celery) == []

    async def test_someone_elses_job_is_rejected(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5003, "Ann", "en")
        eve = tg.user(5004, "Eve", "en")
        anns = finished_portraits(bot, ann.id)
        finished_portraits(bot, eve.id)
        # Eve replays Ann's callback data under her own chat.
        message = album_follow_up(bot, eve.id, anns)
        since = len(tg.calls)
        tg.press_button(eve, message, "HD 1")
        await tg.wait_text(eve.id, translate("en", "error.result_unavailable"), since=since)
        await tg.idle()
        assert [j.kind for j in jobs_of(bot, eve.id)] == [JobKind.PORTRAIT]
        assert [j.kind for j in jobs_of(bot, ann.id)] == [JobKind.PORTRAIT]
        assert published(bot.celery) == []

    async def test_stale_presses_are_explained(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5005, "Ann", "en")
        source = finished_portraits(bot, ann.id, count=2)
        message = album_follow_up(bot, ann.id, source)
        # An index past the album, and a job that is gone.
        for data in (f"hd:{source.id}:2", f"hd:{source.id + 1000}:0"):
            since = len(tg.calls)
            tg.press(ann, message, data)
            await tg.wait_text(ann.id, translate("en", "error.result_unavailable"), since=since)
        await tg.idle()
        assert len(jobs_of(bot, ann.id)) == 1

    async def test_a_cancelled_job_has_nothing_to_upscale(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5006, "Ann", "en")
        source = finished_portraits(bot, ann.id, status=JobStatus.CANCELLED)
        message = album_follow_up(bot, ann.id, source)
        since = len(tg.calls)
        tg.press(ann, message, f"hd:{source.id}:0")
        await tg.wait_text(ann.id, translate("en", "error.result_unavailable"), since=since)
        await tg.idle()
        assert len(jobs_of(bot, ann.id)) == 1

    async def test_history_resends_an_hd_result_as_a_document(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5007, "Ann", "en")
        source = finished_portraits(bot, ann.id)
        with bot.db.session() as s:
            hd = Job(
                user_id=source.user_id,
                kind=JobKind.UPSCALE,
                params={"source_job_id": source.id, "index": 0, "size": 2048},
                chat_id=ann.id,
            )
            s.add(hd)
            s.flush()
            hd.result_blobs = [bot.blobs.put(b"hd-png")]
            hd.result_meta = {"filename": f"portrait-{source.id}-1-256.png"}
            for step in (JobStatus.RUNNING, JobStatus.SUCCEEDED):
                hd.transition(step)
        since = len(tg.calls)
        tg.send_text(ann, "/history")
        await tg.wait_text(ann.id, translate("en", "kind.upscale"), since=since)
        listing = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        tg.press_button(ann, listing, "#1")  # newest first: the HD job
        document = await tg.wait_for("sendDocument", chat_id=ann.id, since=since)
        assert list(document.files.values()) == [b"hd-png"]
        assert document.get("filename") == f"portrait-{source.id}-1-256.png"
