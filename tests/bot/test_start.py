"""/start, /help, /lang: the user's Telegram language, and changing it."""

from __future__ import annotations

import pytest

from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness


class TestStart:
    @pytest.mark.parametrize(("code", "lang"), [("en", "en"), ("ru", "ru"), ("zh-hans", "zh")])
    async def test_start_in_the_users_language(
        self, bot: BotHarness, code: str, lang: str
    ) -> None:
        user = bot.tg.user(1000 + len(code), "Ann", code)
        bot.tg.send_text(user, "/start")
        expected = translate(lang, "start.welcome", name="Ann")
        call = await bot.tg.wait_for("sendMessage", chat_id=user.id)
        assert call.params["text"] == expected
        row = bot.user_row(user.id)
        assert row is not None
        assert row.language == lang


class TestLanguage:
    async def test_lang_switch_sticks(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(1101, "Ann", "en")
        tg.send_text(ann, "/lang")
        await tg.wait_text(ann.id, translate("en", "lang.choose"))
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], "中文")
        await tg.wait_text(ann.id, translate("zh", "lang.changed"), since=since)
        row = bot.user_row(ann.id)
        assert row.language == "zh"
        assert row.language_chosen
        tg.send_text(ann, "/help")  # the client still says "en"; the choice wins
        await tg.wait_text(ann.id, translate("zh", "help.text"))

    async def test_error_replies_use_the_chosen_language(self, bot: BotHarness) -> None:
        from tests.facechain.face_data import encode, landscape_rgb

        tg = bot.tg
        ann = tg.user(1102, "Ann", "en")
        tg.send_text(ann, "/lang")
        await tg.wait_text(ann.id, translate("en", "lang.choose"))
        since = len(tg.calls)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], "Русский")
        await tg.wait_text(ann.id, translate("ru", "lang.changed"), since=since)
        # A photo with nobody in it: the error handler explains, in Russian (the client
        # still says "en").
        since = len(tg.calls)
        tg.send_photo(ann, encode(landscape_rgb()))
        await tg.wait_text(ann.id, translate("ru", "error.no_face"), since=since)
        await tg.idle()
        assert translate("en", "error.no_face") not in tg.sent_texts(ann.id)

    async def test_help_for_admins_lists_admin_commands(self, bot: BotHarness) -> None:
        from tests.bot.conftest import ADMIN_ID

        admin = bot.tg.user(ADMIN_ID, "Root", "ru")
        bot.tg.send_text(admin, "/help")
        await bot.tg.wait_text(admin.id, translate("ru", "help.admin"))

    async def test_unknown_command_and_plain_text(self, bot: BotHarness) -> None:
        ann = bot.tg.user(1102, "Ann", "en")
        bot.tg.send_text(ann, "/frobnicate")
        await bot.tg.wait_text(ann.id, translate("en", "fallback.unknown_command"))
        bot.tg.send_text(ann, "hello there")
        await bot.tg.wait_text(ann.id, translate("en", "fallback.text"))

    async def test_command_menu_is_published_in_every_language(self, bot: BotHarness) -> None:
        await bot.tg.idle()
        codes = sorted(
            str(c.params.get("language_code")) for c in bot.tg.calls_to("setMyCommands")
        )
        assert codes == ["None", "ru", "zh"]
