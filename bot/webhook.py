"""Webhook mode: the aiohttp route checks Telegram's secret and hands the JSON to the application.

The bot runs with `updater(None)`; updates pushed into `application.update_queue` are processed
exactly like polled ones, so several bot processes behind a load balancer can share one token
(conversation state lives in the database)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from telegram import Update
from telegram.ext import Application

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def secret_matches(expected: str | None, received: str | None) -> bool:
    """Constant-time check of the X-Telegram-Bot-Api-Secret-Token header."""
    if not expected or received is None:
        return False
    return secrets.compare_digest(expected.encode(), received.encode())


async def process_webhook_update(
    application: Application[Any, Any, Any, Any, Any, Any], data: dict[str, Any]
) -> Update | None:
    """Queue one update received by the webhook route; None if the JSON is not an update."""
    try:
        update = Update.de_json(data, application.bot)
    except (KeyError, TypeError, ValueError):
        logger.warning("webhook: ignoring a body that is not a Telegram update")
        return None
    await application.update_queue.put(update)
    return update
