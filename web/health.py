"""Liveness (/healthz), readiness with a status per dependency (/readyz) and /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from core.settings import AppConfig
from domain import stats
from web.http import Call
from web.keys import CHECK_EXECUTOR, METRICS
from web.metrics import CONTENT_TYPE, render
from web.openapi import Route
from web.schemas import CheckOut, HealthOut, ReadyOut

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 3.0


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


async def readyz(call: Call) -> web.Response:
    """Database, broker and blob store reachable: 200, else 503, with one entry per check."""
    checks = {
        "database": call.db.ping,
        "broker": call.publisher.ping,
        "blobs": call.blobs.ping,
    }
    results = await asyncio.gather(*(run_check(call.app, n, c) for n, c in checks.items()))
    out = ReadyOut(
        status="ok" if all(r.ok for r in results) else "unavailable",
        checks=dict(zip(checks, results, strict=True)),
    )
    return web.json_response(
        out.model_dump(mode="json"), status=200 if out.status == "ok" else 503
    )


async def metrics(call: Call) -> web.Response:
    """Prometheus exposition: process counters and database figures."""
    try:
        snapshot = await call.db.run(stats.read_snapshot)
    except SQLAlchemyError as exc:
        logger.warning("metrics: database unavailable: %s", exc)
        snapshot = None
    body = render(call.app[METRICS], snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def health_routes(config: AppConfig) -> list[Route]:
    """Probe and metrics routes (metrics need the token unless ADMIN_PUBLIC_METRICS)."""
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
            auth=not config.admin.public_metrics,
            media_type="text/plain",
        ),
    ]
