"""Liveness (/healthz), readiness with a status per dependency (/readyz) and /metrics."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from core.settings import AppConfig
from domain import stats
from domain.stats import DatabaseSnapshot
from web.http import Call
from web.keys import AUTH, CHECK_EXECUTOR, METRICS
from web.metrics import CONTENT_TYPE, render
from web.openapi import Route
from web.schemas import CheckOut, HealthOut, ReadyOut, WorkerOut

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 3.0
# Concurrent /readyz requests share one round of checks (each answer is fresh); a scrape's
# database and broker figures are reused this long.
READY_CACHE_SECONDS = 0.0
METRICS_CACHE_SECONDS = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class Scrape:
    """What one scrape read: database figures and queue depths (None: unreadable)."""

    snapshot: DatabaseSnapshot | None
    queue_depths: dict[str, int] | None


async def run_check(app: web.Application, name: str, check: Callable[[], None]) -> CheckOut:
    """Run one blocking check on the check pool with a timeout; never raises."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    error: str | None = None
    try:
        await asyncio.wait_for(
            loop.run_in_executor(app[CHECK_EXECUTOR], check), CHECK_TIMEOUT_SECONDS
        )
    except TimeoutError:
        error = f"timed out after {CHECK_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        # A readiness probe reports any failure of its dependency; the details go to the log
        # (messages can carry hosts and paths, and /readyz may be public).
        logger.warning("readiness check %s failed: %s", name, exc)
        error = type(exc).__name__
    latency = round((time.perf_counter() - started) * 1000.0, 2)
    return CheckOut(ok=error is None, latency_ms=latency, error=error)


async def healthz(call: Call) -> HealthOut:
    """The process is up and serving."""
    return HealthOut(status="ok")


class Cached(Generic[T]):
    """The last value of an expensive read, reused for `ttl` seconds; one read at a time.

    /readyz is public and /metrics is scraped by every Prometheus replica: requests that arrive
    while a read is in flight share it, and a value younger than `ttl` is served as it is, so
    the database and the broker see at most one read per `ttl` however many requests come."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._value: T | None = None
        self._at = -math.inf
        self._inflight: asyncio.Future[T] | None = None

    async def get(self, read: Callable[[], Awaitable[T]]) -> T:
        if self._value is not None and self.clock() - self._at < self.ttl:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh(read))
        return await asyncio.shield(self._inflight)

    async def _refresh(self, read: Callable[[], Awaitable[T]]) -> T:
        try:
            value = await read()
            self._value, self._at = value, self.clock()
            return value
        finally:
            self._inflight = None


READY_CACHE = web.AppKey("ready_cache", Cached[ReadyOut])
SCRAPE_CACHE = web.AppKey("scrape_cache", Cached[Scrape])


async def readyz(call: Call) -> web.Response:
    """Database, broker and blob store reachable: 200, else 503, with one entry per check; and
    every worker's own readiness as it last reported it (a gpu worker: its engine)."""

    async def check_all() -> ReadyOut:
        checks = {
            "database": call.db.ping,
            "broker": call.publisher.ping,
            "blobs": call.blobs.ping,
        }
        results, workers = await asyncio.gather(
            asyncio.gather(*(run_check(call.app, n, c) for n, c in checks.items())),
            _workers(call),
        )
        return ReadyOut(
            status="ok" if all(r.ok for r in results) else "unavailable",
            checks=dict(zip(checks, results, strict=True)),
            workers=workers,
        )

    out = await cached(call.app, READY_CACHE, READY_CACHE_SECONDS).get(check_all)
    return web.json_response(
        out.model_dump(mode="json"), status=200 if out.status == "ok" else 503
    )


async def _workers(call: Call) -> list[WorkerOut]:
    """Every worker's last reported status (`core.workers`), bounded in time; [] if unreadable."""
    read = getattr(call.publisher, "workers", None)
    if read is None:
        return []
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.run_in_executor(call.app[CHECK_EXECUTOR], read), CHECK_TIMEOUT_SECONDS
        )
    except Exception as exc:
        # The broker check says whether the broker is down; this list is information only.
        logger.warning("readiness: worker status unreadable: %s", exc)
        return []
    now = time.time()
    return [
        WorkerOut(
            name=w.name,
            queues=w.queues,
            ready=w.ready,
            reason=w.reason,
            engine_load_s=w.engine_load_s,
            seen_s_ago=round(max(0.0, now - w.at), 1),
        )
        for w in found
    ]


def cached(app: web.Application, key: web.AppKey[Cached[T]], ttl: float) -> Cached[T]:
    """The app's cache under `key` (made on first use)."""
    if key not in app:
        app[key] = Cached(ttl)
    return app[key]


async def _read_scrape(call: Call) -> Scrape:
    """The database figures and the broker's queue depths, each bounded in time."""
    snapshot: DatabaseSnapshot | None
    try:
        snapshot = await call.db.run(stats.read_snapshot)
    except SQLAlchemyError as exc:
        logger.warning("metrics: database unavailable: %s", exc)
        snapshot = None
    depths: dict[str, int] | None = None
    read_depths = getattr(call.publisher, "queue_depths", None)
    if read_depths is not None:
        loop = asyncio.get_running_loop()
        try:
            depths = await asyncio.wait_for(
                loop.run_in_executor(call.app[CHECK_EXECUTOR], read_depths),
                CHECK_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            # The figures say the broker was unreadable (facechain_metrics_broker_up 0).
            logger.warning("metrics: broker queue depths unavailable: %s", exc)
    return Scrape(snapshot, depths)


async def metrics(call: Call) -> web.Response:
    """Prometheus exposition: process counters, database figures and broker queue depths
    (those two read at most once per METRICS_CACHE_SECONDS)."""
    scrape = await cached(call.app, SCRAPE_CACHE, METRICS_CACHE_SECONDS).get(
        lambda: _read_scrape(call)
    )
    body = render(call.app[METRICS], scrape.snapshot, scrape.queue_depths)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def metrics_guard(config: AppConfig) -> Callable[[web.Request], None] | None:
    """With ADMIN_METRICS_TOKEN: /metrics needs that token (or the admin token)."""
    if config.admin.metrics_token is None:
        return None
    metrics_token = config.admin.metrics_token.get_secret_value().encode()
    admin_token = config.admin.token.get_secret_value().encode() if config.admin.token else None

    def guard(request: web.Request) -> None:
        auth = request.app[AUTH]
        if admin_token is not None and auth.carries(request, admin_token):
            return
        auth.require(request, metrics_token, "metrics")

    return guard


def health_routes(config: AppConfig) -> list[Route]:
    """Probe and metrics routes: /metrics needs ADMIN_METRICS_TOKEN when it is set, else the
    admin token unless ADMIN_PUBLIC_METRICS."""
    return [
        Route(
            "GET",
            "/healthz",
            healthz,
            "Liveness: the process is up",
            "health",
            auth=False,
            response=HealthOut,
        ),
        Route(
            "GET",
            "/readyz",
            readyz,
            "Readiness per dependency",
            "health",
            auth=False,
            response=ReadyOut,
            errors=(503,),
        ),
        Route(
            "GET",
            "/metrics",
            metrics,
            "Prometheus metrics",
            "health",
            auth=not config.admin.public_metrics and config.admin.metrics_token is None,
            guard=metrics_guard(config),
            media_type="text/plain",
        ),
    ]
