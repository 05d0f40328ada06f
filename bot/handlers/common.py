"""Helpers shared by several flows: replying, starting a job, downloading the user's image."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from telegram import Message, Update

from bot.context import BotContext, chat_id_of, query_of
from domain import jobs, photos
from facechain.faces import BACKGROUND_FACE_RATIO, Face
from telegram_ui.keyboards import cancel_job_keyboard

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic")


async def reply(update: Update, context: BotContext, text: str, **kwargs: Any) -> Message:
    """Send a message to the update's chat (works for messages and button presses alike)."""
    return await context.bot.send_message(chat_id_of(update), text, **kwargs)


def pressed_message(update: Update) -> Message | None:
    """The message whose button was pressed, or None when Telegram no longer shows it to the
    bot (deleted or too old, sent with `date` 0, which PTB parses into a `Message` all the
    same, or an `InaccessibleMessage`): it cannot be edited, only answered with a new one."""
    message = query_of(update).message
    if isinstance(message, Message) and message.is_accessible:
        return message
    return None


async def edit_or_reply(update: Update, context: BotContext, text: str, **kwargs: Any) -> None:
    """Turn the pressed button's message into `text`, or send `text` if it is inaccessible."""
    message = pressed_message(update)
    if message is None:
        await reply(update, context, text, **kwargs)
    else:
        await message.edit_text(text, **kwargs)


async def announce_and_dispatch(
    update: Update, context: BotContext, created: jobs.CreatedJob
) -> None:
    """Send the job's status message (queue position, estimate, Cancel), then release the job
    to the workers (if the broker is down, the sweep publishes it later).

    A replayed update (the bot died while handling it) finds the job it created: the status
    message is sent only if that run never got to it, and the job released with it."""
    if created.replayed and created.status_message_id is not None:
        return
    message = await reply(
        update,
        context,
        context.nt("job.queued", created.eta_minutes, position=created.position + 1),
        reply_markup=cancel_job_keyboard(created.job_id, context.language),
    )
    await context.transact(jobs.release_job, created.job_id, message.message_id)


async def start_portrait(
    update: Update,
    context: BotContext,
    style_id: int,
    *,
    pose: bytes | None = None,
) -> jobs.CreatedJob:
    """Create, announce and dispatch a portrait job (typed errors reach the error handler);
    a pose photo is stored by the job's transaction, once the job is accepted."""
    created = await context.db.run(
        jobs.create_portrait_job,
        context.account.id,
        style_id=style_id,
        chat_id=chat_id_of(update),
        update_id=update.update_id,
        limits=context.config.limits,
        is_admin=context.is_admin,
        payments=context.config.payments,
        num_images=context.config.engine.num_images,
        pose=jobs.PoseUpload(context.blobs, pose) if pose is not None else None,
    )
    logger.info("user %s started portrait job %s", context.account.id, created.job_id)
    await announce_and_dispatch(update, context, created)
    return created


def subject_faces(faces: list[Face]) -> list[Face]:
    """The faces a user may mean (bystanders far smaller than the largest face left out)."""
    if not faces:
        return []
    largest = max(f.size for f in faces)
    return [f for f in faces if f.size >= BACKGROUND_FACE_RATIO * largest]


@dataclass(frozen=True)
class IncomingImage:
    """An image the user sent, before download."""

    file_id: str
    file_unique_id: str
    file_size: int | None

    @property
    def source(self) -> photos.TelegramFile:
        """Telegram's ids of the upload, as stored with the photo."""
        return photos.TelegramFile(self.file_id, self.file_unique_id)


def incoming_image(message: Message) -> IncomingImage | None:
    """The image in a photo or document message; None if the document is not an image."""
    if message.photo:
        size = message.photo[-1]  # Telegram lists sizes small to large
        return IncomingImage(size.file_id, size.file_unique_id, size.file_size)
    document = message.document
    if document is None:
        return None
    mime = (document.mime_type or "").lower()
    name = (document.file_name or "").lower()
    if mime.startswith("image/") or name.endswith(IMAGE_EXTENSIONS):
        return IncomingImage(document.file_id, document.file_unique_id, document.file_size)
    return None


async def download(context: BotContext, image: IncomingImage) -> bytes:
    """The file's bytes from Telegram."""
    tg_file = await context.bot.get_file(image.file_id)
    return bytes(await tg_file.download_as_bytearray())


async def cpu(context: BotContext, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run CPU-heavy work in a thread, at most one per core at a time."""
    async with context.deps.cpu_slots:
        return await asyncio.to_thread(fn, *args, **kwargs)
