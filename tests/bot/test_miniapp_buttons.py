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


class TestWithoutMiniApp:
    async def test_nothing_changes(self, bot: BotHarness) -> None:
        assert bot.tg.menu_button is None
        assert bot.tg.calls_to("setChatMenuButton") == []
        picker = await open_picker(bot, 3102, "en")
        assert web_app_buttons(picker) == []
