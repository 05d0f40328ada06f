"""A worker's status in Redis (`core.workers`): a daemon thread writes what the worker's probe
reports every few seconds under a key that expires, so the admin web's /readyz lists every
worker's readiness (a gpu worker building or failing to build its engine included) and a worker
that vanished drops out by itself. Only with a Redis broker (the embedded transport has none)."""

from __future__ import annotations

import contextlib
import logging
import threading

import redis

from core.workers import INTERVAL_S, KEY_PREFIX, TTL_S, WorkerStatus
from service.probe import ProbeState

logger = logging.getLogger(__name__)

# How often the writer looks at the probe for a change.
CHECK_S = 1.0


class StatusWriter:
    """Writes one worker's status until stopped (and removes it on a clean stop)."""

    def __init__(
        self,
        broker_url: str,
        name: str,
        queues: list[str],
        probe: ProbeState,
        interval: float = INTERVAL_S,
    ) -> None:
        self.client = redis.Redis.from_url(broker_url, socket_timeout=3, socket_connect_timeout=3)
        self.key = KEY_PREFIX + name
        self.name = name
        self.queues = queues
        self.probe = probe
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-status", daemon=True)

    def start(self) -> StatusWriter:
        self._thread.start()
        return self

    def current(self) -> WorkerStatus:
        """What the probe reports now."""
        ready, body = self.probe.report()
        engine = body.get("engine")
        return WorkerStatus(
            name=self.name,
            queues=self.queues,
            ready=ready,
            reason=str(body.get("reason", "")),
            engine_load_s=engine.get("load_s") if isinstance(engine, dict) else None,
        )

    def write(self, status: WorkerStatus | None = None) -> None:
        """Write the probe's current view once."""
        self.client.set(self.key, (status or self.current()).encode(), ex=TTL_S)

    def _run(self) -> None:
        # A change (ready, a failed build) is written within a second; otherwise every interval.
        last: tuple[bool, str, float | None] | None = None
        written_at = 0.0
        while True:
            status = self.current()
            state = (status.ready, status.reason, status.engine_load_s)
            if state != last or status.at - written_at >= self.interval:
                try:
                    self.write(status)
                    last, written_at = state, status.at
                except redis.RedisError as exc:
                    logger.debug("worker status not written: %s", exc)
            if self._stop.wait(CHECK_S):
                return

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)
