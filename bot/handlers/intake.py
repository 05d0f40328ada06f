"""Images the user sends: routed by conversation state to selfie, pose, template or training.

A selfie is checked at once (decode, faces, quality) in a worker thread. One good face: stored
and confirmed, then the style picker (or the style picked earlier starts). Several faces: a
preview with numbered boxes and numbered buttons. Anything else: a reply saying what to send."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.constants import ChatAction

from bot.context import BotContext, chat_id_of, message_of
from bot.handlers import template, training
from bot.handlers.common import (
    IncomingImage,
    cpu,
    download,
    incoming_image,
    pressed_message,
    reply,
    start_portrait,
    subject_faces,
)
from bot.handlers.screening import screen_upload
from bot.handlers.styles import show_styles, use_style
from bot.images import numbered_faces_preview, validate_image
from core.errors import StyleUnavailable
from domain import conversations, photos, safety
from facechain.errors import MultipleFaces
from facechain.imageio import clean_image
from facechain.quality import SelfieAnalysis, analyze_selfie
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import face_choice_keyboard

logger = logging.getLogger(__name__)


async def after_selfie(update: Update, context: BotContext) -> None:
    """A usable selfie exists now: start the style picked earlier, or open the picker."""
    conv = await context.db.run(conversations.load, context.account.id)
    style_id = conv.data.get("pending_style_id")
    if isinstance(style_id, int):
        try:
            await use_style(update, context, style_id)
            return
        except StyleUnavailable:
            await context.db.run(conversations.update, context.account.id, pending_style_id=None)
    await show_styles(update, context)


async def on_selfie(
    update: Update, context: BotContext, image: IncomingImage, data: bytes
) -> None:
    """Check a selfie and store it, or explain what is wrong with it."""
    limits = context.config.limits
    analysis: SelfieAnalysis = await cpu(
        context,
        analyze_selfie,
        data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
        min_face_px=limits.min_face_px,
    )
    try:
        face = analysis.require_single()
    except MultipleFaces:
        await _ask_which_face(update, context, image, data, analysis)
        return
    # NoFace / FaceTooSmall / PoorQuality propagate: the error handler explains them.
    stored: photos.StoredSelfie = await context.db.run(
        photos.store_selfie,
        context.blobs,
        context.account.id,
        data,
        analysis,
        [f.to_record() for f in analysis.faces],
        analysis.faces.index(face),
        image.source,
        limits,
    )
    key = "selfie.duplicate" if stored.duplicate else "selfie.saved"
    await reply(update, context, context.t(key, count=stored.count, max=limits.max_selfies))
    if stored.needs_choice:
        return
    await after_selfie(update, context)


async def _ask_which_face(
    update: Update,
    context: BotContext,
    image: IncomingImage,
    data: bytes,
    analysis: SelfieAnalysis,
) -> None:
    limits = context.config.limits
    subjects = subject_faces(analysis.faces)
    stored: photos.StoredSelfie = await context.db.run(
        photos.store_selfie,
        context.blobs,
        context.account.id,
        data,
        analysis,
        [f.to_record() for f in subjects],
        None,
        image.source,
        limits,
    )
    await context.db.run(
        conversations.update, context.account.id, pending_photo_id=stored.photo_id
    )
    preview: bytes = await cpu(
        context,
        numbered_faces_preview,
        data,
        [f.box for f in subjects],
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    await context.bot.send_photo(
        chat_id_of(update),
        preview,
        caption=context.nt("selfie.choose_face", len(subjects)),
        reply_markup=face_choice_keyboard(stored.photo_id, len(subjects)),
    )


async def on_choose_face(update: Update, context: BotContext, data: cb.ChooseFace) -> None:
    """A numbered button under a group selfie: that face is the user."""
    outcome = await context.db.run(
        photos.choose_face,
        context.account.id,
        data.photo_id,
        data.index,
        context.config.limits.min_face_px,
    )
    if outcome == "stale":
        await reply(update, context, context.t("callback.stale"))
        return
    if outcome == "too_small":
        await reply(update, context, context.t("error.face_too_small"))
        return
    await context.db.run(conversations.update, context.account.id, pending_photo_id=None)
    message = pressed_message(update)
    if message is not None:
        await message.edit_caption(context.t("selfie.face_chosen", n=data.index + 1))
    await after_selfie(update, context)


async def on_pose(update: Update, context: BotContext, image: IncomingImage, data: bytes) -> None:
    """The pose asked for by "Use a pose" (a photo or a ready skeleton map): start with it.

    The gpu worker tells the two apart and turns a photo into a skeleton map."""
    limits = context.config.limits
    await cpu(
        context,
        validate_image,
        data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    conv = await context.db.run(conversations.load, context.account.id)
    style_id = conv.data.get("pose_style_id")
    await context.db.run(conversations.update, context.account.id, end_flow=True)
    if not isinstance(style_id, int):
        await reply(update, context, context.t("callback.stale"))
        return
    # Stored by the job's own transaction: a refused job (a job already running, the quota,
    # the day's upload bytes) leaves no blob behind.
    await start_portrait(update, context, style_id, pose=data)


def _upload_kind(state: conversations.State) -> safety.Kind:
    """What an upload is, from the flow the user is in (as `on_image` routes it)."""
    if state is conversations.State.AWAIT_POSE:
        return "pose"
    if state in (conversations.State.AWAIT_TEMPLATE_PHOTO, conversations.State.TEMPLATE_FACES):
        return "template_photo"
    if state is conversations.State.TRAIN_IMAGES:
        return "training"
    return "selfie"


async def on_image(update: Update, context: BotContext) -> None:
    """Any photo or document: check it, then hand it to the flow the user is in."""
    message = message_of(update)
    image = incoming_image(message)
    limits = context.config.limits
    if image is None:
        await reply(update, context, context.t("error.not_an_image"))
        return
    if image.file_size is not None and image.file_size > limits.max_upload_bytes:
        await reply(update, context, context.t("error.image_too_large"))
        return
    conv = await context.db.run(conversations.load, context.account.id)
    if conv.state in training.TEXT_STATES:
        await training.remind(update, context, conv)
        return
    await context.bot.send_chat_action(chat_id_of(update), ChatAction.TYPING)
    # Every picture is stored without its metadata (EXIF with GPS, XMP): selfies as photos or
    # files, pose photos, template photos and training images alike.
    data = await cpu(
        context,
        clean_image,
        await download(context, image),
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    # The safety check, before anything of the picture is stored or queued.
    await screen_upload(context, data, _upload_kind(conv.state))
    if conv.state is conversations.State.AWAIT_POSE:
        await on_pose(update, context, image, data)
    elif conv.state in (
        conversations.State.AWAIT_TEMPLATE_PHOTO,
        conversations.State.TEMPLATE_FACES,
    ):
        await template.on_template_photo(update, context, image, data)
    elif conv.state is conversations.State.TRAIN_IMAGES:
        await training.on_training_image(update, context, image, data)
    else:
        await on_selfie(update, context, image, data)
