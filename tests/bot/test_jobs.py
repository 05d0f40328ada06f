"""Generation from the chat: job creation checks, the status message, dispatch, cancel, result
buttons, and a bot restarted mid-conversation."""

from __future__ import annotations

from sqlalchemy import select

from db.base import utcnow
from db.models import Job, JobKind, JobStatus, User, WebhookDelivery, WebhookEndpoint
from telegram_ui.i18n import translate
from telegram_ui.keyboards import result_keyboard
from tests.bot.conftest import ADMIN_ID, BotHarness, give_selfie, jobs_of, published


async def pick_first_style(bot: BotHarness, user) -> dict:
    """Open /style and press "Use this style" on the first style."""
    bot.tg.send_text(user, "/style")
    await bot.tg.wait_for("sendPhoto", chat_id=user.id)
    picker = bot.tg.bot_messages(user.id)[-1]
    bot.tg.press_button(user, picker, translate(user.language_code, "btn.use_style"))
    return picker


def set_status(bot: BotHarness, job_id: int, *statuses: JobStatus) -> None:
    with bot.db.session() as s:
        job = s.get(Job, job_id)
        for status in statuses:
            job.transition(status)


class TestCreateJob:
    async def test_use_style_creates_dispatches_and_announces(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4001, "Ann", "en")
        _, photo_id = give_selfie(bot, ann.id)
        await pick_first_style(bot, ann)
        status = await tg.wait_text(ann.id, "#1 in the queue")
        assert status.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"].startswith(
            "jc:"
        )
        await tg.idle()
        [job] = jobs_of(bot, ann.id)
        assert job.kind is JobKind.PORTRAIT
        assert job.status is JobStatus.QUEUED
        assert job.params["photo_ids"] == [photo_id]
        assert job.params["style_id"] == bot.style_ids[0] == job.style_id
        assert job.params["num_images"] == 2
        assert job.chat_id == ann.id
        assert job.status_message_id is not None
        assert job.dispatched_at is not None
        assert published(bot.celery) == [("portrait.generate", [job.id])]

    async def test_style_first_then_selfie_starts_the_job(
        self, bot: BotHarness, face_bytes
    ) -> None:
        tg = bot.tg
        ann = tg.user(4002, "Ann", "en")
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, translate("en", "styles.send_selfie_first"))
        assert jobs_of(bot, ann.id) == []
        tg.send_photo(ann, face_bytes("woman_pose2.png"))
        await tg.wait_text(ann.id, "#1 in the queue")
        [job] = jobs_of(bot, ann.id)
        assert job.style_id == bot.style_ids[0]

    async def test_one_active_job_per_user(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4003, "Ann", "en")
        give_selfie(bot, ann.id)
        picker = await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, "#1 in the queue")
        since = len(tg.calls)
        tg.press_button(ann, picker, translate("en", "btn.use_style"))
        await tg.wait_text(ann.id, translate("en", "error.active_job_exists"), since=since)
        assert len(jobs_of(bot, ann.id)) == 1

    async def test_daily_quota_and_admins_are_exempt(self, harness: BotHarness) -> None:
        await harness.start(daily_quota=1)
        tg = harness.tg
        for telegram_id in (4004, ADMIN_ID):
            user = tg.user(telegram_id, "Q", "en")
            give_selfie(harness, telegram_id)
            picker = await pick_first_style(harness, user)
            await tg.wait_text(user.id, "in the queue")
            [job] = jobs_of(harness, telegram_id)
            set_status(harness, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED)
            since = len(tg.calls)
            tg.press_button(user, picker, translate("en", "btn.use_style"))
            if telegram_id == ADMIN_ID:
                await tg.wait_text(user.id, "in the queue", since=since)
                assert len(jobs_of(harness, telegram_id)) == 2
            else:
                await tg.wait_text(
                    user.id,
                    ("You've used today's limit of 1 generation. It resets at midnight UTC."),
                    since=since,
                )
                assert len(jobs_of(harness, telegram_id)) == 1

    async def test_the_quota_counts_successes_and_the_users_own_failures(
        self, harness: BotHarness
    ) -> None:
        """Issue 12: a job that failed through no fault of the user does not use up the day."""
        await harness.start(daily_quota=1)
        tg = harness.tg
        user = tg.user(4006, "Q", "en")
        give_selfie(harness, user.id)
        picker = await pick_first_style(harness, user)
        await tg.wait_text(user.id, "in the queue")
        for code in ("internal", "no_face"):
            job = jobs_of(harness, user.id)[-1]
            with harness.db.session() as s:
                row = s.get(Job, job.id)
                row.transition(JobStatus.RUNNING)
                row.fail(code, "boom")
            since = len(tg.calls)
            tg.press_button(user, picker, translate("en", "btn.use_style"))
            if code == "internal":
                # The worker's failure: the day's generation is still there.
                await tg.wait_text(user.id, "in the queue", since=since)
                assert len(jobs_of(harness, user.id)) == 2
            else:
                # The user's photo had no face: that one counts.
                await tg.wait_text(
                    user.id,
                    ("You've used today's limit of 1 generation. It resets at midnight UTC."),
                    since=since,
                )
                assert len(jobs_of(harness, user.id)) == 2

    async def test_banned_user_cannot_start(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4005, "Ann", "en")
        give_selfie(bot, ann.id, is_banned=True)
        bot.tg.send_text(ann, "/style")
        await tg.wait_text(ann.id, translate("en", "error.banned"))
        await tg.idle()
        assert not tg.calls_to("sendPhoto", chat_id=ann.id)


class TestCancel:
    async def test_cancel_a_queued_job(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4101, "Ann", "ru")
        give_selfie(bot, ann.id)
        with bot.db.session() as s:
            s.add(
                WebhookEndpoint(url="http://x.invalid/", secret="s" * 16, events=["job.cancelled"])
            )
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, "в очереди")
        status = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        tg.press_button(ann, status, translate("ru", "btn.cancel"))
        call = await tg.wait_for("editMessageText", chat_id=ann.id, since=since)
        assert call.params["text"] == translate("ru", "job.cancelled")
        [job] = jobs_of(bot, ann.id)
        assert job.status is JobStatus.CANCELLED
        assert job.error_code == "cancelled"
        with bot.db.session() as s:
            [event] = s.scalars(select(WebhookDelivery)).all()
        assert (event.event, event.payload["job_id"]) == ("job.cancelled", job.id)

    async def test_cancel_a_running_job_asks_the_worker(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4102, "Ann", "en")
        give_selfie(bot, ann.id)
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, "in the queue")
        [job] = jobs_of(bot, ann.id)
        set_status(bot, job.id, JobStatus.RUNNING)
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], "Cancel")
        await tg.wait_text(ann.id, translate("en", "job.cancelling"), since=since)
        [job] = jobs_of(bot, ann.id)
        assert job.status is JobStatus.RUNNING
        assert job.cancel_requested

    async def test_cancel_after_finish_says_so(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(4103, "Ann", "en")
        give_selfie(bot, ann.id)
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, "in the queue")
        [job] = jobs_of(bot, ann.id)
        set_status(bot, job.id, JobStatus.RUNNING, JobStatus.SUCCEEDED)
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], "Cancel")
        await tg.wait_text(ann.id, translate("en", "job.already_finished"), since=since)


def finished_job(bot: BotHarness, telegram_id: int, results: list[bytes]) -> Job:
    """A delivered portrait job with result blobs, as the worker leaves it."""
    [job] = jobs_of(bot, telegram_id)
    with bot.db.session() as s:
        row = s.get(Job, job.id)
        row.result_blobs = [bot.blobs.put(r) for r in results]
        row.transition(JobStatus.RUNNING)
        row.transition(JobStatus.SUCCEEDED)
        row.delivered_at = utcnow()
    return jobs_of(bot, telegram_id)[0]


class TestResultButtons:
    async def _results_message(self, bot: BotHarness, user) -> tuple[Job, dict]:
        give_selfie(bot, user.id)
        await pick_first_style(bot, user)
        await bot.tg.wait_text(user.id, "in the queue")
        job = finished_job(bot, user.id, [b"result-1", b"result-2"])
        # What the io worker sends after the album.
        message = bot.tg._bot_message(
            user.id,
            text=translate("en", "job.next"),
            reply_markup=result_keyboard(job.id, job.style_id, "en").to_dict(),
        )
        return job, message

    async def test_more_like_this(self, bot: BotHarness) -> None:
        ann = bot.tg.user(4201, "Ann", "en")
        job, message = await self._results_message(bot, ann)
        since = len(bot.tg.calls)
        bot.tg.press_button(ann, message, "More like this")
        await bot.tg.wait_text(ann.id, "in the queue", since=since)
        jobs = jobs_of(bot, ann.id)
        assert len(jobs) == 2
        assert jobs[1].style_id == job.style_id

    async def test_use_a_pose(self, bot: BotHarness, face_bytes) -> None:
        ann = bot.tg.user(4202, "Ann", "en")
        job, message = await self._results_message(bot, ann)
        since = len(bot.tg.calls)
        bot.tg.press_button(ann, message, "pose")
        await bot.tg.wait_text(ann.id, translate("en", "pose.send"), since=since)
        pose = face_bytes("man_pose3.png")
        bot.tg.send_photo(ann, pose)
        await bot.tg.wait_text(ann.id, "in the queue", since=since)
        new = jobs_of(bot, ann.id)[-1]
        assert new.params["pose_blob"]
        assert bot.blobs.get(new.params["pose_blob"]) == pose
        assert new.style_id == job.style_id

    async def test_another_style_opens_the_picker(self, bot: BotHarness) -> None:
        ann = bot.tg.user(4203, "Ann", "en")
        _, message = await self._results_message(bot, ann)
        since = len(bot.tg.calls)
        bot.tg.press_button(ann, message, "Another style")
        await bot.tg.wait_for("sendPhoto", chat_id=ann.id, since=since)

    async def test_history_lists_and_resends(self, bot: BotHarness) -> None:
        ann = bot.tg.user(4204, "Ann", "en")
        await self._results_message(bot, ann)
        since = len(bot.tg.calls)
        bot.tg.send_text(ann, "/history")
        call = await bot.tg.wait_text(ann.id, "Armor", since=since)
        assert "done" in call.params["text"]
        listing = bot.tg.bot_messages(ann.id)[-1]
        since = len(bot.tg.calls)
        bot.tg.press_button(ann, listing, "#1")
        group = await bot.tg.wait_for("sendMediaGroup", chat_id=ann.id, since=since)
        assert sorted(group.files.values()) == [b"result-1", b"result-2"]


class TestRestart:
    async def test_selfie_then_restart_then_style(self, bot: BotHarness, face_bytes) -> None:
        tg = bot.tg
        ann = tg.user(4301, "Ann", "en")
        tg.send_photo(ann, face_bytes("woman_pose3.png"))
        await tg.wait_for("sendPhoto", chat_id=ann.id)
        picker = tg.bot_messages(ann.id)[-1]
        await bot.restart()  # a new process: nothing in memory survives
        since = len(tg.calls)
        tg.press_button(ann, picker, "▶")
        await tg.wait_text(ann.id, "Elf", since=since)
        tg.press_button(ann, picker, translate("en", "btn.use_style"))
        await tg.wait_text(ann.id, "in the queue", since=since)
        [job] = jobs_of(bot, ann.id)
        assert job.style_id == bot.style_ids[1]
        assert len(job.params["photo_ids"]) == 1

    async def test_style_then_restart_then_selfie(self, bot: BotHarness, face_bytes) -> None:
        tg = bot.tg
        ann = tg.user(4302, "Ann", "en")
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, translate("en", "styles.send_selfie_first"))
        await bot.restart()
        tg.send_photo(ann, face_bytes("man_pose2.png"))
        await tg.wait_text(ann.id, "in the queue")
        [job] = jobs_of(bot, ann.id)
        assert job.style_id == bot.style_ids[0]

    async def test_pending_face_choice_survives_a_restart(
        self, bot: BotHarness, face_bytes
    ) -> None:
        tg = bot.tg
        ann = tg.user(4303, "Ann", "en")
        tg.send_photo(ann, face_bytes("template_group.jpg"))
        await tg.wait_text(ann.id, "I see 2 faces. Which one is you? Tap its number.")
        preview = tg.bot_messages(ann.id)[-1]
        await bot.restart()
        since = len(tg.calls)
        tg.press_button(ann, preview, "1")
        await tg.wait_text(ann.id, translate("en", "selfie.face_chosen", n=1), since=since)
        with bot.db.session() as s:
            user = s.scalar(select(User).where(User.telegram_id == ann.id))
            assert user is not None
            assert user.last_seen_at <= utcnow()
