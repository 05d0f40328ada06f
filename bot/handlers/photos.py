"""/photos: the selfies kept for the user, each with a delete button."""

from __future__ import annotations

import logging

from telegram import Message, Update

from bot.context import BotContext
from bot.handlers.common import pressed_message, reply
from domain import photos
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import photos_keyboard

logger = logging.getLogger(__name__)


async def show_photos(update: Update, context: BotContext, *, edit: Message | None = None) -> None:
    """Send (or edit into) the list of kept selfies."""
    rows = await context.db.run(photos.selfie_rows, context.account.id)
    if not rows:
        text = context.t("photos.empty")
        markup = None
    else:
        lines = [context.t("photos.title", count=len(rows), max=context.config.limits.max_selfies)]
        for n, row in enumerate(rows, start=1):
            key = "photos.row" if row.face_chosen else "photos.row_pending"
            lines.append(context.t(key, n=n, added=row.added, expires=row.expires))
        text = "\n".join(lines)
        markup = photos_keyboard([r.id for r in rows], context.language)
    if edit is None:
        await reply(update, context, text, reply_markup=markup)
    else:
        await edit.edit_text(text, reply_markup=markup)


async def photos_command(update: Update, context: BotContext) -> None:
    """/photos."""
    await show_photos(update, context)


async def on_delete_photo(update: Update, context: BotContext, data: cb.DeletePhoto) -> None:
    """Delete one selfie (row and bytes) and refresh the list."""
    deleted = await context.db.run(
        photos.delete_selfie, context.blobs, context.account.id, data.photo_id
    )
    message = pressed_message(update)
    if deleted:
        logger.info("user %s deleted photo %s", context.account.id, data.photo_id)
    await show_photos(update, context, edit=message)
