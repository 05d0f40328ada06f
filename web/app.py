"""The admin web application: admin API, OpenAPI document, probes, metrics, the Telegram
webhook and the Mini App (page and API), all registered from one route table."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from telegram.ext import Application

from core.blobstore import BlobStore
from core.metrics import Metrics, default_metrics
from core.safety import ScreenFactory, create_screen
from core.settings import AppConfig
from db.session import Database
from domain.outbox import Publisher
from web.api import api_routes
from web.auth import (
    DEFAULT_MAX_FAILURES,
    DEFAULT_WINDOW_SECONDS,
    AuthGuard,
    FailureLimiter,
    parse_networks,
)
from web.health import health_routes
from web.http import error_middleware, make_handler
from web.keys import (
    AUTH,
    BLOBS,
    CHECK_EXECUTOR,
    CONFIG,
    DB,
    METRICS,
    OPENAPI,
    PUBLISHER,
    ROUTES,
    SCREEN,
    TELEGRAM,
    UPDATE_SINK,
)
from web.miniapp import routes as miniapp
from web.openapi import aiohttp_path, build_document
from web.telegram import telegram_routes

logger = logging.getLogger(__name__)

# JSON bodies and Telegram updates are small; uploads stream with their own per-file limits.
JSON_BODY_LIMIT = 1024 * 1024


async def _check_pool(app: web.Application) -> AsyncIterator[None]:
    """A small thread pool for readiness checks, shut down with the app."""
    executor = ThreadPoolExecutor(3, thread_name_prefix="readyz")
    app[CHECK_EXECUTOR] = executor
    yield
    executor.shutdown(wait=False, cancel_futures=True)


async def _close_screen(app: web.Application) -> AsyncIterator[None]:
    """Stop the upload safety checker's process (if one was started) with the app."""
    yield
    screen = app[SCREEN]
    if screen is not None:
        screen.close()


def create_web_app(
    config: AppConfig,
    db: Database,
    blobs: BlobStore,
    publisher: Publisher,
    telegram_app: Application[Any, Any, Any, Any, Any, Any] | None = None,
    *,
    update_sink: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    metrics: Metrics | None = None,
    auth_max_failures: int = DEFAULT_MAX_FAILURES,
    auth_window: float = DEFAULT_WINDOW_SECONDS,
    screen_factory: ScreenFactory = create_screen,
) -> web.Application:
    """Build the aiohttp app; the Telegram webhook route exists only in webhook mode with a bot.

    `publisher` takes what the API's use cases outbox (and answers the broker readiness check);
    `telegram_app` is the bot's PTB Application, fed by the webhook route."""
    app = web.Application(client_max_size=JSON_BODY_LIMIT, middlewares=[error_middleware])
    app[CONFIG] = config
    app[DB] = db
    app[BLOBS] = blobs
    app[PUBLISHER] = publisher
    app[METRICS] = metrics or default_metrics()
    # Started on the first sample image an admin uploads (they are rare), closed with the app.
    app[SCREEN] = screen_factory(config)
    token = config.admin.token.get_secret_value() if config.admin.token else None
    app[AUTH] = AuthGuard(
        token,
        FailureLimiter(auth_max_failures, auth_window),
        parse_networks(config.admin.trusted_proxies),
    )
    if token is None:
        logger.warning("ADMIN_TOKEN is not set: the admin API answers 503 until it is")
    routes = [*health_routes(config), *api_routes(config)]
    if config.telegram.token is not None:
        # The Mini App validates its users' init data with the bot token.
        miniapp.setup(app, config)
        routes.extend(miniapp.routes())
    if config.telegram.mode == "webhook" and (telegram_app or update_sink) is not None:
        # In process (`run`): straight onto the bot's queue; else through the broker (`web`).
        if telegram_app is not None:
            app[TELEGRAM] = telegram_app
        else:
            assert update_sink is not None
            app[UPDATE_SINK] = update_sink
        routes.extend(telegram_routes())
    for route in routes:
        app.router.add_route(route.method, aiohttp_path(route), make_handler(route))
    app[ROUTES] = tuple(routes)
    app[OPENAPI] = build_document(routes)
    app.cleanup_ctx.append(_check_pool)
    app.cleanup_ctx.append(_close_screen)
    return app
