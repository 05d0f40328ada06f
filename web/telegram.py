"""POST /telegram/webhook: Telegram's updates in webhook mode, handed to the bot's update queue.

The bot runs with `updater(None)`; the composition root gives this app the bot's PTB
`Application`. Only requests carrying TELEGRAM_WEBHOOK_SECRET in
`X-Telegram-Bot-Api-Secret-Token` (compared in constant time) get past the guard; the update is
stored in the inbox (`domain.inbox`), queued and answered 200, and the bot processes it exactly
like a polled one (a copy Telegram sends again is answered 200, not queued), so several
bot processes behind a load balancer can share one token (conversation state is in the
database)."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from core.errors import Forbidden
from db.session import Database
from domain import inbox
from web.http import BadRequest, Call
from web.keys import CONFIG, DB, METRICS, TELEGRAM, UPDATE_SINK
from web.openapi import Route
from web.schemas import TelegramUpdateIn

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def secret_matches(expected: str | None, received: str | None) -> bool:
    """Constant-time check of the X-Telegram-Bot-Api-Secret-Token header."""
    if not expected or received is None:
        return False
    return secrets.compare_digest(expected.encode(), received.encode())


async def process_webhook_update(
    application: Application[Any, Any, Any, Any, Any, Any],
    data: dict[str, Any],
    db: Database | None = None,
) -> Update | None:
    """Queue one update received by the webhook route; None if the JSON is not an update.

    With `db`, the update is stored in the inbox first (`domain.inbox`): the route answers 200
    only once a restarted bot would replay it, and a copy Telegram sends again is not queued."""
    try:
        update = Update.de_json(data, application.bot)
    except (KeyError, TypeError, ValueError):
        logger.warning("webhook: ignoring a body that is not a Telegram update")
        return None
    if db is not None and not await db.run(inbox.store, update.update_id, data):
        return update
    await application.update_queue.put(update)
    return update


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
    sink = call.app.get(UPDATE_SINK)
    if sink is not None:
        # The bot runs in its own process: the update goes to it through the broker.
        if not isinstance(data.get("update_id"), int):
            call.app[METRICS].webhook_updates.labels(outcome="invalid").inc()
            raise BadRequest("not a Telegram update")
        await sink(data)
        call.app[METRICS].webhook_updates.labels(outcome="accepted").inc()
        return web.Response(status=200)
    update = await process_webhook_update(call.app[TELEGRAM], data, call.app.get(DB))
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
