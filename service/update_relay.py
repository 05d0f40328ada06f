"""Webhook mode across processes: `web` receives Telegram's updates, `bot` handles them.

`web` is the one published port: it checks the secret, puts the update's JSON on the broker
queue `telegram.updates` and answers 200. `bot` runs `UpdateRelay`, a thread that takes those
messages, stores each in the inbox and puts it on the Application's update queue, where it is
handled exactly as a polled one (per-user ordering, flood limits and all). A message is
acknowledged only once its update is stored (a bot killed before that gets it again from the
broker; one killed after replays it from the inbox). Updates that arrive while `bot` restarts
wait in the broker instead of being retried by Telegram."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

logger = logging.getLogger(__name__)

UPDATES_QUEUE = "telegram.updates"
# How many updates the bot takes from the broker ahead of handling them.
PREFETCH = 64
# Redis: an update taken but never acknowledged (the bot died) comes back after this.
VISIBILITY_TIMEOUT_S = 60
RECONNECT_DELAY_S = 2.0
_EXCHANGE = Exchange(UPDATES_QUEUE, type="direct", durable=True)
_QUEUE = Queue(UPDATES_QUEUE, _EXCHANGE, routing_key=UPDATES_QUEUE, durable=True)


def relay_transport_options() -> dict[str, Any]:
    """Broker options of the relay's own connection (Redis: its own unacked index)."""
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "unacked_key": "unacked:telegram.updates",
        "unacked_index_key": "unacked_index:telegram.updates",
        "unacked_mutex_key": "unacked_mutex:telegram.updates",
    }


def publish_update(celery: Celery, data: dict[str, Any]) -> None:
    """Put one update on the relay queue (blocking; call it from a thread)."""
    with celery.producer_pool.acquire(block=True, timeout=5) as producer:
        producer.publish(
            data,
            exchange=_EXCHANGE,
            routing_key=UPDATES_QUEUE,
            declare=[_QUEUE],
            serializer="json",
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5},
        )


class UpdateRelay(threading.Thread):
    """Takes updates from the relay queue and hands each to `deliver` (in this thread)."""

    def __init__(self, broker_url: str, deliver: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(name="update-relay", daemon=True)
        self.broker_url = broker_url
        self.deliver = deliver
        self.connected = threading.Event()
        self._stop_event = threading.Event()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking updates and wait for the thread."""
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._consume()
            except Exception as exc:
                # Broker down or restarting: say so once per attempt and reconnect.
                self.connected.clear()
                logger.warning("update relay: %s; reconnecting", exc)
                self._stop_event.wait(RECONNECT_DELAY_S)

    def _consume(self) -> None:
        with Connection(self.broker_url, transport_options=relay_transport_options()) as conn:
            conn.ensure_connection(max_retries=1)
            queue = conn.SimpleQueue(_QUEUE, serializer="json")
            queue.consumer.qos(prefetch_count=PREFETCH)
            self.connected.set()
            logger.info("taking Telegram updates from the %s queue", UPDATES_QUEUE)
            try:
                while not self._stop_event.is_set():
                    try:
                        message = queue.get(block=True, timeout=1)
                    except queue.Empty:
                        continue
                    try:
                        self.deliver(message.payload)
                    except Exception:
                        # Not stored (the database is out of reach): the broker keeps it.
                        message.requeue()
                        raise
                    message.ack()
            finally:
                queue.close()
                self.connected.clear()


def wait_connected(relay: UpdateRelay, seconds: float) -> bool:
    """Whether the relay connected to the broker within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if relay.connected.wait(0.1):
            return True
        if not relay.is_alive():
            return False
    return False
