"""/start, /help, /lang: the user's Telegram language, and changing it."""

from __future__ import annotations

import pytest

from bot.i18n import translate
from tests.bot.conftest import BotHarness


class TestStart:
    @pytest.mark.parametrize(("code", "lang"), [("en", "en"), ("ru", "ru"), ("zh-hans", "zh")])
    async def test_start_in_the_users_language(self, bot: BotHarness, code: str, lang: str) -> None:
        user = bot.tg.user(1000 + len(code), "Ann", code)
        bot.tg.send_text(user, "/start")
        expected = translate(lang, "start.welcome", name="Ann")
        call = await bot.tg.wait_for("sendMessage", chat_id=user.id)
        assert call.params["text"] == expected
        row = bot.user_row(user.id)
        assert row is not None and row.language == lang
