"""Webhook mode across processes: what `web` publishes, the bot's relay takes, in order."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from core.settings import AppConfig, BrokerSettings, TelegramSettings
from service.update_relay import UpdateRelay, publish_update, wait_connected
from tasks.celery_app import create_celery
from tests.utils.workers import redis_available, redis_test_url


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
