"""How the application is built: light imports, typed context, webhook mode without updater."""

from __future__ import annotations

import subprocess
import sys

from bot.app import FaceChainApplication, build_application
from bot.context import BotContext
from bot.processor import PerUserUpdateProcessor
from core.metrics import Metrics
from telegram_ui.client import TelegramLimiter
from telegram_ui.i18n import translate
from tests.bot.conftest import ROOT_DIR, BotHarness, make_config
from tests.facechain.face_data import encode, landscape_rgb


class TestBuild:
    def test_the_bot_process_does_not_load_the_ml_stack(self) -> None:
        code = "import sys, bot.app; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT_DIR, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"

    def test_wiring(self, harness: BotHarness) -> None:
        config = make_config(harness.tg, harness.database_url, harness.tmp_path)
        from tasks.celery_app import create_celery
        from tasks.dispatch import CeleryPublisher

        publisher = CeleryPublisher(create_celery(config), harness.db)
        app = build_application(config, harness.db, harness.blobs, publisher)
        assert isinstance(app, FaceChainApplication)
        assert app.context_types.context is BotContext
        assert isinstance(app.update_processor, PerUserUpdateProcessor)
        assert isinstance(app.bot.rate_limiter, TelegramLimiter)
        assert app.bot.base_url.startswith(harness.tg.api_base_url)
        assert app.updater is not None


def counted(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


class TestMetrics:
    async def test_updates_by_kind_and_errors_by_code_are_counted(self, bot: BotHarness) -> None:
        tg = bot.tg
        ann = tg.user(7701, "Ann", "en")
        tg.send_text(ann, "/start")
        await tg.wait_text(ann.id, "Hi Ann")
        tg.send_photo(ann, encode(landscape_rgb()))  # no face: a typed error
        await tg.wait_text(ann.id, translate("en", "error.no_face"))
        await tg.idle()
        total = "facechain_updates_handled_total"
        assert counted(bot.metrics, total, kind="message") == 2
        assert counted(bot.metrics, total, kind="callback_query") == 0
        errors = "facechain_errors_total"
        assert counted(bot.metrics, errors, code="no_face", source="bot") == 1
