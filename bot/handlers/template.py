"""/template: a catalog template (same carousel as styles) or the user's own photo, whose
faces are replaced by the user's; with several faces the user picks which (one or more)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from telegram import Message, Update

from bot.context import BotContext, chat_id_of
from bot.handlers.common import IncomingImage, announce_and_dispatch, cpu, pressed_message, reply
from bot.handlers.styles import show_card
from bot.images import numbered_faces_preview
from domain import conversations, jobs, photos, templates
from facechain.templates import TemplateAnalysis, analyze_template
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import template_carousel_keyboard, template_faces_keyboard

logger = logging.getLogger(__name__)


async def show_templates(
    update: Update, context: BotContext, index: int = 0, *, edit: Message | None = None
) -> None:
    """Send (or edit into) the template carousel; with no catalog, ask for the user's own."""
    lang = context.language
    cards = await context.db.run(templates.template_cards, context.account.id, lang)
    if not cards:
        await context.db.run(
            conversations.update,
            context.account.id,
            conversations.State.AWAIT_TEMPLATE_PHOTO,
            end_flow=True,
        )
        await reply(update, context, context.t("template.send_own"))
        return
    index %= len(cards)
    card = cards[index]
    caption = context.t("template.card", name=card.name, faces=card.faces)
    markup = template_carousel_keyboard(card.id, cb.ALL, index, len(cards), lang)
    await show_card(update, context, edit, card.thumbnail_blob, card.name, caption, markup)


async def template_command(update: Update, context: BotContext) -> None:
    """/template: needs a selfie first, then shows the catalog."""
    if not await context.db.run(photos.has_usable_selfie, context.account.id):
        await reply(update, context, context.t("error.selfie_required"))
        return
    await show_templates(update, context)


async def on_template_page(update: Update, context: BotContext, data: cb.TemplatePage) -> None:
    """◀ / ▶ in the template carousel."""
    await show_templates(update, context, data.index, edit=pressed_message(update))


async def on_own_template(update: Update, context: BotContext, data: cb.OwnTemplate) -> None:
    """The "My own photo" button: the next image is the template."""
    await context.db.run(
        conversations.update,
        context.account.id,
        conversations.State.AWAIT_TEMPLATE_PHOTO,
        end_flow=True,
    )
    await reply(update, context, context.t("template.send_own"))


async def start_template(
    update: Update,
    context: BotContext,
    faces: list[int],
    *,
    template_id: int | None = None,
    template_photo_id: int | None = None,
) -> None:
    """Create, announce and dispatch a template job for these 0-based faces."""
    created = await context.db.run(
        jobs.create_template_job,
        context.account.id,
        faces=faces,
        chat_id=chat_id_of(update),
        update_id=update.update_id,
        limits=context.config.limits,
        is_admin=context.is_admin,
        payments=context.config.payments,
        template_id=template_id,
        template_photo_id=template_photo_id,
    )
    await context.db.run(conversations.update, context.account.id, end_flow=True)
    logger.info("user %s started template job %s", context.account.id, created.job_id)
    await announce_and_dispatch(update, context, created)


async def _ask_faces(
    update: Update,
    context: BotContext,
    image: bytes,
    boxes: list[Any],
    *,
    template_id: int | None = None,
    template_photo_id: int | None = None,
) -> None:
    limits = context.config.limits
    nonce = random.randrange(1, 10**9)
    await context.db.run(
        conversations.update,
        context.account.id,
        conversations.State.TEMPLATE_FACES,
        end_flow=True,
        template_id=template_id,
        template_photo_id=template_photo_id,
        template_faces=len(boxes),
        selected_faces=[],
        nonce=nonce,
    )
    preview: bytes = await cpu(
        context,
        numbered_faces_preview,
        image,
        boxes,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    await context.bot.send_photo(
        chat_id_of(update),
        preview,
        caption=context.nt("template.choose_faces", len(boxes)),
        reply_markup=template_faces_keyboard(len(boxes), [], context.language, nonce),
    )


async def on_use_template(update: Update, context: BotContext, data: cb.UseTemplate) -> None:
    """The "Use this template" button: one face starts at once, several ask which."""
    blob, boxes = await context.db.run(
        templates.template_faces, context.account.id, data.template_id
    )
    if not boxes:
        await reply(update, context, context.t("template.no_faces"))
        return
    if len(boxes) == 1:
        await start_template(update, context, [0], template_id=data.template_id)
        return
    image: bytes = await asyncio.to_thread(context.blobs.get, blob)
    await _ask_faces(update, context, image, boxes, template_id=data.template_id)


async def on_template_photo(
    update: Update, context: BotContext, image: IncomingImage, data: bytes
) -> None:
    """The user's own template photo: find its faces, then start or ask which."""
    limits = context.config.limits
    analysis: TemplateAnalysis = await cpu(
        context,
        analyze_template,
        data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    if not analysis.faces:
        await reply(update, context, context.t("template.no_faces"))
        return
    photo_id, boxes = await context.db.run(
        photos.store_template_photo,
        context.blobs,
        context.account.id,
        data,
        analysis,
        image.source,
        limits,
    )
    if len(boxes) == 1:
        await start_template(update, context, [0], template_photo_id=photo_id)
        return
    await _ask_faces(update, context, data, boxes, template_photo_id=photo_id)


async def on_toggle_face(update: Update, context: BotContext, data: cb.ToggleTemplateFace) -> None:
    """Select or deselect one face of the pending template (not on a preview Telegram no longer
    shows the bot: the choice could not be shown, so that press is stale)."""
    message = pressed_message(update)
    if message is None:
        await reply(update, context, context.t("callback.stale"))
        return
    count, selected = await context.db.run(
        conversations.toggle_template_face, context.account.id, data.nonce, data.index
    )
    if not count:
        await reply(update, context, context.t("callback.stale"))
        return
    await message.edit_reply_markup(
        template_faces_keyboard(count, selected, context.language, data.nonce)
    )


async def on_start_template(update: Update, context: BotContext, data: cb.StartTemplate) -> None:
    """The ▶ Start button: run the pending template with the selected faces."""
    conv = await context.db.run(conversations.load, context.account.id)
    if not conversations.template_pending(conv, data.nonce):
        await reply(update, context, context.t("callback.stale"))
        return
    selected = [int(i) for i in conv.data.get("selected_faces", [])]
    if not selected:
        await reply(update, context, context.t("template.pick_one"))
        return
    await start_template(
        update,
        context,
        selected,
        template_id=conv.data.get("template_id"),
        template_photo_id=conv.data.get("template_photo_id"),
    )
    message = pressed_message(update)
    if message is not None:
        await message.edit_reply_markup(None)
