"""How the application is built: light imports, typed context, webhook mode without updater."""

from __future__ import annotations

import subprocess
import sys

from bot.app import FaceChainApplication, build_application
from bot.context import BotContext
from bot.processor import PerUserUpdateProcessor
from bot.ratelimit import TelegramRetry
from tests.bot.conftest import ROOT_DIR, BotHarness, make_config


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

        app = build_application(config, harness.db, harness.blobs, create_celery(config))
        assert isinstance(app, FaceChainApplication)
        assert app.context_types.context is BotContext
        assert isinstance(app.update_processor, PerUserUpdateProcessor)
        assert isinstance(app.bot.rate_limiter, TelegramRetry)
        assert app.bot.base_url.startswith(harness.tg.api_base_url)
        assert app.updater is not None
