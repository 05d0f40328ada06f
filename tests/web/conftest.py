"""Fixtures for the admin web app: config, a recording Celery, and an HTTP client on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from celery import Celery
from pydantic import SecretStr

from core.blobstore import LocalBlobStore
from core.metrics import Metrics, create_metrics
from core.safety import LocalScreen
from core.settings import (
    AdminSettings,
    AppConfig,
    BrokerSettings,
    LimitsSettings,
    StorageSettings,
    TelegramSettings,
)
from db.session import Database
from tasks.dispatch import CeleryPublisher
from tests.utils.fake_safety import tiny_checker
from web.app import create_web_app

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEBHOOK_SECRET = "telegram-webhook-secret-42"


def make_config(tmp_path: Path, **admin: Any) -> AppConfig:
    """A config for tests: local blobs under tmp_path, a token, small upload limits."""
    return AppConfig(
        admin=AdminSettings(token=SecretStr(TOKEN), **admin),
        telegram=TelegramSettings(
            token=SecretStr("123456:TEST"),
            mode="webhook",
            webhook_url="https://example.invalid/telegram/webhook",
            webhook_secret=SecretStr(WEBHOOK_SECRET),
        ),
        storage=StorageSettings(blob_dir=tmp_path / "blobs"),
        broker=BrokerSettings(url="redis://127.0.0.1:6379/15"),
        limits=LimitsSettings(max_lora_bytes=256 * 1024, max_upload_bytes=2 * 1024 * 1024),
    )


def publisher_for(celery: Any, db: Database) -> CeleryPublisher:
    """The production publisher on a (recording) Celery app."""
    return CeleryPublisher(celery, db)


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return make_config(tmp_path)


@pytest.fixture
def celery() -> Any:
    """A Celery app whose publishing is recorded instead of sent (autospec'd)."""
    return mock.create_autospec(Celery, instance=True)


@pytest.fixture
def metrics() -> Metrics:
    return create_metrics()


@pytest.fixture
def screen_checker() -> Any:
    """The admin web's upload safety checker, in this process (the tiny one: never flags)."""
    return tiny_checker()


@pytest.fixture
def app(
    config: AppConfig,
    db: Database,
    blobs: LocalBlobStore,
    celery: Any,
    metrics: Metrics,
    screen_checker: Any,
) -> web.Application:
    return create_web_app(
        config,
        db,
        blobs,
        publisher_for(celery, db),
        metrics=metrics,
        screen_factory=lambda c: None if c.safety.inputs == "off" else LocalScreen(screen_checker),
    )


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as test_client:
        yield test_client
