"""/subject: who the portraits show (auto = FairFace on the selfie, or the user's own choice)."""

from __future__ import annotations

import logging

from telegram import Update

from bot.context import BotContext
from bot.handlers.common import edit_or_reply, reply
from domain import users
from facechain.prompts import is_subject
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import AUTO_SUBJECT, subject_keyboard, subject_label

logger = logging.getLogger(__name__)


async def subject_command(update: Update, context: BotContext) -> None:
    """Show the choices, the current one marked."""
    current = context.account.subject
    await reply(
        update,
        context,
        context.t("subject.choose", current=subject_label(context.language, current)),
        reply_markup=subject_keyboard(current, context.language),
    )


async def on_set_subject(update: Update, context: BotContext, data: cb.SetSubject) -> None:
    """Store the choice (`auto` clears it) and confirm in the user's language."""
    if data.subject != AUTO_SUBJECT and not is_subject(data.subject):
        # Well-formed but not a choice we offer: forged or from an older keyboard.
        logger.info("rejected subject %r from user %s", data.subject, context.account.id)
        await reply(update, context, context.t("callback.stale"))
        return
    subject = None if data.subject == AUTO_SUBJECT else data.subject
    await context.db.run(users.set_subject, context.account.id, subject)
    context.account.subject = subject
    await edit_or_reply(
        update,
        context,
        context.t("subject.changed", choice=subject_label(context.language, subject)),
        reply_markup=subject_keyboard(subject, context.language),
    )
