"""High-priority handlers that run before every flow: flood control, then the user's row and ban.

Both raise `ApplicationHandlerStop` to end processing of an update early, the PTB way."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session
from telegram import Update
from telegram.constants import ChatType
from telegram.error import TelegramError
from telegram.ext import ApplicationHandlerStop

from bot.context import BotContext
from bot.i18n import normalize_language, translate
from bot.ratelimit import Verdict
from db.models import User
from db.repositories.users import UserRepository

logger = logging.getLogger(__name__)


async def rate_limit(update: Update, context: BotContext) -> None:
    """Drop a user's updates beyond the per-minute limit, after one "slow down" reply.

    Admins are exempt (they run /broadcast and /stats in bursts)."""
    user = update.effective_user
    if user is None or user.id in context.config.telegram.admin_ids:
        return
    verdict = context.deps.rate_limiter.check(user.id)
    if verdict == Verdict.ALLOW:
        return
    if verdict == Verdict.WARN:
        # No database here: flooding must stay cheap, so the client's language is used.
        text = translate(normalize_language(user.language_code), "error.rate_limited")
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


def storable(text: str | None) -> str | None:
    """Text as the database can keep it: PostgreSQL refuses NUL characters in strings."""
    return text.replace("\x00", "") if text else text


def _touch_user(
    session: Session,
    telegram_id: int,
    username: str | None,
    first_name: str | None,
    language_code: str | None,
) -> tuple[User, bool]:
    """Create or refresh the user; also whether a banned user must now be told (once)."""
    user = UserRepository(session).get_or_create(
        telegram_id,
        username=storable(username),
        first_name=storable(first_name),
        language=normalize_language(language_code),
    )
    tell = user.is_banned and not user.ban_notified
    if tell:
        user.ban_notified = True
    session.flush()
    return user, tell


async def load_account(update: Update, context: BotContext) -> None:
    """Load the user's row into the context; stop here for banned users and non-private chats."""
    user = update.effective_user
    chat = update.effective_chat
    if user is None or user.is_bot:
        raise ApplicationHandlerStop
    if chat is not None and chat.type != ChatType.PRIVATE:
        # The bot works in private chats only; groups would leak people's photos.
        raise ApplicationHandlerStop
    account, tell_ban = await context.db.run(
        _touch_user, user.id, user.username, user.first_name, user.language_code
    )
    context.account = account
    context.is_admin = user.id in context.config.telegram.admin_ids
    if account.is_banned and not context.is_admin:
        if update.callback_query is not None:
            await update.callback_query.answer()
        if tell_ban and chat is not None:
            await context.bot.send_message(chat.id, context.t("error.banned"))
        logger.info("ignored an update from banned user %s", user.id)
        raise ApplicationHandlerStop
