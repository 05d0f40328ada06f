"""High-priority handlers that run before every flow: the update counted, flood control, then
the user's row and ban.

The last two raise `ApplicationHandlerStop` to end processing of an update early, the PTB way."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.constants import ChatType, UpdateType
from telegram.error import TelegramError
from telegram.ext import ApplicationHandlerStop

from bot.context import BotContext
from bot.ratelimit import Verdict
from domain import users
from domain.users import Contact
from telegram_ui.i18n import normalize_language, translate

logger = logging.getLogger(__name__)


def update_kind(update: Update) -> str:
    """What the update carries: `message`, `callback_query`, `edited_message`... (`other`)."""
    for kind in UpdateType:
        if getattr(update, kind.value, None) is not None:
            return str(kind.value)
    return "other"


async def count_update(update: Update, context: BotContext) -> None:
    """Count every update by kind (`facechain_updates_handled_total` on /metrics)."""
    context.deps.metrics.record_update(update_kind(update))


def is_payment(update: Update) -> bool:
    """A checkout question or a payment/refund report: never dropped (money is involved)."""
    message = update.message
    return update.pre_checkout_query is not None or (
        message is not None
        and (message.successful_payment is not None or message.refunded_payment is not None)
    )


async def rate_limit(update: Update, context: BotContext) -> None:
    """Drop a user's updates beyond the per-minute limit, after one "slow down" reply.

    Admins are exempt (they run /broadcast and /stats in bursts), and so are payment updates."""
    user = update.effective_user
    if user is None or user.id in context.config.telegram.admin_ids or is_payment(update):
        return
    limiter = context.deps.rate_limiter
    verdict = limiter.verdict_for(user.id, update.update_id)
    if verdict == Verdict.ALLOW:
        return
    if verdict == Verdict.WARN:
        # No database here: flooding must stay cheap, so the language remembered from the
        # user's last update (their /lang choice) is used, else their client's.
        language = limiter.language_of(user.id) or normalize_language(user.language_code)
        text = translate(language, "error.rate_limited")
        try:
            if update.callback_query is not None:
                await update.callback_query.answer(text, show_alert=False)
            elif update.effective_chat is not None:
                await context.bot.send_message(update.effective_chat.id, text)
        except TelegramError as exc:
            logger.info("slow-down reply to %s failed: %s", user.id, exc)
    elif update.callback_query is not None:
        # Stop the client's spinner even for dropped presses; it is one cheap call.
        try:
            await update.callback_query.answer()
        except TelegramError:
            logger.debug("answer to a dropped callback failed", exc_info=True)
    raise ApplicationHandlerStop


async def load_account(update: Update, context: BotContext) -> None:
    """Load the user's row into the context; stop here for banned users and non-private chats."""
    user = update.effective_user
    chat = update.effective_chat
    if user is None or user.is_bot:
        raise ApplicationHandlerStop
    if chat is not None and chat.type != ChatType.PRIVATE:
        # The bot works in private chats only; groups would leak people's photos.
        raise ApplicationHandlerStop
    contact: Contact = await context.db.run(
        users.touch,
        user.id,
        user.username,
        user.first_name,
        normalize_language(user.language_code),
        # A payment update or a checkout shows the user no reply of ours: the one ban notice
        # waits for an update they can see it answer.
        can_tell=not is_payment(update),
    )
    account = context.loaded_account = contact.user
    context.deps.rate_limiter.remember_language(user.id, normalize_language(account.language))
    context.is_admin = user.id in context.config.telegram.admin_ids
    if account.is_banned and not context.is_admin:
        if update.pre_checkout_query is not None:
            # Answered (refused) at once: Telegram would otherwise wait 10 s and fail it.
            await update.pre_checkout_query.answer(
                ok=False, error_message=context.t("pay.refused.banned")
            )
            context.deps.metrics.precheckouts.labels(outcome="banned").inc()
            raise ApplicationHandlerStop
        if is_payment(update):
            # Paid before the ban (or refunded): the money is accounted for all the same.
            return
        if update.callback_query is not None:
            await update.callback_query.answer()
        if contact.tell_ban and chat is not None:
            await context.bot.send_message(chat.id, context.t("error.banned"))
        logger.info("ignored an update from banned user %s", user.id)
        raise ApplicationHandlerStop
