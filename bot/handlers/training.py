"""/train_style: collect images, ask a name and a trigger word, confirm, run a training job.

Allowed for admins, TELEGRAM_TRAINER_IDS and users with `can_train`. When the job is done the
new style (owned by the user) appears in their picker."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from sqlalchemy.orm import Session
from telegram import Message, Update

from bot import callbacks as cb
from bot import jobs, sessions
from bot.context import BotContext
from bot.handlers.common import IncomingImage, announce_and_dispatch, cpu, reply
from bot.images import validate_image
from bot.keyboards import train_confirm_keyboard
from db.base import utcnow
from db.models import Photo, PhotoKind
from db.repositories.photos import PhotoRepository
from db.repositories.styles import StyleTrainingRepository
from service.blobstore import BlobStore, sha256_hex
from service.settings import LimitsSettings

logger = logging.getLogger(__name__)

TEXT_STATES = frozenset(
    {sessions.State.TRAIN_NAME, sessions.State.TRAIN_TRIGGER, sessions.State.TRAIN_CONFIRM}
)
TRIGGER = re.compile(r"^[a-z0-9_]{2,32}$")
MAX_NAME = 64


def may_train(context: BotContext) -> bool:
    """Admins, configured trainers and users an admin allowed."""
    tg_id = context.account.telegram_id
    return (
        context.is_admin
        or tg_id in context.config.telegram.trainer_ids
        or bool(context.account.can_train)
    )


def _discard_images(
    session: Session, blobs: BlobStore, user_id: int, photo_ids: list[int]
) -> None:
    """Forget collected training images the user abandoned."""
    repo = PhotoRepository(session)
    keys = []
    for pid in photo_ids:
        photo = repo.owned(user_id, pid, PhotoKind.TRAINING)
        if photo is not None:
            keys.append(photo.sha256)
            session.delete(photo)
    session.flush()
    for key in repo.unreferenced(keys):
        blobs.delete(key)


async def train_command(update: Update, context: BotContext) -> None:
    """Start collecting style images."""
    if not may_train(context):
        await reply(update, context, context.t("error.training_not_allowed"))
        return
    conv = await context.db.run(sessions.load, context.account.id)
    old = list(conv.data.get("train_photo_ids", []))
    if old:
        await context.db.run(_discard_images, context.blobs, context.account.id, old)
    await context.db.run(
        sessions.update,
        context.account.id,
        sessions.State.TRAIN_IMAGES,
        end_flow=True,
        train_photo_ids=[],
    )
    limits = context.config.limits
    await reply(
        update,
        context,
        context.t(
            "training.start", min=limits.training_min_images, max=limits.training_max_images
        ),
    )


def _add_image(
    session: Session,
    blobs: BlobStore,
    user_id: int,
    data: bytes,
    size: tuple[int, int],
    image: IncomingImage,
    limits: LimitsSettings,
) -> int | None:
    """Store one training image and append it to the session; None when the set is full."""
    conv = sessions.update(session, user_id)  # takes the row lock before reading the list
    ids = list(conv.data.get("train_photo_ids", []))
    if len(ids) >= limits.training_max_images:
        return None
    repo = PhotoRepository(session)
    existing = repo.by_sha(user_id, PhotoKind.TRAINING, sha256_hex(data))
    if existing is not None and existing.id in ids:
        return len(ids)
    photo = repo.add(
        Photo(
            user_id=user_id,
            kind=PhotoKind.TRAINING,
            telegram_file_id=image.file_id,
            telegram_file_unique_id=image.file_unique_id,
            sha256=blobs.put(data),
            size_bytes=len(data),
            width=size[0],
            height=size[1],
            faces=[],
            expires_at=utcnow() + timedelta(days=limits.selfie_retention_days),
        )
    )
    ids.append(photo.id)
    sessions.update(session, user_id, train_photo_ids=ids)
    return len(ids)


async def on_training_image(
    update: Update, context: BotContext, image: IncomingImage, data: bytes
) -> None:
    """One more style image."""
    limits = context.config.limits
    size = await cpu(
        context,
        validate_image,
        data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    count = await context.db.run(
        _add_image, context.blobs, context.account.id, data, size, image, limits
    )
    if count is None:
        await reply(update, context, context.t("training.full", max=limits.training_max_images))
        return
    await reply(
        update,
        context,
        context.t("training.received", count=count, min=limits.training_min_images),
    )


async def done_command(update: Update, context: BotContext) -> None:
    """/done: stop collecting images and ask for the style's name."""
    conv = await context.db.run(sessions.load, context.account.id)
    if conv.state is not sessions.State.TRAIN_IMAGES:
        await reply(update, context, context.t("training.not_collecting"))
        return
    count = len(conv.data.get("train_photo_ids", []))
    minimum = context.config.limits.training_min_images
    if count < minimum:
        await reply(update, context, context.t("training.need_more", min=minimum, count=count))
        return
    await context.db.run(sessions.update, context.account.id, sessions.State.TRAIN_NAME)
    await reply(update, context, context.t("training.ask_name"))


async def remind(update: Update, context: BotContext, conv: sessions.Conversation) -> None:
    """Repeat what the training flow expects right now."""
    key = {
        sessions.State.TRAIN_NAME: "training.ask_name",
        sessions.State.TRAIN_TRIGGER: "training.ask_trigger",
        sessions.State.TRAIN_CONFIRM: "training.press_confirm",
    }[conv.state]
    await reply(update, context, context.t(key))


def _name_taken(session: Session, user_id: int, name: str) -> bool:
    return StyleTrainingRepository(session).name_taken(user_id, name)


async def on_training_text(
    update: Update, context: BotContext, conv: sessions.Conversation
) -> None:
    """The name, then the trigger word."""
    text = (update.effective_message.text or "").replace("\x00", "").strip()
    if conv.state is sessions.State.TRAIN_NAME:
        if not 1 <= len(text) <= MAX_NAME:
            await reply(update, context, context.t("training.bad_name", max=MAX_NAME))
            return
        if await context.db.run(_name_taken, context.account.id, text):
            await reply(update, context, context.t("training.name_taken"))
            return
        await context.db.run(
            sessions.update, context.account.id, sessions.State.TRAIN_TRIGGER, train_name=text
        )
        await reply(update, context, context.t("training.ask_trigger"))
    elif conv.state is sessions.State.TRAIN_TRIGGER:
        trigger = text.lower()
        if not TRIGGER.match(trigger):
            await reply(update, context, context.t("training.bad_trigger"))
            return
        conv = await context.db.run(
            sessions.update,
            context.account.id,
            sessions.State.TRAIN_CONFIRM,
            train_trigger=trigger,
        )
        await reply(
            update,
            context,
            context.t(
                "training.confirm",
                name=conv.data.get("train_name", ""),
                trigger=trigger,
                count=len(conv.data.get("train_photo_ids", [])),
            ),
            reply_markup=train_confirm_keyboard(context.language),
        )
    else:
        await remind(update, context, conv)


async def on_train_confirm(update: Update, context: BotContext, data: cb.TrainConfirm) -> None:
    """Start the training, or drop the collected images."""
    conv = await context.db.run(sessions.load, context.account.id)
    message = update.callback_query.message
    if conv.state is not sessions.State.TRAIN_CONFIRM or data.answer not in ("yes", "no"):
        await reply(update, context, context.t("callback.stale"))
        return
    if isinstance(message, Message):
        await message.edit_reply_markup(None)
    photo_ids = [int(i) for i in conv.data.get("train_photo_ids", [])]
    if data.answer == "no":
        await context.db.run(_discard_images, context.blobs, context.account.id, photo_ids)
        await context.db.run(sessions.update, context.account.id, end_flow=True)
        await reply(update, context, context.t("training.cancelled"))
        return
    created = await context.db.run(
        jobs.create_training_job,
        context.account.id,
        name=str(conv.data.get("train_name", "")),
        trigger_word=str(conv.data.get("train_trigger", "")),
        photo_ids=photo_ids,
        chat_id=update.effective_chat.id,
        limits=context.config.limits,
        is_admin=context.is_admin,
    )
    await context.db.run(sessions.update, context.account.id, end_flow=True)
    logger.info("user %s started training job %s", context.account.id, created.job_id)
    await reply(update, context, context.t("training.started"))
    await announce_and_dispatch(update, context, created)
