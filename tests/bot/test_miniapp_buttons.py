"""Reaching the Mini App: with MINIAPP_URL the chat's menu button opens it and the style carousel
offers "Open gallery"; without it, neither exists."""

from __future__ import annotations

from typing import Any

from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness

URL = "https://bot.example.com/miniapp/"


def web_app_buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    markup = message.get("reply_markup") or {}
    return [b for row in markup.get("inline_keyboard", []) for b in row if "web_app" in b]


async def open_picker(bot: BotHarness, telegram_id: int, language: str) -> dict[str, Any]:
    user = bot.tg.user(telegram_id, "Ann", language)
    bot.tg.send_text(user, "/style")
    await bot.tg.wait_for("sendPhoto", chat_id=user.id)
    picker: dict[str, Any] = bot.tg.bot_messages(user.id)[-1]
    return picker


class TestWithMiniApp:
    async def test_menu_button_and_open_gallery(self, harness: BotHarness) -> None:
        harness.miniapp_url = URL
        await harness.start()
        assert harness.tg.menu_button == {
            "type": "web_app",
            "text": translate("en", "miniapp.menu"),
            "web_app": {"url": URL},
        }
        picker = await open_picker(harness, 3101, "ru")
        (button,) = web_app_buttons(picker)
        assert button == {"text": translate("ru", "btn.open_gallery"), "web_app": {"url": URL}}
        # Browsing keeps it.
        since = len(harness.tg.calls)
        harness.tg.press_button(harness.tg.user(3101, "Ann", "ru"), picker, "▶")
        await harness.tg.wait_for("editMessageMedia", since=since)
        assert web_app_buttons(harness.tg.current(picker)) == [button]

    async def test_start_and_lang_label_the_chats_menu_button_in_its_language(
        self, harness: BotHarness
    ) -> None:
        harness.miniapp_url = URL
        await harness.start()
        tg = harness.tg
        ivan = tg.user(3103, "Ivan", "ru")
        since = len(tg.calls)
        tg.send_text(ivan, "/start")
        call = await tg.wait_for("setChatMenuButton", since=since, chat_id=ivan.id)
        assert call.params["menu_button"] == {
            "type": "web_app",
            "text": translate("ru", "miniapp.menu"),
            "web_app": {"url": URL},
        }
        tg.send_text(ivan, "/lang")
        chooser = await tg.wait_text(ivan.id, translate("ru", "lang.choose"), since=since)
        since = len(tg.calls)
        tg.press_button(ivan, tg.bot_messages(ivan.id)[-1], "中文")
        call = await tg.wait_for("setChatMenuButton", since=since, chat_id=ivan.id)
        assert call.params["menu_button"]["text"] == translate("zh", "miniapp.menu")
        assert chooser is not None


class TestWithoutMiniApp:
    async def test_nothing_changes(self, bot: BotHarness) -> None:
        assert bot.tg.menu_button is None
        user = bot.tg.user(3102, "Ann", "en")
        bot.tg.send_text(user, "/start")
        await bot.tg.wait_text(user.id, translate("en", "start.welcome").split("{")[0])
        picker = await open_picker(bot, 3102, "en")
        assert web_app_buttons(picker) == []
        assert bot.tg.calls_to("setChatMenuButton") == []
