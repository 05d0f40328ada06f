"""Crashes and a flaky Telegram, with the real bot, real workers, PostgreSQL and Redis: a gpu
worker SIGKILLed mid-job, the bot process SIGKILLed mid-conversation, and the Bot API answering
429 and 5xx while results are delivered. Each user still gets exactly one result."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from PIL import Image
from sqlalchemy import select

from db.base import db_now
from db.models import Job, JobKind, JobStatus
from tests.e2e.test_chat import album_of, delivered
from tests.utils.chat import JOB_SECONDS, prefix, press, send_selfie, text, use_style
from tests.utils.fake_telegram import FakeTelegram, FakeUser
from tests.utils.stack import BotProcess, Stack, face, open_stack
from tests.utils.workers import redis_available, redis_test_url

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
# Short, so a killed worker's job comes back quickly here (the default is 60 s).
LEASE_SECONDS = 10


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Bot + gpu and io workers on this test worker's Redis database."""
    if not redis_available():
        pytest.skip("worker crash recovery is tested on Redis (127.0.0.1:6379)")
    async with open_stack(
        database_url,
        redis_test_url(),
        tmp_path_factory.mktemp("crash"),
        BROKER_JOB_LEASE_SECONDS=str(LEASE_SECONDS),
    ) as s:
        yield s


async def running_job(stack: Stack, user: FakeUser, selfie: str) -> int:
    """The user sends a selfie and picks a style; returns the job id once it runs."""
    picker = await send_selfie(stack.tg, user, selfie)
    await use_style(stack.tg, user, picker)
    [job] = stack.jobs_of(user.id)
    await stack.wait(
        lambda: stack.job(job.id).status is JobStatus.RUNNING, JOB_SECONDS, "job running"
    )
    return job.id


def lease_expired(stack: Stack, job_id: int) -> bool:
    """Whether the job's lease ran out, by the database's clock."""
    with stack.db.session() as s:
        expires = s.scalar(select(Job.lease_expires_at).where(Job.id == job_id))
        return expires is not None and expires < db_now(s)


class TestGpuWorkerKilled:
    async def test_worker_sigkilled_and_restarted_under_the_same_name(self, stack: Stack) -> None:
        """A restarted container: same hostname, perhaps the same pid. Neither matters; the job
        is taken over once its lease expired and the sweep re-queued it. (Two workers on two
        node names, with beat: tests/fault/test_lease_takeover.py.)"""
        user = stack.tg.user(830002, "Lee", "en")
        job_id = await running_job(stack, user, "woman_pose1.png")
        owner = stack.job(job_id).lease_owner
        old = stack.workers["gpu"]
        old.kill()
        old.stop()
        # The message stays unacked in Redis until its visibility timeout; the lease is what
        # brings the job back.
        stack.start_worker("gpu", name="gpu")
        await stack.wait_workers_ready()
        await stack.wait(lambda: lease_expired(stack, job_id), 2 * LEASE_SECONDS, "lease expiry")
        assert stack.sweep()["resent"] == 1
        await album_of(stack, user)
        await delivered(stack, job_id)
        job = stack.job(job_id)
        assert job.attempts == 2
        assert job.lease_owner is None  # released when it finished
        assert owner is not None
        assert "taken over" in stack.workers["gpu"].log()
        assert len(stack.albums(user.id)) == 1


class TestBotKilled:
    async def test_bot_sigkilled_mid_conversation_keeps_state(self, stack: Stack) -> None:
        tg = stack.tg
        mia = tg.user(830101, "Mia", "en")
        await stack.stop_bot()
        bot = BotProcess(stack.env, stack.logs / "bot-1.log")
        try:
            await bot.ready()
            picker = await send_selfie(tg, mia, "man_pose2.png")
            tg.send_text(mia, "/template")
            await tg.wait_text(mia.id, text(mia, "template.send_own"))
            since = len(tg.calls)
            tg.send_photo(mia, face("template_group.jpg"), width=1680, height=1260)
            await tg.wait_text(mia.id, text(mia, "template.choose_faces", count=2), since=since)
            preview = [m for m in tg.bot_messages(mia.id) if m.get("photo")][-1]
            since = await press(tg, mia, preview, "2")
            await tg.wait_for("editMessageReplyMarkup", since=since, chat_id=mia.id)
            await tg.idle()
            bot.kill()

            bot = BotProcess(stack.env, stack.logs / "bot-2.log")
            await bot.ready()
            # The face picked before the crash is still selected.
            since = await press(tg, mia, preview, text(mia, "btn.start_template"))
            await tg.wait_text(mia.id, prefix(mia, "job.queued"), since=since, within=60)
            await stack.wait(lambda: stack.results(mia.id, "sendDocument"), JOB_SECONDS, "result")
            [template_job] = stack.jobs_of(mia.id)
            assert template_job.kind is JobKind.TEMPLATE
            assert template_job.params["faces"] == [2]
            await delivered(stack, template_job.id)
            # And the selfie sent before the crash still makes portraits.
            await use_style(tg, mia, picker)
            await album_of(stack, mia)
            portrait = stack.jobs_of(mia.id)[-1]
            assert portrait.kind is JobKind.PORTRAIT
            [selfie] = [p for p in stack.photos_of(mia.id) if p.kind.value == "selfie"]
            assert portrait.params["photo_ids"] == [selfie.id]
        finally:
            bot.stop()
            await stack.start_bot()


def failed(tg: FakeTelegram, method: str) -> int:
    """How many calls of `method` the fake server answered with an error."""
    return len([c for c in tg.calls_to(method) if not c.ok])


class TestTelegramFailures:
    async def test_429_and_5xx_while_delivering(self, stack: Stack) -> None:
        tg = stack.tg
        users = [tg.user(830201, "Ned", "en"), tg.user(830202, "Ola", "ru")]
        for user, selfie in zip(users, ("woman_pose2.png", "man_pose3.png"), strict=True):
            picker = await send_selfie(tg, user, selfie)
            await use_style(tg, user, picker)
        # From here on only the workers talk to Telegram.
        tg.fail_next("sendMediaGroup", 429, retry_after=1, times=2)
        tg.fail_next("sendMediaGroup", 502, times=2)
        tg.fail_next("editMessageText", 429, retry_after=1, times=2)
        tg.fail_next("sendMessage", 500, times=1)
        for user in users:
            await album_of(stack, user)
            [job] = stack.jobs_of(user.id)
            await delivered(stack, job.id)
        assert failed(tg, "sendMediaGroup") == 4
        assert failed(tg, "sendMessage") == 1
        for user in users:
            assert len(stack.albums(user.id)) == 1
            assert len([t for t in tg.sent_texts(user.id) if t == text(user, "job.next")]) == 1
            [job] = stack.jobs_of(user.id)
            assert job.status_message_id is not None
            status = tg.messages[(user.id, job.status_message_id)]
            # Tiny-profile noise never resembles the selfie: "done", then the likeness tip.
            assert status["text"] == (
                f"{text(user, 'job.done', count=2)}\n\n{text(user, 'job.low_likeness')}"
            )
            for data in await album_of(stack, user):
                assert Image.open(io.BytesIO(data)).size == (64, 64)
