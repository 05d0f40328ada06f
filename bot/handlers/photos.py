"""/photos: the selfies kept for the user, each with a delete button."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session
from telegram import Message, Update

from bot import callbacks as cb
from bot.context import BotContext
from bot.handlers.common import reply
from bot.keyboards import photos_keyboard
from db.models import PhotoKind
from db.repositories.photos import PhotoRepository
from service.blobstore import BlobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfieRow:
    id: int
    added: str
    expires: str
    face_chosen: bool


def _selfies(session: Session, user_id: int) -> list[SelfieRow]:
    return [
        SelfieRow(
            p.id,
            p.created_at.strftime("%Y-%m-%d"),
            p.expires_at.strftime("%Y-%m-%d") if p.expires_at else "—",
            p.selected_face is not None,
        )
        for p in PhotoRepository(session).of_kind(user_id, PhotoKind.SELFIE)
    ]


async def show_photos(update: Update, context: BotContext, *, edit: Message | None = None) -> None:
    """Send (or edit into) the list of kept selfies."""
    rows = await context.db.run(_selfies, context.account.id)
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


def _delete(session: Session, blobs: BlobStore, user_id: int, photo_id: int) -> bool:
    repo = PhotoRepository(session)
    photo = repo.owned(user_id, photo_id, PhotoKind.SELFIE)
    if photo is None:
        return False
    key = photo.sha256
    repo.delete(photo)
    for free in repo.unreferenced([key]):
        blobs.delete(free)
    return True


async def on_delete_photo(update: Update, context: BotContext, data: cb.DeletePhoto) -> None:
    """Delete one selfie (row and bytes) and refresh the list."""
    deleted = await context.db.run(_delete, context.blobs, context.account.id, data.photo_id)
    message = update.callback_query.message
    if deleted:
        logger.info("user %s deleted photo %s", context.account.id, data.photo_id)
    await show_photos(update, context, edit=message if isinstance(message, Message) else None)
