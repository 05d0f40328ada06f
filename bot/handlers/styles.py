"""The style picker: one photo message edited in place (◀ ▶, categories, "Use this style")."""

from __future__ import annotations

import asyncio
import logging

from telegram import InlineKeyboardMarkup, InputMediaPhoto, Message, Update

from bot.context import BotContext, chat_id_of
from bot.handlers.common import cpu, pressed_message, reply, start_portrait
from bot.images import placeholder_card
from core.errors import SelfieRequired
from domain import conversations, styles
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import (
    category_label,
    style_carousel_keyboard,
    style_categories_keyboard,
)

logger = logging.getLogger(__name__)


async def _cards(context: BotContext, category: str) -> list[styles.StyleCard]:
    return await context.db.run(
        styles.style_cards,
        context.account.id,
        context.language,
        None if category == cb.ALL else category,
    )


async def card_media(context: BotContext, blob: str | None, title: str) -> str | bytes:
    """A Telegram file_id when this blob was uploaded before, else the image bytes."""
    if blob is None:
        data: bytes = await cpu(context, placeholder_card, title)
        return data
    cached = context.deps.file_ids.get(blob)
    if cached is not None:
        return cached
    data = await asyncio.to_thread(context.blobs.get, blob)
    return data


def remember_file_id(context: BotContext, blob: str | None, message: Message | bool) -> None:
    """Cache the file_id Telegram gave an uploaded thumbnail, to send it by id next time."""
    if blob is not None and isinstance(message, Message) and message.photo:
        context.deps.file_ids[blob] = message.photo[-1].file_id


async def show_styles(
    update: Update,
    context: BotContext,
    category: str = cb.ALL,
    index: int = 0,
    *,
    edit: Message | None = None,
) -> None:
    """Send (or edit `edit` into) the carousel at `index` of `category`."""
    lang = context.language
    cards = await _cards(context, category)
    if not cards and category != cb.ALL:
        category, index = cb.ALL, 0
        cards = await _cards(context, category)
    if not cards:
        await reply(update, context, context.t("styles.empty"))
        return
    index %= len(cards)
    card = cards[index]
    caption = context.t(
        "styles.card", name=card.name, category=category_label(lang, card.category)
    )
    markup = style_carousel_keyboard(
        card.id, category, index, len(cards), lang, context.config.miniapp.url
    )
    await show_card(update, context, edit, card.thumbnail_blob, card.name, caption, markup)


async def show_card(
    update: Update,
    context: BotContext,
    edit: Message | None,
    blob: str | None,
    title: str,
    caption: str,
    markup: InlineKeyboardMarkup,
) -> None:
    """Send a carousel card, or turn the existing card message into this one."""
    media = await card_media(context, blob, title)
    sent: Message | bool
    if edit is None:
        sent = await context.bot.send_photo(
            chat_id_of(update), media, caption=caption, reply_markup=markup
        )
    else:
        sent = await edit.edit_media(InputMediaPhoto(media, caption=caption), reply_markup=markup)
    remember_file_id(context, blob, sent)


async def style_command(update: Update, context: BotContext) -> None:
    """/style: open the picker."""
    await show_styles(update, context)


async def on_style_page(update: Update, context: BotContext, data: cb.StylePage) -> None:
    """◀ / ▶ / a category: show another style in the same message."""
    edit = pressed_message(update)
    await show_styles(update, context, data.category, data.index, edit=edit)


async def on_style_categories(
    update: Update, context: BotContext, data: cb.StyleCategories
) -> None:
    """Swap the carousel buttons for the category list (a carousel Telegram no longer shows
    the bot cannot change: that press is stale)."""
    message = pressed_message(update)
    if message is None:
        await reply(update, context, context.t("callback.stale"))
        return
    found = await context.db.run(styles.visible_categories, context.account.id)
    # Only categories that can travel in callback data get a button; their styles stay in "all".
    categories = [c for c in found if cb.is_token(c) and c != cb.ALL]
    await message.edit_reply_markup(style_categories_keyboard(categories, context.language))


async def use_style(update: Update, context: BotContext, style_id: int) -> None:
    """Start a portrait in this style, or remember it until a selfie arrives."""
    try:
        await start_portrait(update, context, style_id)
    except SelfieRequired:
        await context.db.run(conversations.update, context.account.id, pending_style_id=style_id)
        await reply(update, context, context.t("styles.send_selfie_first"))
        return
    await context.db.run(conversations.update, context.account.id, pending_style_id=None)


async def on_use_style(update: Update, context: BotContext, data: cb.UseStyle) -> None:
    """The "Use this style" button."""
    await use_style(update, context, data.style_id)
