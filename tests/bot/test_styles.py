"""The style carousel: browsing with ◀ ▶, categories, file_id reuse, forged callback data."""

from __future__ import annotations

import pytest

from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness
from tests.utils.fake_telegram import button_data, buttons


async def open_picker(bot: BotHarness, user) -> dict:
    bot.tg.send_text(user, "/style")
    await bot.tg.wait_for("sendPhoto", chat_id=user.id)
    return bot.tg.bot_messages(user.id)[-1]


class TestCarousel:
    async def test_browse_wraps_and_edits_one_message(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3001, "Ann", "en")
        picker = await open_picker(bot, ann)
        assert "Armor" in picker["caption"]
        assert ("1/3", "nop:pos") in buttons(picker)

        since = len(tg.calls)
        tg.press_button(ann, picker, "▶")
        call = await tg.wait_for("editMessageMedia", chat_id=ann.id, since=since)
        assert "Elf" in call.params["media"]["caption"]
        assert tg.calls_to("answerCallbackQuery")  # answered

        since = len(tg.calls)
        tg.press_button(ann, picker, "◀")
        await tg.wait_text(ann.id, "Armor", since=since)
        since = len(tg.calls)
        tg.press_button(ann, picker, "◀")  # wraps around to the last style
        await tg.wait_text(ann.id, "Autumn", since=since)
        assert "Autumn" in tg.current(picker)["caption"]
        assert len(tg.bot_messages(ann.id)) == 1  # everything happened in one message

    async def test_thumbnail_uploaded_once_then_sent_by_file_id(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3002, "Ann", "en")
        picker = await open_picker(bot, ann)
        assert tg.calls_to("sendPhoto")[0].files  # uploaded the first time
        since = len(tg.calls)
        tg.press_button(ann, picker, "▶")
        await tg.wait_for("editMessageMedia", since=since)
        since = len(tg.calls)
        tg.press_button(ann, picker, "◀")
        call = await tg.wait_for("editMessageMedia", since=since)
        assert call.params["media"]["media"].startswith("FILE")  # a file_id, no upload
        assert not call.files

    async def test_categories_filter_the_carousel(self, bot: BotHarness) -> None:
        tg = bot.tg
        ivan = tg.user(3003, "Ivan", "ru")
        picker = await open_picker(bot, ivan)
        since = len(tg.calls)
        tg.press_button(ivan, picker, translate("ru", "btn.categories"))
        await tg.wait_for("editMessageReplyMarkup", since=since)
        labels = [label for label, _ in buttons(tg.current(picker))]
        assert labels == ["Фэнтези", "Сезоны и праздники", translate("ru", "btn.all_categories")]
        since = len(tg.calls)
        tg.press_button(ivan, picker, "Сезоны")
        call = await tg.wait_for("editMessageMedia", since=since)
        assert "Осень" in call.params["media"]["caption"]
        assert ("1/1", "nop:pos") in buttons(tg.current(picker))


class TestStaleMessages:
    async def test_pressing_a_button_of_a_deleted_message(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3020, "Ann", "en")
        picker = await open_picker(bot, ann)
        tg.messages.pop((ann.id, picker["message_id"]))  # the user deleted it
        since = len(tg.calls)
        tg.press(ann, picker, button_data(picker, "▶"))
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)


class TestForgedCallbacks:
    @pytest.mark.parametrize(
        "data",
        ["sp:all:abc", "zz:1", "sp:all:1:2", "su:-1", "su:" + "9" * 40, "jc:01", "lang:EN", "fg"],
    )
    async def test_forged_data_gets_a_polite_answer(self, bot: BotHarness, data: str) -> None:
        tg = bot.tg
        ann = tg.user(3010, "Ann", "en")
        picker = await open_picker(bot, ann)
        since = len(tg.calls)
        tg.press(ann, picker, data)
        call = await tg.wait_for("answerCallbackQuery", since=since)
        assert call.params.get("text") == translate("en", "callback.stale")
        await tg.idle()
        assert not tg.calls_to("sendMessage", chat_id=ann.id)

    async def test_well_formed_but_unknown_style(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3011, "Ann", "en")
        picker = await open_picker(bot, ann)
        since = len(tg.calls)
        tg.press(ann, picker, "su:999999")
        await tg.wait_for("answerCallbackQuery", since=since)
        await tg.wait_text(ann.id, translate("en", "error.style_unavailable"), since=since)

    async def test_other_users_job_cannot_be_cancelled(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3012, "Ann", "en")
        picker = await open_picker(bot, ann)
        since = len(tg.calls)
        tg.press(ann, picker, "jc:424242")
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)
