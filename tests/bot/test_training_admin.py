"""/train_style, /photos and the admin commands."""

from __future__ import annotations

from sqlalchemy import select

from core.blobstore import sha256_hex
from db.models import AuditEntry, Broadcast, JobKind, Photo, StyleTraining, User
from telegram_ui.i18n import translate
from tests.bot.conftest import ADMIN_ID, BotHarness, give_selfie, jobs_of, published
from tests.facechain.face_data import encode, landscape_rgb


class TestTraining:
    async def test_not_allowed_for_everyone(self, bot: BotHarness) -> None:
        ann = bot.tg.user(8001, "Ann", "en")
        bot.tg.send_text(ann, "/train_style")
        await bot.tg.wait_text(ann.id, translate("en", "error.training_not_allowed"))

    async def test_admin_trains_a_style(self, harness: BotHarness, face_bytes) -> None:
        await harness.start(training_min_images=2)
        tg = harness.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/train_style")
        await tg.wait_text(admin.id, "Let's train a style")
        tg.send_text(admin, "/done")
        await tg.wait_text(admin.id, "I need at least 2 images; you've sent 0. Send a few more.")
        tg.send_photo(admin, encode(landscape_rgb(seed=1)))
        await tg.wait_text(admin.id, translate("en", "training.received", count=1, min=2))
        tg.send_document(admin, encode(landscape_rgb(seed=2)), file_name="b.png")
        await tg.wait_text(admin.id, translate("en", "training.received", count=2, min=2))
        tg.send_text(admin, "/done")
        await tg.wait_text(admin.id, translate("en", "training.ask_name"))
        tg.send_text(admin, "Ink wash")
        await tg.wait_text(admin.id, translate("en", "training.ask_trigger"))
        tg.send_text(admin, "two words")
        await tg.wait_text(admin.id, translate("en", "training.bad_trigger"))
        tg.send_text(admin, "InkWash")
        confirm = await tg.wait_text(
            admin.id,
            "Train “Ink wash” (trigger: inkwash) on 2 images?",
        )
        assert confirm.params["reply_markup"]
        tg.press_button(admin, tg.bot_messages(admin.id)[-1], translate("en", "btn.train_yes"))
        await tg.wait_text(admin.id, "in the queue")
        await tg.idle()
        [job] = jobs_of(harness, admin.id)
        assert job.kind is JobKind.TRAINING
        with harness.db.session() as s:
            training = s.get(StyleTraining, job.params["training_id"])
            assert training.name == "Ink wash"
            assert training.trigger_word == "inkwash"
            assert training.job_id == job.id
            assert len(training.image_blobs) == 2
        # Trainings have a queue of their own: portraits never wait behind one.
        assert published(harness.celery, "train") == [("style.train", [job.id])]
        assert published(harness.celery, "gpu") == []

    async def test_user_with_can_train(self, bot: BotHarness) -> None:
        ann = bot.tg.user(8002, "Ann", "en")
        give_selfie(bot, ann.id, can_train=True)
        bot.tg.send_text(ann, "/train_style")
        await bot.tg.wait_text(ann.id, "Let's train a style")
        bot.tg.send_text(ann, "/cancel")
        await bot.tg.wait_text(ann.id, translate("en", "cancel.done"))


class TestPhotos:
    async def test_list_and_delete(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(8101, "Ann", "en")
        _, first = give_selfie(bot, ann.id, name="man_pose1.png")
        _, second = give_selfie(bot, ann.id, name="man_pose2.png")
        with bot.db.session() as s:
            key = s.get(Photo, first).sha256
        tg.send_text(ann, "/photos")
        await tg.wait_text(ann.id, "Your selfies (2 of 5)")
        listing = tg.bot_messages(ann.id)[-1]
        tg.press_button(ann, listing, translate("en", "btn.delete_photo", n=1))
        await tg.wait_text(ann.id, "Your selfies (1 of 5)")
        with bot.db.session() as s:
            assert s.get(Photo, first) is None
            assert s.get(Photo, second) is not None
        assert not bot.blobs.exists(key)

    async def test_oldest_selfie_makes_room(self, harness: BotHarness, face_bytes) -> None:
        await harness.start(max_selfies=2)
        tg = harness.tg
        ann = tg.user(8102, "Ann", "en")
        for name in ("man_pose1.png", "man_pose2.png", "man_pose3.png"):
            since = len(tg.calls)
            tg.send_photo(ann, face_bytes(name))
            await tg.wait_text(ann.id, "Selfie saved", since=since)
        with harness.db.session() as s:
            kept = s.scalars(select(Photo.sha256).order_by(Photo.id)).all()
        assert len(kept) == 2
        assert not harness.blobs.exists(sha256_hex(face_bytes("man_pose1.png")))


class TestAdmin:
    async def test_non_admin_gets_unknown_command(self, bot: BotHarness) -> None:
        ann = bot.tg.user(8201, "Ann", "en")
        bot.tg.send_text(ann, "/stats")
        await bot.tg.wait_text(ann.id, translate("en", "fallback.unknown_command"))

    async def test_stats_ban_unban_quota(self, bot: BotHarness) -> None:
        tg = bot.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        give_selfie(bot, 8202, username="mallory")
        tg.send_text(admin, "/stats")
        await tg.wait_text(admin.id, "📊 Users: 2 (active 24h: 1, banned: 0)")
        tg.send_text(admin, "/ban @mallory")
        await tg.wait_text(admin.id, translate("en", "admin.ban_done", user=8202))
        assert bot.user_row(8202).is_banned
        tg.send_text(admin, "/quota 8202 3")
        await tg.wait_text(admin.id, translate("en", "admin.quota_done", user=8202, quota=3))
        assert bot.user_row(8202).daily_quota == 3
        tg.send_text(admin, "/unban 8202")
        await tg.wait_text(admin.id, translate("en", "admin.unban_done", user=8202))
        assert not bot.user_row(8202).is_banned
        tg.send_text(admin, "/ban")
        await tg.wait_text(admin.id, translate("en", "admin.ban_usage"))
        tg.send_text(admin, "/ban 123")
        await tg.wait_text(admin.id, translate("en", "error.not_found"))
        with bot.db.session() as s:
            actions = s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
            assert actions == ["user.ban", "user.quota", "user.unban"]
            assert set(s.scalars(select(AuditEntry.actor))) == {f"tg:{ADMIN_ID}"}

    async def test_a_username_belongs_to_its_latest_holder(self, bot: BotHarness) -> None:
        """A name dropped or taken over never leads an admin command to its former holder."""
        tg = bot.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(tg.user(8301, "Eve", "en", username="eve"), "/start")
        await tg.wait_for("sendMessage", chat_id=8301)
        # Eve gave the name up; Zed took it (Telegram names are case-insensitive).
        tg.send_text(tg.user(8301, "Eve", "en"), "/help")
        tg.send_text(tg.user(8302, "Zed", "en", username="EVE"), "/start")
        await tg.wait_for("sendMessage", chat_id=8302)
        await tg.idle()
        assert bot.user_row(8301).username is None
        tg.send_text(admin, "/ban @eve")
        await tg.wait_text(admin.id, translate("en", "admin.ban_done", user=8302))
        assert bot.user_row(8302).is_banned
        assert not bot.user_row(8301).is_banned
        # Zed changes his name: the old one leads nowhere, the new one to him.
        tg.send_text(tg.user(8302, "Zed", "en", username="zed"), "/help")
        await tg.idle()
        tg.send_text(admin, "/unban @EVE")
        await tg.wait_text(admin.id, translate("en", "error.not_found"))
        tg.send_text(admin, "/unban @zed")
        await tg.wait_text(admin.id, translate("en", "admin.unban_done", user=8302))

    async def test_an_ambiguous_username_is_refused_with_the_candidates(
        self, bot: BotHarness
    ) -> None:
        tg = bot.tg
        admin = tg.user(ADMIN_ID, "Root", "ru")
        # Rows from before names were kept unique: two users hold the same one.
        give_selfie(bot, 8303, username="dup")
        give_selfie(bot, 8304, username="Dup")
        tg.send_text(admin, "/ban @dup")
        await tg.wait_text(admin.id, translate("ru", "error.ambiguous_user", ids="8303, 8304"))
        assert not bot.user_row(8303).is_banned
        assert not bot.user_row(8304).is_banned

    async def test_broadcast(self, bot: BotHarness) -> None:
        tg = bot.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/broadcast New styles are here!\nTry /style")
        await tg.wait_text(admin.id, "Broadcast #")
        await tg.idle()
        with bot.db.session() as s:
            [row] = s.scalars(select(Broadcast)).all()
            assert row.text == "New styles are here!\nTry /style"
            assert row.created_by == f"tg:{ADMIN_ID}"
        assert published(bot.celery, "io") == [("broadcast.send", [row.id])]
        assert bot.user_row(ADMIN_ID) is not None
        assert isinstance(bot.user_row(ADMIN_ID), User)
