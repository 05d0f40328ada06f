"""The bot's one error handler.

Typed errors (`AppError`, facechain's `FaceChainError`) are expected: the user gets a translated
sentence and nothing is logged as a failure. Anything else is logged with its traceback, the
user gets an apology, and the admin chat gets a short note (throttled). Every error is counted
by code on the process metrics (`facechain_errors_total{source="bot"}`)."""

from __future__ import annotations

import html
import logging
import time
import traceback
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from telegram import Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError
from telegram.ext import ApplicationHandlerStop

from core.errors import AppError, CreditsNeeded
from facechain.errors import FaceChainError
from telegram_ui.client import bulk_sends
from telegram_ui.i18n import DEFAULT_LANGUAGE, error_text, normalize_language, translate
from telegram_ui.keyboards import buy_keyboard

logger = logging.getLogger(__name__)

# At most one admin alert per this many seconds, so an outage does not flood the admin chat.
ADMIN_ALERT_INTERVAL = 30.0
# Telegram's wording when a message a button belongs to can no longer be edited.
STALE_MESSAGE = (
    "message to edit not found",
    "message can't be edited",
    "message to delete not found",
)


def describe_error(language: str | None, error: BaseException) -> str:
    """A translated sentence for a typed error (its `code`, with its details as parameters)."""
    details: dict[str, Any] = dict(getattr(error, "details", {}) or {})
    return error_text(language, getattr(error, "code", "internal"), **details)


def _language(update: object, context: Any) -> str:
    """The language the user chose with /lang, else their client's.

    PTB hands the error handler a fresh context, without the account the gate loaded; the
    gate left the stored language with the flood limiter (`remember_language`), so no
    database read is needed here (the database may be what failed)."""
    account = getattr(context, "loaded_account", None)
    if account is not None:
        return normalize_language(account.language)
    if isinstance(update, Update) and update.effective_user is not None:
        user = update.effective_user
        try:
            remembered = context.deps.rate_limiter.language_of(user.id)
        except (AttributeError, KeyError):  # a context without the bot's services
            remembered = None
        return remembered or normalize_language(user.language_code)
    return DEFAULT_LANGUAGE


async def _tell_user(update: object, context: Any, text: str, markup: Any = None) -> None:
    if not isinstance(update, Update) or update.effective_chat is None:
        return
    try:
        await context.bot.send_message(update.effective_chat.id, text, reply_markup=markup)
    except TelegramError as exc:
        logger.warning("could not tell chat %s about an error: %s", update.effective_chat.id, exc)


async def _alert_admin(update: object, context: Any, error: BaseException) -> None:
    deps = context.deps
    chat_id = deps.config.telegram.admin_chat_id
    now = time.monotonic()
    if chat_id is None or now - deps.last_admin_alert < ADMIN_ALERT_INTERVAL:
        return
    deps.last_admin_alert = now
    tb = "".join(traceback.format_exception(None, error, error.__traceback__))[-3000:]
    who = ""
    if isinstance(update, Update) and update.effective_user is not None:
        who = f" (user {update.effective_user.id})"
    text = (
        f"<b>Bot error{html.escape(who)}</b>: {html.escape(type(error).__name__)}\n"
        f"<pre>{html.escape(tb)}</pre>"
    )
    try:
        with bulk_sends():
            await context.bot.send_message(chat_id, text, parse_mode="HTML")
    except TelegramError as exc:
        logger.warning("could not alert the admin chat: %s", exc)


def error_code(error: BaseException) -> str:
    """The code an error is counted under: a typed error's own, else a short class of it."""
    if isinstance(error, AppError | FaceChainError):
        return error.code
    if database_unavailable(error):
        return "database_unavailable"
    if isinstance(error, RetryAfter):
        return "telegram_rate_limited"
    if isinstance(error, TelegramError):
        return "telegram_" + type(error).__name__.lower()
    return "internal"


def database_unavailable(error: BaseException) -> bool:
    """Whether the database could not be reached (down, restarting, connections exhausted)."""
    if isinstance(error, OperationalError | PoolTimeout):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


async def _answer_query(update: object) -> None:
    """Stop the client's spinner on a button press that could not be served."""
    if isinstance(update, Update) and update.callback_query is not None:
        try:
            await update.callback_query.answer()
        except TelegramError as exc:
            logger.debug("could not answer a callback query: %s", exc)


async def error_handler(update: object, context: Any) -> None:
    """The application's one error handler: the update ends at its first error.

    Raising ApplicationHandlerStop keeps later handler groups from running, so a gate that
    failed (e.g. the ban notice to a user who blocked the bot) never lets a flow handler run."""
    if context.error is None:
        return
    await _handle_error(update, context)
    raise ApplicationHandlerStop


async def _handle_error(update: object, context: Any) -> None:
    error = context.error
    context.deps.metrics.record_error(error_code(error), "bot")
    if database_unavailable(error):
        # An outage, not a bug: say so and log one line. Raising ApplicationHandlerStop ends the
        # update here, so no flow handler runs after a gate that could not load the user.
        logger.warning("database unavailable while handling an update: %s", type(error).__name__)
        await _answer_query(update)
        await _tell_user(update, context, translate(_language(update, context), "error.busy"))
        raise ApplicationHandlerStop
    if isinstance(error, AppError | FaceChainError):
        logger.info("typed error %s: %s", getattr(error, "code", "?"), error)
        language = _language(update, context)
        # Free quota used up with payments on: the reply carries the Buy button.
        markup = buy_keyboard(language) if isinstance(error, CreditsNeeded) else None
        await _tell_user(update, context, describe_error(language, error), markup)
        return
    if isinstance(error, Forbidden):
        # The user blocked the bot; nothing to send and nothing to fix.
        logger.info("forbidden: %s", error)
        return
    if isinstance(error, BadRequest):
        text = str(error).lower()
        if "not modified" in text:
            # A double press re-rendered the same content; harmless.
            logger.debug("ignored: %s", error)
            return
        if any(reason in text for reason in STALE_MESSAGE):
            # The button's message was deleted or is too old to edit.
            logger.info("stale message: %s", error)
            await _tell_user(
                update, context, translate(_language(update, context), "callback.stale")
            )
            return
    if isinstance(error, RetryAfter | NetworkError) and not isinstance(error, BadRequest):
        # Already retried by TelegramLimiter; Telegram or the network is having a bad moment.
        logger.warning("telegram unavailable while handling an update: %s", error)
        return
    logger.error("unhandled error while handling an update", exc_info=error)
    await _tell_user(update, context, translate(_language(update, context), "error.internal"))
    await _alert_admin(update, context, error)
    # One apology per update: a failed gate must not let flow handlers run without a user.
    raise ApplicationHandlerStop
