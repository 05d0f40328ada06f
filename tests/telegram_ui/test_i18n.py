"""Counted texts take the plural form of their language (CLDR's rules through gettext)."""

from __future__ import annotations

import logging

import pytest

from telegram_ui.i18n import error_text, ntranslate, translate


class TestRussian:
    """one: 1, 21, 101; few: 2–4, 22–24; many: 0, 5–20, 25–30, 111."""

    @pytest.mark.parametrize(
        ("count", "said"),
        [
            (1, "✅ Готово! Вот ваш 1 портрет."),
            (2, "✅ Готово! Вот ваши 2 портрета."),
            (5, "✅ Готово! Вот ваши 5 портретов."),
            (11, "✅ Готово! Вот ваши 11 портретов."),
            (21, "✅ Готово! Вот ваш 21 портрет."),
            (22, "✅ Готово! Вот ваши 22 портрета."),
            (25, "✅ Готово! Вот ваши 25 портретов."),
            (111, "✅ Готово! Вот ваши 111 портретов."),
        ],
    )
    def test_portraits(self, count: int, said: str) -> None:
        assert ntranslate("ru", "job.done", count) == said

    @pytest.mark.parametrize(
        ("count", "said"),
        [
            (1, "1 кредит"),
            (2, "2 кредита"),
            (5, "5 кредитов"),
            (11, "11 кредитов"),
            (21, "21 кредит"),
            (22, "22 кредита"),
            (25, "25 кредитов"),
            (0, "0 кредитов"),
        ],
    )
    def test_credits(self, count: int, said: str) -> None:
        assert ntranslate("ru", "credits.amount", count) == said

    def test_two_counts_in_one_sentence(self) -> None:
        # Each count takes its own form: "1 бесплатную генерацию", "2 кредита".
        assert error_text("ru", "credits_needed", quota=1, price=2, credits=0) == (
            "Вы использовали 1 бесплатную генерацию на сегодня, а это стоит 2 кредита (у вас 0). "
            "Купите кредиты ниже или возвращайтесь после полуночи UTC."
        )
        assert translate(
            "ru",
            "forget.done",
            photos=ntranslate("ru", "forget.photos", 21),
            jobs=ntranslate("ru", "forget.jobs", 22),
        ) == (
            "🗑 Готово. Я удалил 21 фото и 22 задачи с результатами. "
            "Ваших данных у меня больше нет."
        )

    def test_queue_estimate(self) -> None:
        assert ntranslate("ru", "job.queued", 3, position=3) == (
            "⏳ Вы №3 в очереди — ждать примерно 3 минуты."
        )
        assert ntranslate("ru", "job.queued", 11, position=9).endswith("примерно 11 минут.")
        assert ntranslate("ru", "job.queued", 21, position=9).endswith("примерно 21 минуту.")


class TestEnglish:
    def test_one_and_other(self) -> None:
        assert ntranslate("en", "job.done", 1) == "✅ Done! Here is your 1 portrait."
        assert ntranslate("en", "job.done", 2) == "✅ Done! Here are your 2 portraits."
        assert ntranslate("en", "job.done", 21) == "✅ Done! Here are your 21 portraits."
        assert ntranslate("en", "admin.reconcile_done", 1, stars=30) == (
            "Reconciled with Telegram: 1 payment that was never recorded is credited now (30 ⭐)."
        )
        assert ntranslate("en", "admin.reconcile_done", 0, stars=0) == (
            "Reconciled with Telegram: 0 payments that were never recorded are credited now "
            "(0 ⭐)."
        )

    def test_error_details_are_counted(self) -> None:
        assert error_text("en", "credits_needed", quota=1, price=1, credits=0) == (
            "You've used today's 1 free generation, and this costs 1 credit (you have 0). "
            "Buy credits below or come back after midnight UTC."
        )
        assert error_text("en", "quota_exceeded", quota=3) == (
            "You've used today's limit of 3 generations. It resets at midnight UTC."
        )


class TestChinese:
    @pytest.mark.parametrize("count", [1, 2, 5, 21])
    def test_one_form(self, count: int) -> None:
        assert ntranslate("zh", "job.done", count) == f"✅ 完成！这是你的 {count} 张肖像。"
        assert ntranslate("zh-hans", "credits.amount", count) == f"{count} 点"


class TestFallbacks:
    def test_plain_text_without_count(self) -> None:
        assert translate("ru", "btn.cancel") == "✖ Отменить"

    def test_counted_text_without_count(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.ERROR, logger="telegram_ui.i18n"):
            said = translate("en", "job.done")
        assert said == "✅ Done! Here are your 5 portraits."
        assert "ntranslate" in caplog.text

    def test_unknown_key_is_the_key(self) -> None:
        assert translate("ru", "no.such_key") == "no.such_key"
        assert ntranslate("ru", "no.such_key", 3) == "no.such_key"

    def test_unknown_language_is_english(self) -> None:
        assert ntranslate("de", "job.done", 1) == "✅ Done! Here is your 1 portrait."
