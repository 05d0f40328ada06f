"""The Telegram webhook route: secret header in constant time, updates queued, all else refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from telegram import Update
from telegram.ext import Application, ApplicationBuilder

from core.blobstore import LocalBlobStore
from core.metrics import Metrics
from core.settings import AppConfig
from db.session import Database
from tests.web.conftest import WEBHOOK_SECRET, publisher_for
from web.app import create_web_app

Client = TestClient[Any, Any]
HEADER = "X-Telegram-Bot-Api-Secret-Token"
UPDATE = {
    "update_id": 1001,
    "message": {
        "message_id": 5,
        "date": 1764025200,
        "chat": {"id": 42, "type": "private"},
        "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
        "text": "/start",
    },
}


@pytest.fixture
def telegram_app() -> Application[Any, Any, Any, Any, Any, Any]:
    return ApplicationBuilder().token("123456:TEST").updater(None).build()


@pytest.fixture
async def tg_client(
    config: AppConfig,
    db: Database,
    blobs: LocalBlobStore,
    celery: Any,
    metrics: Metrics,
    telegram_app: Application[Any, Any, Any, Any, Any, Any],
) -> AsyncIterator[Client]:
    app = create_web_app(
        config, db, blobs, publisher_for(celery, db), telegram_app, metrics=metrics
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


class TestWebhook:
    async def test_valid_update_is_queued(
        self,
        tg_client: Client,
        telegram_app: Application[Any, Any, Any, Any, Any, Any],
        metrics: Metrics,
    ) -> None:
        r = await tg_client.post(
            "/telegram/webhook", json=UPDATE, headers={HEADER: WEBHOOK_SECRET}
        )
        assert r.status == 200
        update = telegram_app.update_queue.get_nowait()
        assert isinstance(update, Update)
        assert update.update_id == 1001
        assert update.effective_message is not None
        assert update.effective_message.text == "/start"
        assert metrics.webhook_updates.labels(outcome="accepted")._value.get() == 1

    @pytest.mark.parametrize(
        "secret", [None, "", "wrong", WEBHOOK_SECRET + "x", WEBHOOK_SECRET[:-1]]
    )
    async def test_wrong_or_missing_secret_is_refused(
        self,
        tg_client: Client,
        telegram_app: Application[Any, Any, Any, Any, Any, Any],
        secret: str | None,
    ) -> None:
        headers = {} if secret is None else {HEADER: secret}
        r = await tg_client.post("/telegram/webhook", json=UPDATE, headers=headers)
        assert r.status == 403
        assert telegram_app.update_queue.empty()

    async def test_bad_bodies_are_refused(
        self, tg_client: Client, telegram_app: Application[Any, Any, Any, Any, Any, Any]
    ) -> None:
        headers = {HEADER: WEBHOOK_SECRET}
        r = await tg_client.post(
            "/telegram/webhook",
            data=b"{oops",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert r.status == 400
        r = await tg_client.post("/telegram/webhook", data=b"update", headers=headers)
        assert r.status == 415
        r = await tg_client.post("/telegram/webhook", json={"no": "update"}, headers=headers)
        assert r.status == 422
        r = await tg_client.post("/telegram/webhook", json=[1, 2], headers=headers)
        assert r.status == 422
        r = await tg_client.get("/telegram/webhook", headers=headers)
        assert r.status == 405
        r = await tg_client.post(
            "/telegram/webhook",
            data=b"{" + b" " * (2 * 1024 * 1024) + b"}",
            headers={**headers, "Content-Type": "application/json"},
        )
        assert r.status == 413
        assert telegram_app.update_queue.empty()

    async def test_no_route_in_polling_mode(
        self,
        config: AppConfig,
        db: Database,
        blobs: LocalBlobStore,
        celery: Any,
        metrics: Metrics,
        telegram_app: Application[Any, Any, Any, Any, Any, Any],
    ) -> None:
        config.telegram.mode = "polling"
        app = create_web_app(
            config, db, blobs, publisher_for(celery, db), telegram_app, metrics=metrics
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.post(
                "/telegram/webhook", json=UPDATE, headers={HEADER: WEBHOOK_SECRET}
            )
            assert r.status == 404
