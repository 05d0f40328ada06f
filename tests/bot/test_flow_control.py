"""Flood and failure handling: users don't block each other, per-user rate limit, banned users
answered once, Telegram's 429 and 5xx retried, private chats only."""

from __future__ import annotations

import io
import time

from PIL import Image
from sqlalchemy import select

from bot.handlers import intake
from bot.ratelimit import UpdateRateLimiter, Verdict
from db.models import Photo, PhotoKind
from domain import conversations
from facechain.quality import analyze_selfie
from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness, give_selfie


class TestConcurrency:
    async def test_a_slow_selfie_does_not_block_another_user(
        self, bot: BotHarness, face_bytes, monkeypatch
    ) -> None:
        def slow_analysis(*args, **kwargs):
            time.sleep(1.5)
            return analyze_selfie(*args, **kwargs)

        monkeypatch.setattr(intake, "analyze_selfie", slow_analysis)
        tg = bot.tg
        ann, bob = tg.user(5001, "Ann", "en"), tg.user(5002, "Bob", "en")
        tg.send_photo(ann, face_bytes("man_pose1.png"))
        await tg.wait_for("sendChatAction", chat_id=ann.id)
        tg.send_text(bob, "/start")
        bob_reply = await tg.wait_for("sendMessage", chat_id=bob.id)
        ann_reply = await tg.wait_text(ann.id, "Selfie saved")
        assert bob_reply.at < ann_reply.at - 1.0

    async def test_one_users_updates_keep_their_order(self, bot: BotHarness, face_bytes) -> None:
        tg = bot.tg
        ann = tg.user(5003, "Ann", "en")
        tg.send_photo(ann, face_bytes("man_pose1.png"))
        tg.send_text(ann, "/photos")
        listing = await tg.wait_text(ann.id, "Your selfies (1 of 5)")
        saved = await tg.wait_text(ann.id, "Selfie saved")
        assert saved.at < listing.at


def _picture(n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (n * 20 % 256, 255 - n * 20 % 256, n * 7 % 256)).save(buf, "PNG")
    return buf.getvalue()


class TestAlbum:
    async def test_a_10_photo_album_reaches_the_training_flow_whole_and_in_order(
        self, bot: BotHarness
    ) -> None:
        tg = bot.tg
        ann = tg.user(5004, "Ann", "en")
        user_id, _ = give_selfie(bot, ann.id, can_train=True)
        tg.send_text(ann, "/train_style")
        await tg.wait_text(ann.id, "Let's train a style")
        # An album arrives as 10 updates at once, well past any fixed per-user queue length.
        sent = [tg.send_photo(ann, _picture(n), width=96, height=96) for n in range(10)]
        await tg.wait_text(ann.id, translate("en", "training.received", count=10, min=5))
        await tg.idle()
        texts = tg.sent_texts(ann.id)
        expected_texts = [
            translate("en", "training.received", count=n, min=5) for n in range(1, 11)
        ]
        assert [t for t in texts if t in expected_texts] == expected_texts
        assert not [t for t in texts if t == translate("en", "error.internal")]
        conv = bot.db.call(conversations.load, user_id)
        with bot.db.session() as s:
            rows = {
                p.id: p.telegram_file_id
                for p in s.scalars(
                    select(Photo).where(Photo.user_id == user_id, Photo.kind == PhotoKind.TRAINING)
                )
            }
        expected = [m["photo"][0]["file_id"] for m in sent]
        assert [rows[i] for i in conv.data["train_photo_ids"]] == expected


class TestRateLimit:
    def test_limiter_warns_once_then_drops(self) -> None:
        now = [0.0]
        limiter = UpdateRateLimiter(2, clock=lambda: now[0])
        verdicts = [limiter.check(1) for _ in range(5)]
        assert verdicts == [Verdict.ALLOW, Verdict.ALLOW, Verdict.WARN, Verdict.DROP, Verdict.DROP]
        assert limiter.check(2) == Verdict.ALLOW  # other users unaffected
        now[0] = 61.0
        assert limiter.check(1) == Verdict.ALLOW  # a new window

    async def test_flood_gets_one_slow_down(self, harness: BotHarness) -> None:
        await harness.start(updates_per_minute=3)
        tg = harness.tg
        ann = tg.user(5101, "Ann", "ru")
        for i in range(8):
            tg.send_text(ann, f"hello {i}")
        await tg.wait_text(ann.id, translate("ru", "error.rate_limited"))
        await tg.idle()
        texts = tg.sent_texts(ann.id)
        assert texts.count(translate("ru", "fallback.text")) == 3
        assert texts.count(translate("ru", "error.rate_limited")) == 1
        bob = tg.user(5102, "Bob", "en")
        tg.send_text(bob, "/help")
        await tg.wait_for("sendMessage", chat_id=bob.id)

    async def test_the_slow_down_is_in_the_chosen_language(self, harness: BotHarness) -> None:
        await harness.start(updates_per_minute=2)
        tg = harness.tg
        ann = tg.user(5103, "Ann", "en")  # the client says English; Ann chose Russian
        give_selfie(harness, ann.id, language="ru", language_chosen=True)
        tg.send_text(ann, "hello")
        await tg.wait_text(ann.id, translate("ru", "fallback.text"))
        for i in range(3):
            tg.send_text(ann, f"hello {i}")
        await tg.wait_text(ann.id, translate("ru", "error.rate_limited"))
        await tg.idle()
        assert translate("en", "error.rate_limited") not in tg.sent_texts(ann.id)


class TestBanned:
    async def test_banned_user_is_answered_once(self, bot: BotHarness) -> None:
        tg = bot.tg
        eve = tg.user(5201, "Eve", "en")
        give_selfie(bot, eve.id, is_banned=True)
        for text in ("/start", "hi", "/style"):
            tg.send_text(eve, text)
        tg.send_sticker(eve)
        await tg.wait_text(eve.id, translate("en", "error.banned"))
        await tg.idle()
        assert tg.sent_texts(eve.id) == [translate("en", "error.banned")]

    async def test_a_failed_ban_notice_does_not_let_the_update_through(
        self, bot: BotHarness
    ) -> None:
        tg = bot.tg
        rex = tg.user(5202, "Rex", "en")
        give_selfie(bot, rex.id, is_banned=True)
        # The ban notice is refused (the user blocked the bot): the error handler runs, and the
        # update must still end there, before any flow handler.
        tg.fail_next("sendMessage", 403)
        tg.send_text(rex, "/help")
        await tg.wait_count("sendMessage", 1)
        await tg.idle()
        assert [c.ok for c in tg.calls_to("sendMessage", chat_id=rex.id)] == [False]


class TestTelegramFailures:
    async def test_429_is_retried_after_the_asked_delay(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5301, "Ann", "en")
        tg.fail_next("sendMessage", 429, retry_after=1)
        tg.send_text(ann, "/start")
        ok = await tg.wait_text(ann.id, "Hi Ann")
        [failed, _] = tg.calls_to("sendMessage", chat_id=ann.id)
        assert ok.at - failed.at >= 0.9

    async def test_5xx_is_retried(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5302, "Ann", "en")
        tg.fail_next("sendMessage", 502, times=2)
        tg.send_text(ann, "/help")
        await tg.wait_text(ann.id, "/style")
        assert len(tg.calls_to("sendMessage", chat_id=ann.id)) == 3

    async def test_a_failing_update_does_not_stop_the_next(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5303, "Ann", "en")
        tg.fail_next("sendMessage", 500, times=4)  # the first try and all three retries
        tg.send_text(ann, "/help")
        await tg.wait_count("sendMessage", 4)
        tg.send_text(ann, "/start")
        await tg.wait_text(ann.id, "Hi Ann")
        assert not [t for t in tg.sent_texts(ann.id) if "/style" in t]  # /help's reply was lost


class TestChats:
    async def test_group_chats_are_ignored(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5401, "Ann", "en")
        tg.send_raw(
            {
                "message": {
                    "message_id": 1,
                    "date": int(time.time()),
                    "chat": {"id": -100123, "type": "supergroup", "title": "G"},
                    "from": ann.to_dict(),
                    "text": "/start",
                    "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
                }
            }
        )
        await tg.idle()
        assert not tg.calls_to("sendMessage")
