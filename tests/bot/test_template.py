"""/template: catalog carousel or the user's own photo; several faces → the user picks."""

from __future__ import annotations

from sqlalchemy import select

from db.models import JobKind, Photo, PhotoKind, StyleOrigin, Template
from telegram_ui.i18n import translate
from tests.bot.conftest import FACES, BotHarness, give_selfie, jobs_of, published
from tests.utils.factories import face_rows
from tests.utils.fake_telegram import buttons

TWO_FACES = "This template has 2 faces. Tap the numbers to replace (one or several), then ▶ Start."


def seed_group_template(bot: BotHarness) -> int:
    data = (FACES / "template_group.jpg").read_bytes()
    width, height, faces = face_rows(data)
    with bot.db.session() as s:
        template = Template(
            slug="wedding",
            names={"en": "Wedding", "ru": "Свадьба", "zh": "婚礼"},
            image_blob=bot.blobs.put(data),
            width=width,
            height=height,
            faces=faces,
            origin=StyleOrigin.CATALOG,
        )
        s.add(template)
        s.flush()
        return template.id


class TestTemplate:
    async def test_needs_a_selfie_first(self, bot: BotHarness) -> None:
        ann = bot.tg.user(7001, "Ann", "en")
        bot.tg.send_text(ann, "/template")
        await bot.tg.wait_text(ann.id, translate("en", "error.selfie_required"))

    async def test_own_photo_with_two_faces(self, bot: BotHarness, face_bytes) -> None:
        tg = bot.tg
        ann = tg.user(7002, "Ann", "en")
        _, selfie_id = give_selfie(bot, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("en", "template.send_own"))
        tg.send_photo(ann, face_bytes("template_group.jpg"))
        await tg.wait_text(ann.id, TWO_FACES)
        preview = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        tg.press_button(ann, preview, translate("en", "btn.start_template"))
        await tg.wait_text(ann.id, translate("en", "template.pick_one"), since=since)
        since = len(tg.calls)
        tg.press_button(ann, preview, "2")
        await tg.wait_for("editMessageReplyMarkup", since=since)
        assert "✓ 2" in [label for label, _ in buttons(tg.current(preview))]
        since = len(tg.calls)
        tg.press_button(ann, preview, translate("en", "btn.start_template"))
        await tg.wait_text(ann.id, "in the queue", since=since)
        await tg.idle()
        [job] = jobs_of(bot, ann.id)
        assert job.kind is JobKind.TEMPLATE
        assert job.params["faces"] == [2]
        assert job.params["photo_ids"] == [selfie_id]
        assert job.params["template_photo_id"]
        assert job.params["template_id"] is None
        assert published(bot.celery) == [("template.inpaint", [job.id])]

    async def test_catalog_template_with_both_faces(self, bot: BotHarness) -> None:
        tg = bot.tg
        template_id = seed_group_template(bot)
        ann = tg.user(7003, "Ann", "en")
        give_selfie(bot, ann.id)
        tg.send_text(ann, "/template")
        call = await tg.wait_for("sendPhoto", chat_id=ann.id)
        assert "Wedding" in call.params["caption"]
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], translate("en", "btn.use_template"))
        await tg.wait_text(ann.id, TWO_FACES, since=since)
        preview = tg.bot_messages(ann.id)[-1]
        for label in ("1", "2"):
            since = len(tg.calls)
            tg.press_button(ann, preview, label)
            await tg.wait_for("editMessageReplyMarkup", since=since)
        since = len(tg.calls)
        tg.press_button(ann, preview, translate("en", "btn.start_template"))
        await tg.wait_text(ann.id, "in the queue", since=since)
        [job] = jobs_of(bot, ann.id)
        assert job.template_id == template_id
        assert job.params["faces"] == [1, 2]
        assert len(job.params["photo_ids"]) == 2

    async def test_stale_face_buttons_are_refused(self, bot: BotHarness, face_bytes) -> None:
        tg = bot.tg
        ann = tg.user(7004, "Ann", "en")
        give_selfie(bot, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("en", "template.send_own"))
        tg.send_photo(ann, face_bytes("template_group.jpg"))
        await tg.wait_text(ann.id, TWO_FACES)
        preview = tg.bot_messages(ann.id)[-1]
        tg.send_text(ann, "/cancel")
        await tg.wait_text(ann.id, translate("en", "cancel.done"))
        since = len(tg.calls)
        tg.press_button(ann, preview, "1")
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)

    async def test_template_without_faces(self, bot: BotHarness) -> None:
        from tests.facechain.face_data import encode, landscape_rgb

        tg = bot.tg
        ann = tg.user(7005, "Ann", "ru")
        give_selfie(bot, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("ru", "template.send_own"))
        tg.send_photo(ann, encode(landscape_rgb()))
        await tg.wait_text(ann.id, translate("ru", "template.no_faces"))
        assert jobs_of(bot, ann.id) == []


class TestTemplatePhotoCap:
    async def test_when_every_kept_photo_is_in_use_the_refusal_says_so(
        self, harness: BotHarness, face_bytes
    ) -> None:
        # One own template photo kept, and the job using it is still queued: the next photo
        # cannot make room and is refused, saying which limit; nothing of it is kept.
        await harness.start(max_template_photos=1)
        tg = harness.tg
        ann = tg.user(7101, "Ann", "zh")
        give_selfie(harness, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("zh", "template.send_own"))
        tg.send_photo(ann, face_bytes("man_pose1.png"))
        await tg.wait_text(ann.id, translate("zh", "job.queued").split("{")[0])
        await tg.idle()
        [job] = jobs_of(harness, ann.id)
        kept = job.params["template_photo_id"]
        since = len(tg.calls)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("zh", "template.send_own"), since=since)
        tg.send_photo(ann, face_bytes("woman_pose1.png"))
        await tg.wait_text(
            ann.id, translate("zh", "error.template_photo_limit", max=1), since=since
        )
        await tg.idle()
        with harness.db.session() as s:
            rows = s.scalars(
                select(Photo).where(Photo.user_id == job.user_id, Photo.kind == PhotoKind.TEMPLATE)
            ).all()
            assert [p.id for p in rows] == [kept]
