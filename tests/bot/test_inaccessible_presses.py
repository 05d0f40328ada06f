"""Button presses without an editable message: under an inline message (Telegram sends no
message at all) or under one it no longer shows the bot (an InaccessibleMessage, `date` 0).
Each is answered in the chat or refused as stale, never with an internal error."""

from __future__ import annotations

from typing import Any

from core.metrics import Metrics
from telegram_ui.i18n import translate
from tests.bot.conftest import BotHarness, give_selfie
from tests.bot.test_template import TWO_FACES
from tests.utils.fake_telegram import FakeTelegram, FakeUser, button_data


def press_inaccessible(
    tg: FakeTelegram, user: FakeUser, message: dict[str, Any] | None, data: str
) -> str:
    """Press a button with `data` whose message Telegram does not show the bot: none at all
    (`message` None, an inline message) or an InaccessibleMessage in place of `message`."""
    query_id = f"QX{len(tg.calls)}"
    query: dict[str, Any] = {
        "id": query_id,
        "from": user.to_dict(),
        "chat_instance": f"ci{user.id}",
        "data": data,
    }
    if message is not None:
        query["message"] = {"chat": user.chat(), "message_id": message["message_id"], "date": 0}
    tg.send_raw({"callback_query": query})
    return query_id


def internal_errors(metrics: Metrics) -> float:
    labels = {"code": "internal", "source": "bot"}
    return metrics.registry.get_sample_value("facechain_errors_total", labels) or 0.0


class TestInaccessiblePresses:
    async def test_a_press_without_its_message_is_answered_as_stale(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3901, "Ann", "ru")
        since = len(tg.calls)
        query_id = press_inaccessible(tg, ann, None, "sp:all:1")
        call = await tg.wait_for("answerCallbackQuery", since=since, callback_query_id=query_id)
        assert call.params.get("text") == translate("ru", "callback.stale")
        await tg.idle()
        assert internal_errors(bot.metrics) == 0

    async def test_a_language_is_stored_and_confirmed_in_a_new_message(
        self, bot: BotHarness
    ) -> None:
        tg = bot.tg
        ann = tg.user(3902, "Ann", "en")
        tg.send_text(ann, "/lang")
        await tg.wait_text(ann.id, translate("en", "lang.choose"))
        chooser = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        press_inaccessible(tg, ann, chooser, button_data(chooser, "Русский"))
        call = await tg.wait_text(ann.id, translate("ru", "lang.changed"), since=since)
        assert call.method == "sendMessage"
        assert call.params["reply_markup"]["inline_keyboard"]
        row = bot.user_row(ann.id)
        assert row is not None
        assert row.language == "ru"
        await tg.idle()
        assert internal_errors(bot.metrics) == 0

    async def test_a_subject_is_stored_and_confirmed_in_a_new_message(
        self, bot: BotHarness
    ) -> None:
        tg = bot.tg
        ann = tg.user(3903, "Ann", "en")
        tg.send_text(ann, "/subject")
        auto = translate("en", "subject.auto")
        await tg.wait_text(ann.id, translate("en", "subject.choose", current=auto))
        picker = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        press_inaccessible(tg, ann, picker, button_data(picker, "Woman"))
        changed = translate("en", "subject.changed", choice="Woman")
        call = await tg.wait_text(ann.id, changed, since=since)
        assert call.method == "sendMessage"
        row = bot.user_row(ann.id)
        assert row is not None
        assert row.subject == "woman"
        await tg.idle()
        assert internal_errors(bot.metrics) == 0

    async def test_style_categories_are_refused_as_stale(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3904, "Ann", "en")
        tg.send_text(ann, "/style")
        await tg.wait_for("sendPhoto", chat_id=ann.id)
        picker = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        press_inaccessible(tg, ann, picker, button_data(picker, translate("en", "btn.categories")))
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)
        await tg.idle()
        assert not tg.calls_to("editMessageReplyMarkup")
        assert internal_errors(bot.metrics) == 0

    async def test_the_style_carousel_moves_on_in_a_new_message(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(3906, "Ann", "en")
        tg.send_text(ann, "/style")
        await tg.wait_for("sendPhoto", chat_id=ann.id)
        picker = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        press_inaccessible(tg, ann, picker, button_data(picker, "▶"))
        call = await tg.wait_for("sendPhoto", chat_id=ann.id, since=since)
        assert "Elf" in call.params["caption"]
        await tg.idle()
        assert not tg.calls_to("editMessageMedia")
        assert internal_errors(bot.metrics) == 0

    async def test_a_template_face_is_refused_as_stale_and_not_selected(
        self, bot: BotHarness, face_bytes: Any
    ) -> None:
        tg = bot.tg
        ann = tg.user(3905, "Ann", "en")
        give_selfie(bot, ann.id)
        tg.send_text(ann, "/template")
        await tg.wait_text(ann.id, translate("en", "template.send_own"))
        tg.send_photo(ann, face_bytes("template_group.jpg"))
        await tg.wait_text(ann.id, TWO_FACES)
        preview = tg.bot_messages(ann.id)[-1]
        since = len(tg.calls)
        press_inaccessible(tg, ann, preview, button_data(preview, "1"))
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)
        # The press selected nothing: ▶ Start still asks for a face.
        since = len(tg.calls)
        tg.press_button(ann, preview, translate("en", "btn.start_template"))
        await tg.wait_text(ann.id, translate("en", "template.pick_one"), since=since)
        assert internal_errors(bot.metrics) == 0
