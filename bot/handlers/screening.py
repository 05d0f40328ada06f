"""The safety check of every picture a user sends, before anything of it is stored or queued.

`screen_upload` is the one function the upload handlers call (selfies, pose photos, template
photos, training images). A flagged picture is refused with a translated reason (`UnsafeImage`,
answered by the error handler); nothing of it is kept: no blob, no row, only an audit entry with
its score. The checker runs in the screen's own process (`core.safety`), never in the bot's."""

from __future__ import annotations

import logging

from telegram.error import TelegramError

from bot.context import BotContext
from bot.handlers.common import cpu
from core.errors import UnsafeImage
from core.safety import Screened
from domain import safety
from telegram_ui.i18n import safety_alert_text

logger = logging.getLogger(__name__)


async def screen_upload(context: BotContext, data: bytes, kind: safety.Kind) -> None:
    """Check one upload (decoded and cleaned bytes); raises UnsafeImage when it is flagged."""
    screen = context.deps.screen
    if screen is None:
        return
    verdict: Screened = await cpu(context, screen.check, data)
    context.deps.metrics.record_safety(kind, checked=1, flagged=int(verdict.flagged))
    if not verdict.flagged:
        return
    user_id = context.account.id if context.account is not None else None
    flagged: safety.Flagged = await context.transact(
        safety.record_flagged,
        user_id,
        kind,
        [verdict.score],
        context.config.safety.alert_after,
    )
    admin_chat = context.config.telegram.admin_chat_id
    if flagged.alert and admin_chat is not None and user_id is not None:
        try:
            await context.bot.send_message(
                admin_chat, safety_alert_text(user_id, flagged.recent, kind)
            )
        except TelegramError as exc:
            logger.warning("safety alert not sent to the admin chat: %s", exc)
    raise UnsafeImage(f"a {kind} upload was flagged by the safety checker", kind=kind)
