"""/train_style: collect images, ask a name and a trigger word, confirm, run a training job.

Allowed for admins, TELEGRAM_TRAINER_IDS and users with `can_train`. When the job is done the
new style (owned by the user) appears in their picker."""

from __future__ import annotations

import logging

from telegram import Update

from bot.context import BotContext, chat_id_of, message_of
from bot.handlers.common import IncomingImage, announce_and_dispatch, cpu, pressed_message, reply
from bot.images import validate_image
from domain import conversations, jobs, photos, trainings, users
from domain.trainings import MAX_NAME
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import train_confirm_keyboard

logger = logging.getLogger(__name__)

TEXT_STATES = frozenset(
    {
        conversations.State.TRAIN_NAME,
        conversations.State.TRAIN_TRIGGER,
        conversations.State.TRAIN_CONFIRM,
    }
)


def may_train(context: BotContext) -> bool:
    """Admins, configured trainers and users an admin allowed."""
    return users.may_train(
        context.account,
        is_admin=context.is_admin,
        trainer_ids=context.config.telegram.trainer_ids,
    )


async def train_command(update: Update, context: BotContext) -> None:
    """Start collecting style images."""
    if not may_train(context):
        await reply(update, context, context.t("error.training_not_allowed"))
        return
    conv = await context.db.run(conversations.load, context.account.id)
    old = list(conv.data.get("train_photo_ids", []))
    if old:
        await context.db.run(
            photos.discard_training_images, context.blobs, context.account.id, old
        )
    await context.db.run(
        conversations.update,
        context.account.id,
        conversations.State.TRAIN_IMAGES,
        end_flow=True,
        train_photo_ids=[],
    )
    limits = context.config.limits
    await reply(
        update,
        context,
        context.nt("training.start", limits.training_max_images, min=limits.training_min_images),
    )


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
        photos.add_training_image,
        context.blobs,
        context.account.id,
        data,
        size,
        image.source,
        limits,
    )
    if count is None:
        await reply(update, context, context.nt("training.full", limits.training_max_images))
        return
    await reply(
        update,
        context,
        context.t("training.received", count=count, min=limits.training_min_images),
    )


async def done_command(update: Update, context: BotContext) -> None:
    """/done: stop collecting images and ask for the style's name."""
    conv = await context.db.run(conversations.load, context.account.id)
    if conv.state is not conversations.State.TRAIN_IMAGES:
        await reply(update, context, context.t("training.not_collecting"))
        return
    count = len(conv.data.get("train_photo_ids", []))
    minimum = context.config.limits.training_min_images
    if count < minimum:
        await reply(update, context, context.nt("training.need_more", minimum, sent=count))
        return
    await context.db.run(conversations.update, context.account.id, conversations.State.TRAIN_NAME)
    await reply(update, context, context.t("training.ask_name"))


async def remind(update: Update, context: BotContext, conv: conversations.Conversation) -> None:
    """Repeat what the training flow expects right now."""
    key = {
        conversations.State.TRAIN_NAME: "training.ask_name",
        conversations.State.TRAIN_TRIGGER: "training.ask_trigger",
        conversations.State.TRAIN_CONFIRM: "training.press_confirm",
    }[conv.state]
    await reply(update, context, context.t(key))


async def on_training_text(
    update: Update, context: BotContext, conv: conversations.Conversation
) -> None:
    """The name, then the trigger word."""
    text = (message_of(update).text or "").replace("\x00", "").strip()
    if conv.state is conversations.State.TRAIN_NAME:
        if not trainings.valid_name(text):
            await reply(update, context, context.nt("training.bad_name", MAX_NAME))
            return
        if await context.db.run(trainings.name_taken, context.account.id, text):
            await reply(update, context, context.t("training.name_taken"))
            return
        await context.db.run(
            conversations.update,
            context.account.id,
            conversations.State.TRAIN_TRIGGER,
            train_name=text,
        )
        await reply(update, context, context.t("training.ask_trigger"))
    elif conv.state is conversations.State.TRAIN_TRIGGER:
        trigger = text.lower()
        if not trainings.valid_trigger(trigger):
            await reply(update, context, context.t("training.bad_trigger"))
            return
        conv = await context.db.run(
            conversations.update,
            context.account.id,
            conversations.State.TRAIN_CONFIRM,
            train_trigger=trigger,
        )
        await reply(
            update,
            context,
            context.nt(
                "training.confirm",
                len(conv.data.get("train_photo_ids", [])),
                name=conv.data.get("train_name", ""),
                trigger=trigger,
            ),
            reply_markup=train_confirm_keyboard(context.language),
        )
    else:
        await remind(update, context, conv)


async def on_train_confirm(update: Update, context: BotContext, data: cb.TrainConfirm) -> None:
    """Start the training, or drop the collected images."""
    conv = await context.db.run(conversations.load, context.account.id)
    message = pressed_message(update)
    if conv.state is not conversations.State.TRAIN_CONFIRM or data.answer not in ("yes", "no"):
        await reply(update, context, context.t("callback.stale"))
        return
    if message is not None:
        await message.edit_reply_markup(None)
    photo_ids = [int(i) for i in conv.data.get("train_photo_ids", [])]
    if data.answer == "no":
        await context.db.run(
            photos.discard_training_images, context.blobs, context.account.id, photo_ids
        )
        await context.db.run(conversations.update, context.account.id, end_flow=True)
        await reply(update, context, context.t("training.cancelled"))
        return
    created = await context.db.run(
        jobs.create_training_job,
        context.account.id,
        name=str(conv.data.get("train_name", "")),
        trigger_word=str(conv.data.get("train_trigger", "")),
        photo_ids=photo_ids,
        chat_id=chat_id_of(update),
        update_id=update.update_id,
        limits=context.config.limits,
        is_admin=context.is_admin,
    )
    await context.db.run(conversations.update, context.account.id, end_flow=True)
    logger.info("user %s started training job %s", context.account.id, created.job_id)
    await reply(update, context, context.t("training.started"))
    await announce_and_dispatch(update, context, created)
