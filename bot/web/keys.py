"""Typed application state keys of the admin web app."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from celery import Celery
from telegram.ext import Application

from bot.web.auth import AuthGuard
from bot.web.metrics import Metrics
from bot.web.openapi import Route
from db.session import Database
from service.blobstore import BlobStore
from service.settings import AppConfig

CONFIG = web.AppKey("config", AppConfig)
DB = web.AppKey("db", Database)
BLOBS = web.AppKey("blobs", BlobStore)
CELERY = web.AppKey("celery", Celery)
TELEGRAM = web.AppKey("telegram", Application[Any, Any, Any, Any, Any, Any])
METRICS = web.AppKey("metrics", Metrics)
AUTH = web.AppKey("auth", AuthGuard)
# Health checks run here so a hung dependency cannot exhaust the default executor.
CHECK_EXECUTOR = web.AppKey("check_executor", ThreadPoolExecutor)
# The OpenAPI document, built once from the route table at startup.
OPENAPI = web.AppKey("openapi", dict[str, Any])
# The route table the app serves (and documents).
ROUTES = web.AppKey("routes", tuple[Route, ...])
