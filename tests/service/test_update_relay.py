"""Webhook mode across processes: what `web` publishes, the bot's relay takes, in order, and
only when `web` signed it."""

from __future__ import annotations

import asyncio
import json
import queue
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from telegram.ext import ApplicationBuilder

from core.errors import ConfigError
from core.metrics import create_metrics
from core.settings import AppConfig, BrokerSettings, TelegramSettings
from db.session import Database
from service.relay_auth import RelayRejected, open_update, relay_key, sign_update
from service.runner import broker_sink, start_relay
from service.update_relay import UpdateRelay, publish_update, wait_connected
from tasks.celery_app import create_celery
from tasks.dispatch import CeleryPublisher
from tests.utils.workers import REDIS_URL, redis_available, redis_test_url


def test_published_updates_reach_the_relay(tmp_path: Path) -> None:
    broker = redis_test_url() if redis_available() else f"sqla+sqlite:///{tmp_path / 'b.db'}"
    config = AppConfig(
        telegram=TelegramSettings(token=SecretStr("123456:TEST-token")),
        broker=BrokerSettings(url=broker),
    )
    celery = create_celery(config, queues=())
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    # Published before the bot runs: the update waits in the broker.
    publish_update(celery, {"update_id": 1, "message": {"text": "early"}})
    relay = UpdateRelay(broker, got.put)
    relay.start()
    try:
        assert wait_connected(relay, 10)
        for n in range(2, 6):
            publish_update(celery, {"update_id": n})
        ids = [got.get(timeout=10)["update_id"] for _ in range(5)]
        assert ids == [1, 2, 3, 4, 5]
    finally:
        relay.stop()
    assert not relay.is_alive()


def _webhook_config(broker: str) -> AppConfig:
    return AppConfig(
        telegram=TelegramSettings(
            token=SecretStr("123456:TEST-token"),
            mode="webhook",
            webhook_url="https://bot.example.com/telegram/webhook",
            webhook_secret=SecretStr("relay-webhook-secret-0123456789"),
        ),
        broker=BrokerSettings(url=broker),
    )


def _text_update(update_id: int, text: str) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 0,
            "chat": {"id": ADMIN, "type": "private"},
            "from": {"id": ADMIN, "is_bot": False, "first_name": "Root"},
            "text": text,
        },
    }


ADMIN = 4242
# Not one of redis_test_url's (5 + worker number) nor the fixed ones other tests use (9, 15).
RELAY_TEST_DB = 12


async def test_the_bot_handles_only_updates_web_signed(
    tmp_path: Path, committed_db: Database
) -> None:
    """Whoever can write to the broker cannot speak for Telegram: an unsigned update (an admin's
    /grant, say) pushed onto telegram.updates is dropped and counted, one signed with another
    key too; the one `web` signed is handled (on dbcd432 the unsigned one was handled)."""
    # A Redis database of its own: the shared one (redis_test_url) may carry another run's
    # relay queue. (The relay's Redis options do not suit the SQLite transport.)
    if not redis_available():
        pytest.skip("the relay runs on Redis")
    broker = f"{REDIS_URL}/{RELAY_TEST_DB}"
    redis.Redis.from_url(broker).flushdb()
    config = _webhook_config(broker)
    celery = create_celery(config, queues=())
    application = ApplicationBuilder().token("123456:TEST-token").updater(None).build()
    metrics = create_metrics()
    relay = start_relay(config, application, committed_db, metrics)
    try:
        assert await asyncio.to_thread(wait_connected, relay, 10)
        forged = _text_update(1, "/grant 4242 1000000")
        publish_update(celery, forged)
        other_key = relay_key(
            _webhook_config(broker).telegram.model_copy(
                update={"webhook_secret": SecretStr("another-webhook-secret-0123456789")}
            )
        )
        publish_update(celery, sign_update(other_key, _text_update(2, "/grant 4242 5")))
        publish_update(celery, {"update": json.dumps(_text_update(3, "/stats")), "hmac": "0"})
        # What `web` publishes: the update it accepted, signed by its sink.
        publisher = CeleryPublisher(celery, None)  # type: ignore[arg-type]  # publishes no job
        sink = broker_sink(publisher, relay_key(config.telegram))
        await sink(_text_update(4, "/start"))
        update = await asyncio.wait_for(application.update_queue.get(), 20)
        assert update.update_id == 4
        assert update.message is not None
        assert update.message.text == "/start"
        assert application.update_queue.empty()
    finally:
        await asyncio.to_thread(relay.stop)
    dropped = {
        s.labels["reason"]: s.value
        for m in metrics.registry.collect()
        if m.name == "facechain_relay_updates_dropped"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert dropped == {"unsigned": 1.0, "bad_signature": 2.0}


def test_signatures_cover_the_update_and_the_key() -> None:
    key = relay_key(_webhook_config("redis://x").telegram)
    message = sign_update(key, _text_update(7, "/buy"))
    assert open_update(key, message) == _text_update(7, "/buy")
    tampered = {**message, "update": message["update"].replace("/buy", "/grant 1 9")}
    for bad, reason in (
        (tampered, "bad_signature"),
        (_text_update(7, "/buy"), "unsigned"),
        ([message], "unsigned"),
        ({"update": "[]", "hmac": sign_update(key, {})["hmac"]}, "bad_signature"),
    ):
        with pytest.raises(RelayRejected) as caught:
            open_update(key, bad)
        assert caught.value.reason == reason


def test_no_key_without_the_token_or_the_secret() -> None:
    with pytest.raises(ConfigError, match="TELEGRAM_TOKEN and TELEGRAM_WEBHOOK_SECRET"):
        relay_key(TelegramSettings(webhook_secret=SecretStr("relay-webhook-secret-0123456789")))
