"""POST /telegram/webhook: Telegram's updates in webhook mode, handed to the bot's queue.

Only requests carrying TELEGRAM_WEBHOOK_SECRET in `X-Telegram-Bot-Api-Secret-Token` (compared
in constant time) get past the guard; the update is queued and answered 200 at once, the bot
processes it like a polled one."""

from __future__ import annotations

import logging

from aiohttp import web

from bot.web.http import BadRequest, Call
from bot.web.keys import CONFIG, METRICS, TELEGRAM
from bot.web.openapi import Route
from bot.web.schemas import TelegramUpdateIn
from bot.webhook import SECRET_HEADER, process_webhook_update, secret_matches
from service.errors import Forbidden

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"


def check_secret(request: web.Request) -> None:
    """Refuse requests without the right secret token header (before reading the body)."""
    secret = request.app[CONFIG].telegram.webhook_secret
    expected = secret.get_secret_value() if secret is not None else None
    if not secret_matches(expected, request.headers.get(SECRET_HEADER)):
        request.app[METRICS].webhook_updates.labels(outcome="forbidden").inc()
        logger.warning("telegram webhook: bad secret token from %s", request.remote)
        raise Forbidden("wrong or missing secret token")


async def telegram_webhook(call: Call) -> web.Response:
    """Queue one update for the bot and answer 200."""
    data = call.body_as(TelegramUpdateIn).model_dump()
    update = await process_webhook_update(call.app[TELEGRAM], data)
    if update is None:
        call.app[METRICS].webhook_updates.labels(outcome="invalid").inc()
        raise BadRequest("not a Telegram update")
    call.app[METRICS].webhook_updates.labels(outcome="accepted").inc()
    return web.Response(status=200)


def telegram_routes() -> list[Route]:
    """The webhook route (registered only in webhook mode with a bot application)."""
    return [
        Route(
            "POST",
            WEBHOOK_PATH,
            telegram_webhook,
            "Telegram updates (webhook mode)",
            "telegram",
            auth=False,
            body=TelegramUpdateIn,
            guard=check_secret,
            headers=((SECRET_HEADER, "TELEGRAM_WEBHOOK_SECRET, as given to setWebhook"),),
            errors=(403,),
        )
    ]
