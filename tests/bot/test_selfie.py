"""Selfie intake: a good selfie is stored with its face; group photos ask which face; every bad
input gets its own reply and no traceback."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sqlalchemy import select

from db.models import Photo, PhotoKind
from facechain.imageio import load_image
from telegram_ui.i18n import translate
from tests.bot.conftest import FACES, BotHarness
from tests.facechain.face_data import encode, landscape_rgb
from tests.facechain.test_imageio import png_with_declared_size
from tests.utils.fake_telegram import buttons


def portrait() -> Image.Image:
    return Image.open(FACES / "man_pose1.png").convert("RGB")


def selfies(bot: BotHarness, telegram_id: int) -> list[Photo]:
    row = bot.user_row(telegram_id)
    with bot.db.session() as s:
        return list(
            s.scalars(select(Photo).where(Photo.user_id == row.id, Photo.kind == PhotoKind.SELFIE))
        )


class TestGoodSelfie:
    async def test_selfie_is_stored_with_its_face_and_the_picker_opens(
        self, bot: BotHarness, face_bytes
    ) -> None:
        ann = bot.tg.user(2001, "Ann", "en")
        data = face_bytes("man_pose1.png")
        bot.tg.send_photo(ann, data)
        await bot.tg.wait_text(ann.id, translate("en", "selfie.saved", count=1, max=5))
        picker = await bot.tg.wait_for("sendPhoto", chat_id=ann.id)
        assert "Armor" in picker.params["caption"]
        [photo] = selfies(bot, ann.id)
        assert photo.selected_face == 0
        assert len(photo.faces) == 1
        assert len(photo.faces[0]["landmarks"]) == 5
        assert photo.expires_at is not None
        # Stored as the same pixels (re-encoded without metadata).
        stored = np.asarray(load_image(bot.blobs.get(photo.sha256)))
        assert np.array_equal(stored, np.asarray(load_image(data)))

    async def test_image_sent_as_a_document_is_accepted(self, bot: BotHarness, face_bytes) -> None:
        ann = bot.tg.user(2002, "Ann", "ru")
        bot.tg.send_document(
            ann, face_bytes("woman_pose1.png"), file_name="me.png", mime_type="image/png"
        )
        await bot.tg.wait_text(ann.id, translate("ru", "selfie.saved", count=1, max=5))
        assert len(selfies(bot, ann.id)) == 1

    async def test_a_document_is_stored_without_its_exif_and_upright(
        self, bot: BotHarness
    ) -> None:
        ann = bot.tg.user(2004, "Ann", "en")
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: the camera was turned; shown rotated 90 degrees
        exif[0x010F] = "PhoneMaker"
        exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}
        upright = portrait().crop((0, 32, 512, 480))  # not square, so a rotation shows
        sideways = upright.transpose(Image.Transpose.ROTATE_90)
        buf = io.BytesIO()
        sideways.save(buf, "JPEG", quality=95, exif=exif.tobytes())
        data = buf.getvalue()
        assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # GPS is in the upload
        bot.tg.send_document(ann, data, file_name="IMG_0001.jpg", mime_type="image/jpeg")
        await bot.tg.wait_text(ann.id, translate("en", "selfie.saved", count=1, max=5))
        [photo] = selfies(bot, ann.id)
        stored = bot.blobs.get(photo.sha256)
        assert b"Exif" not in stored
        assert b"PhoneMaker" not in stored
        with Image.open(io.BytesIO(stored)) as image:
            assert image.format == "JPEG"
            assert not image.getexif()
            assert not image.getexif().get_ifd(0x8825)
            assert "xmp" not in image.info
            # The orientation was applied to the pixels before the tag went.
            assert image.size == upright.size == (512, 448)


class TestGroupPhoto:
    async def test_group_photo_asks_which_face(self, bot: BotHarness, face_bytes) -> None:
        ann = bot.tg.user(2003, "Ann", "en")
        bot.tg.send_photo(ann, face_bytes("template_group.jpg"), width=1680, height=1260)
        preview = await bot.tg.wait_for("sendPhoto", chat_id=ann.id)
        assert preview.params["caption"] == "I see 2 faces. Which one is you? Tap its number."
        assert preview.files  # the preview with numbered boxes was uploaded
        [photo] = selfies(bot, ann.id)
        assert photo.selected_face is None
        assert len(photo.faces) == 2
        message = bot.tg.bot_messages(ann.id)[-1]
        assert [label for label, _ in buttons(message)] == ["1", "2"]
        since = len(bot.tg.calls)
        bot.tg.press_button(ann, message, "2")
        await bot.tg.wait_text(ann.id, translate("en", "selfie.face_chosen", n=2), since=since)
        await bot.tg.wait_for("sendPhoto", chat_id=ann.id, since=since)  # the style picker
        [photo] = selfies(bot, ann.id)
        assert photo.selected_face == 1


class TestBadInput:
    @pytest.mark.parametrize(
        ("kind", "key"),
        [
            ("no_face", "error.no_face"),
            ("small_face", "error.face_too_small"),
            ("blurry", "error.poor_quality"),
            ("text_as_jpg", "error.not_an_image"),
            ("zero_bytes", "error.not_an_image"),
            ("huge_png", "error.image_too_large"),
            ("declared_too_big", "error.image_too_large"),
            ("pdf", "error.not_an_image"),
            ("sticker", "fallback.media"),
            ("voice", "fallback.media"),
        ],
    )
    async def test_bad_input_gets_its_reply(
        self, bot: BotHarness, caplog: pytest.LogCaptureFixture, kind: str, key: str
    ) -> None:
        caplog.set_level(logging.INFO)
        ann = bot.tg.user(2100, "Ann", "zh")
        tg = bot.tg
        if kind == "no_face":
            tg.send_photo(ann, encode(landscape_rgb()))
        elif kind == "small_face":
            tg.send_photo(ann, encode(portrait().resize((160, 160))))
        elif kind == "blurry":
            tg.send_photo(ann, encode(portrait().filter(ImageFilter.GaussianBlur(4))))
        elif kind == "text_as_jpg":
            tg.send_document(ann, b"this is not a picture\n", file_name="selfie.jpg")
        elif kind == "zero_bytes":
            tg.send_document(ann, b"", file_name="empty.png", mime_type="image/png")
        elif kind == "huge_png":
            tg.send_document(ann, png_with_declared_size(100_000, 100_000), file_name="big.png")
        elif kind == "declared_too_big":
            tg.send_document(ann, b"x" * 100, file_name="big.jpg", file_size=50 * 1024 * 1024)
        elif kind == "pdf":
            tg.send_document(ann, b"%PDF-1.4", file_name="cv.pdf", mime_type="application/pdf")
        elif kind == "sticker":
            tg.send_sticker(ann)
        else:
            tg.send_voice(ann)
        call = await tg.wait_for("sendMessage", chat_id=ann.id)
        assert call.params["text"] == translate("zh", key)
        await tg.idle()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not [r for r in caplog.records if r.exc_info]
        assert selfies(bot, ann.id) == []


class TestUploadCap:
    async def test_a_selfie_over_the_days_bytes_is_refused_saying_which_limit(
        self, harness: BotHarness, face_bytes
    ) -> None:
        from datetime import UTC, datetime

        from db.models import User
        from tests.utils.factories import make_user

        await harness.start(upload_bytes_per_day=1024 * 1024)
        with harness.db.session() as s:
            user = make_user(s, 2101, language="ru")
            user.upload_day = datetime.now(UTC).date()
            user.upload_bytes = 1024 * 1024 - 1000
        before = {p for p in harness.blobs.root.rglob("*") if p.is_file()}
        ann = harness.tg.user(2101, "Ann", "ru")
        harness.tg.send_photo(ann, face_bytes("man_pose1.png"))
        await harness.tg.wait_text(ann.id, translate("ru", "error.upload_limit", limit_mb=1))
        await harness.tg.idle()
        assert selfies(harness, ann.id) == []
        assert {p for p in harness.blobs.root.rglob("*") if p.is_file()} == before
        with harness.db.session() as s:
            row = s.scalar(select(User).where(User.telegram_id == 2101))
            assert row is not None
            assert row.upload_bytes == 1024 * 1024 - 1000
