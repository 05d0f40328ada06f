"""/subject: the choice is shown, stored, confirmed in the user's language and copied into the
next portrait job; forged choices are rejected."""

from __future__ import annotations

import pytest

from telegram_ui.i18n import translate
from telegram_ui.keyboards import subject_keyboard
from tests.bot.conftest import BotHarness, give_selfie, jobs_of
from tests.bot.test_jobs import pick_first_style


def labels(message: dict) -> list[str]:
    return [b["text"] for row in message["reply_markup"]["inline_keyboard"] for b in row]


async def open_subject(bot: BotHarness, user) -> dict:
    bot.tg.send_text(user, "/subject")
    auto = translate(user.language_code, "subject.auto")
    await bot.tg.wait_text(user.id, translate(user.language_code, "subject.choose", current=auto))
    return bot.tg.bot_messages(user.id)[-1]


class TestSubject:
    async def test_choose_woman_is_stored_and_used_by_the_next_job(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(5101, "Ann", "en")
        picker = await open_subject(bot, ann)
        assert labels(picker) == [
            "✓ Auto (from the selfie)",
            "Man",
            "Woman",
            "Boy",
            "Girl",
            "Mature man",
            "Mature woman",
        ]
        since = len(tg.calls)
        tg.press_button(ann, picker, "Woman")
        await tg.wait_text(ann.id, translate("en", "subject.changed", choice="Woman"), since=since)
        assert bot.user_row(ann.id).subject == "woman"
        assert "✓ Woman" in labels(tg.current(picker))

        give_selfie(bot, ann.id)
        await pick_first_style(bot, ann)
        await tg.wait_text(ann.id, "#1 in the queue")
        [job] = jobs_of(bot, ann.id)
        assert job.params["subject"] == "woman"

        # Back to auto: stored as None, and /subject shows it as the current choice.
        since = len(tg.calls)
        tg.press_button(ann, picker, "Auto")
        auto = translate("en", "subject.auto")
        await tg.wait_text(ann.id, translate("en", "subject.changed", choice=auto), since=since)
        assert bot.user_row(ann.id).subject is None

    async def test_confirmed_in_the_users_language(self, bot: BotHarness) -> None:
        tg = bot.tg
        ivan = tg.user(5102, "Ivan", "ru")
        picker = await open_subject(bot, ivan)
        since = len(tg.calls)
        tg.press_button(ivan, picker, translate("ru", "subject.mature_man"))
        choice = translate("ru", "subject.mature_man")
        await tg.wait_text(ivan.id, translate("ru", "subject.changed", choice=choice), since=since)
        assert bot.user_row(ivan.id).subject == "mature_man"

    @pytest.mark.parametrize("data", ["sj:Woman", "sj:wo man", "sj", "sj:man:1", "sj:" + "x" * 40])
    async def test_malformed_choice_is_rejected(self, bot: BotHarness, data: str) -> None:
        tg = bot.tg
        ann = tg.user(5103, "Ann", "en")
        picker = await open_subject(bot, ann)
        since = len(tg.calls)
        tg.press(ann, picker, data)
        call = await tg.wait_for("answerCallbackQuery", since=since)
        assert call.params.get("text") == translate("en", "callback.stale")
        await tg.idle()
        assert bot.user_row(ann.id).subject is None

    @pytest.mark.parametrize("data", ["sj:queen", "sj:all", "sj:mature_boy"])
    async def test_well_formed_but_unknown_choice_is_rejected(
        self, bot: BotHarness, data: str
    ) -> None:
        tg = bot.tg
        ann = tg.user(5104, "Ann", "en")
        picker = await open_subject(bot, ann)
        since = len(tg.calls)
        tg.press(ann, picker, data)
        await tg.wait_text(ann.id, translate("en", "callback.stale"), since=since)
        await tg.idle()
        assert bot.user_row(ann.id).subject is None
        assert not tg.calls_to("editMessageText", chat_id=ann.id)

    def test_keyboard_marks_the_current_choice(self) -> None:
        markup = subject_keyboard("mature_woman", "zh")
        data = [b.callback_data for row in markup.inline_keyboard for b in row]
        assert data == [
            "sj:auto",
            "sj:man",
            "sj:woman",
            "sj:boy",
            "sj:girl",
            "sj:mature_man",
            "sj:mature_woman",
        ]
        marked = [b.text for row in markup.inline_keyboard for b in row if b.text.startswith("✓")]
        assert marked == ["✓ " + translate("zh", "subject.mature_woman")]
