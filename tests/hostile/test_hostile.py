"""Hostile input through the real bot and the fake Bot API server: broken, huge and disguised
files, odd but valid encodings, nasty names and texts, forged button data, and a burst of 1000
updates from one user. Each gets its defined reply; nothing crashes (no ERROR log, no traceback);
no row is lost; memory stays bounded."""

from __future__ import annotations

import html
import logging
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from db.models import Job, JobStatus, Style, User, UserSession
from tests.hostile.corpus import (
    ACCEPTED_NAMES,
    EXIF_UPRIGHT_HEIGHT,
    FORGED_CALLBACKS,
    NASTY_STRINGS,
    REJECTED_NAMES,
    Upload,
    accepted,
    rejected,
)
from tests.utils.chat import prefix, send_selfie, text
from tests.utils.factories import make_portrait_job
from tests.utils.fake_telegram import FakeTelegram, FakeUser
from tests.utils.stack import Stack, face, open_stack, read_rss_kib

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # Pillow warns when it reads a 100-megapixel header; the bot then refuses the image.
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

LANGUAGES = ("en", "ru", "zh")
# Growth of this process's resident memory (bot included) allowed over a whole hostile batch.
RSS_BUDGET_KIB = 96 * 1024
BURST = 1000


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """The real bot on the fake Bot API server (no workers: nothing here may become a job)."""
    async with open_stack(
        database_url, "memory://", tmp_path_factory.mktemp("hostile"), queues=()
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def no_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing logged at ERROR and no traceback, whatever the input."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def send(tg: FakeTelegram, user: FakeUser, upload: Upload) -> None:
    """The user uploads a file, as a photo or as a document."""
    if upload.as_photo:
        tg.send_photo(user, upload.data)
    else:
        tg.send_document(user, upload.data, file_name=upload.name, mime_type=upload.mime)


def count(stack: Stack, model: type, **where: object) -> int:
    """Rows of a table matching column == value filters."""
    with stack.db.session() as s:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int(s.scalar(query) or 0)


class TestRejectedFiles:
    @pytest.mark.parametrize("name", REJECTED_NAMES)
    async def test_gets_its_reply(self, stack: Stack, name: str) -> None:
        upload, key = rejected()[name]
        index = REJECTED_NAMES.index(name)
        user = stack.tg.user(840000 + index, "Hostile", LANGUAGES[index % 3])
        since = len(stack.tg.calls)
        send(stack.tg, user, upload)
        call = await stack.tg.wait_text(user.id, text(user, key), since=since, within=30)
        assert call.params["text"] == text(user, key)
        await stack.tg.idle()
        assert stack.photos_of(user.id) == []

    async def test_a_kept_selfie_survives_all_of_them_and_memory_stays_bounded(
        self, stack: Stack
    ) -> None:
        tg = stack.tg
        user = tg.user(840100, "Keeper", "en")
        await send_selfie(tg, user, "woman_pose1.png")  # also warms the face detector up
        [kept] = stack.photos_of(user.id)
        corpus = rejected()
        baseline = read_rss_kib()
        # Three rounds (each from its own sender, to stay under the per-user flood limit).
        for sender in (user, tg.user(840101, "Second", "zh"), tg.user(840102, "Third", "ru")):
            for name in REJECTED_NAMES:
                since = len(tg.calls)
                upload, key = corpus[name]
                send(tg, sender, upload)
                await tg.wait_text(sender.id, text(sender, key), since=since, within=30)
        grown = read_rss_kib() - baseline
        assert grown < RSS_BUDGET_KIB, f"RSS grew by {grown} KiB"
        assert [p.id for p in stack.photos_of(user.id)] == [kept.id]
        row = stack.user(user.id)
        assert row is not None
        assert count(stack, UserSession, user_id=row.id) == 1


class TestUnusualButValidSelfies:
    @pytest.mark.parametrize("name", ACCEPTED_NAMES)
    async def test_is_kept_like_any_selfie(self, stack: Stack, name: str) -> None:
        upload = accepted()[name]
        user = stack.tg.user(840200 + ACCEPTED_NAMES.index(name), "Odd", "en")
        since = len(stack.tg.calls)
        send(stack.tg, user, upload)
        await stack.tg.wait_text(user.id, prefix(user, "selfie.saved"), since=since, within=30)
        [photo] = stack.photos_of(user.id)
        assert len(photo.faces) == 1
        assert photo.selected_face == 0
        if name == "exif_rotated":
            assert (photo.width, photo.height) == (512, EXIF_UPRIGHT_HEIGHT)


class TestNastyText:
    @pytest.mark.parametrize("name", list(NASTY_STRINGS))
    async def test_names_and_texts_are_data(self, stack: Stack, name: str) -> None:
        tg = stack.tg
        nasty = NASTY_STRINGS[name]
        index = list(NASTY_STRINGS).index(name)
        user = tg.user(840300 + index, nasty, LANGUAGES[index % 3], username=f"u{index}_x")
        users_before = count(stack, User)

        since = len(tg.calls)
        tg.send_text(user, f"/start {nasty}")
        welcome = await tg.wait_for("sendMessage", chat_id=user.id, since=since)
        shown = nasty.replace("\x00", "")
        if welcome.params.get("parse_mode") == "HTML":
            assert html.escape(shown) in welcome.params["text"]
        else:
            assert welcome.params["text"].startswith(prefix(user, "start.welcome"))

        for message in (nasty, f"/{nasty}", nasty * 50):
            since = len(tg.calls)
            tg.send_text(user, message[:4096])
            await tg.wait_for("sendMessage", chat_id=user.id, since=since)

        # A selfie with the nasty text as its caption is still just a selfie.
        since = len(tg.calls)
        stored = tg.add_file(face("man_pose3.png"), "png")
        tg.send_raw(
            {
                "message": {
                    "message_id": 10**6 + index,
                    "date": int(time.time()),
                    "chat": user.chat(),
                    "from": user.to_dict(),
                    "caption": nasty,
                    "photo": [
                        {
                            "file_id": stored.file_id,
                            "file_unique_id": stored.unique_id,
                            "width": 512,
                            "height": 512,
                            "file_size": len(stored.data),
                        }
                    ],
                }
            }
        )
        await tg.wait_text(user.id, prefix(user, "selfie.saved"), since=since, within=30)
        await tg.idle()
        assert count(stack, User) == users_before + 1
        row = stack.user(user.id)
        assert row is not None
        assert row.first_name == shown
        assert len(stack.photos_of(user.id)) == 1


class TestForgedCallbacks:
    async def test_forged_data_is_answered_politely(self, stack: Stack) -> None:
        tg = stack.tg
        user = tg.user(840400, "Forger", "ru")
        tg.send_text(user, "/start")
        await tg.wait_for("sendMessage", chat_id=user.id)
        message = tg.bot_messages(user.id)[-1]
        for data in FORGED_CALLBACKS:
            since = len(tg.calls)
            query_id = tg.press(user, message, data)
            await tg.wait_for("answerCallbackQuery", since=since, callback_query_id=query_id)
        # A press without its message (inline or too old for Telegram to include it).
        since = len(tg.calls)
        tg.send_raw(
            {
                "callback_query": {
                    "id": "Qorphan",
                    "from": user.to_dict(),
                    "chat_instance": "ci",
                    "data": "su:1",
                }
            }
        )
        await tg.wait_for("answerCallbackQuery", since=since, callback_query_id="Qorphan")
        await tg.idle()
        assert stack.jobs_of(user.id) == []

    async def test_someone_elses_job_cannot_be_cancelled(self, stack: Stack) -> None:
        tg = stack.tg
        owner = tg.user(840401, "Owner", "en")
        thief = tg.user(840402, "Thief", "en")
        await send_selfie(tg, owner, "man_pose2.png")
        row = stack.user(owner.id)
        [photo] = stack.photos_of(owner.id)
        assert row is not None
        with stack.db.session() as s:
            style = s.get(Style, stack.style_ids[0])
            assert style is not None
            job_id = make_portrait_job(s, s.merge(row), s.merge(photo), style).id
        tg.send_text(thief, "/start")
        await tg.wait_for("sendMessage", chat_id=thief.id)
        since = len(tg.calls)
        tg.press(thief, tg.bot_messages(thief.id)[-1], f"jc:{job_id}")
        await tg.wait_text(thief.id, text(thief, "callback.stale"), since=since)
        assert stack.job(job_id).status is JobStatus.QUEUED
        assert not stack.job(job_id).cancel_requested


class TestBurst:
    async def test_thousand_updates_from_one_user(self, stack: Stack) -> None:
        tg = stack.tg
        flooder = tg.user(840500, "Flood", "en")
        bystander = tg.user(840501, "Calm", "en")
        tg.send_text(flooder, "/start")
        await tg.wait_for("sendMessage", chat_id=flooder.id)
        picker = tg.bot_messages(flooder.id)[-1]
        await tg.idle()
        jobs_before = count(stack, Job)
        baseline = read_rss_kib()
        since = len(tg.calls)
        started = time.monotonic()
        for i in range(BURST):
            kind = i % 4
            if kind == 0:
                tg.send_text(flooder, f"spam {i} ' OR 1=1 --")
            elif kind == 1:
                tg.send_text(flooder, "/style")
            elif kind == 2:
                tg.press(flooder, picker, f"sp:all:{i}")
            else:
                tg.send_text(flooder, "/start")
        # Someone else is served while the flood is being drained.
        tg.send_text(bystander, "/start")
        greeting = await tg.wait_text(
            bystander.id, prefix(bystander, "start.welcome"), since=since
        )
        await tg.idle(within=120)
        drained = time.monotonic() - started
        grown = read_rss_kib() - baseline

        slow_down = text(flooder, "error.rate_limited")
        warnings = [t for t in tg.sent_texts(flooder.id) if t == slow_down]
        assert len(warnings) == 1
        answered = [
            c
            for c in tg.calls[since:]
            if c.chat_id == flooder.id and c.method in ("sendMessage", "sendPhoto")
        ]
        assert stack.config is not None
        limit = stack.config.limits.updates_per_minute
        assert len(answered) <= limit + 1
        assert greeting.at - started < 10
        assert drained < 90
        assert grown < RSS_BUDGET_KIB, f"RSS grew by {grown} KiB"
        assert count(stack, User, telegram_id=flooder.id) == 1
        assert count(stack, Job) == jobs_before
