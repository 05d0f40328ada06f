"""Typed application state keys of the admin web app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from telegram.ext import Application

from core.blobstore import BlobStore
from core.metrics import Metrics
from core.safety import ImageScreen
from core.settings import AppConfig
from db.session import Database
from domain.outbox import Publisher
from web.auth import AuthGuard
from web.openapi import Route

CONFIG = web.AppKey("config", AppConfig)
DB = web.AppKey("db", Database)
BLOBS = web.AppKey("blobs", BlobStore)
PUBLISHER = web.AppKey("publisher", Publisher)
TELEGRAM = web.AppKey("telegram", Application[Any, Any, Any, Any, Any, Any])
# Webhook mode with the bot in another process: where the route hands each update's JSON.
UpdateSink = Callable[[dict[str, Any]], Awaitable[None]]
UPDATE_SINK: web.AppKey[UpdateSink] = web.AppKey("update_sink")
METRICS = web.AppKey("metrics", Metrics)
AUTH = web.AppKey("auth", AuthGuard)
# Health checks run here so a hung dependency cannot exhaust the default executor.
CHECK_EXECUTOR = web.AppKey("check_executor", ThreadPoolExecutor)
# The safety screen of uploaded style sample images (None: SAFETY_INPUTS=off).
SCREEN: web.AppKey[ImageScreen | None] = web.AppKey("screen")
# The OpenAPI document, built once from the route table at startup.
OPENAPI = web.AppKey("openapi", dict[str, Any])
# The route table the app serves (and documents).
ROUTES = web.AppKey("routes", tuple[Route, ...])
