"""/start, /help, /lang and /cancel."""

from __future__ import annotations

import logging

from telegram import MenuButtonWebApp, Update, WebAppInfo
from telegram.error import TelegramError

from bot.context import BotContext, chat_id_of, user_of
from bot.handlers import payments
from bot.handlers.common import edit_or_reply, reply
from domain import conversations, users
from telegram_ui import callbacks as cb
from telegram_ui.i18n import LANGUAGES
from telegram_ui.keyboards import language_keyboard

logger = logging.getLogger(__name__)


async def set_menu_button(update: Update, context: BotContext) -> None:
    """With the Mini App configured, this chat's menu button opens it, labelled in the user's
    language (the bot-wide default set at start is English); best effort."""
    url = context.config.miniapp.url
    if not url:
        return
    button = MenuButtonWebApp(context.t("miniapp.menu"), WebAppInfo(url))
    try:
        await context.bot.set_chat_menu_button(chat_id_of(update), button)
    except TelegramError as exc:
        logger.info("menu button of chat %s not set: %s", chat_id_of(update), exc)


async def start(update: Update, context: BotContext) -> None:
    """Greet and explain the three steps; `/start buy` (a forwarded invoice's link, or a link an
    operator shares) then shows the packs on sale."""
    name = context.account.first_name or user_of(update).first_name or ""
    await reply(update, context, context.t("start.welcome", name=name))
    await set_menu_button(update, context)
    if context.config.payments.enabled and context.args == [payments.BUY_START_PARAMETER]:
        await payments.show_packs(update, context)


async def help_command(update: Update, context: BotContext) -> None:
    """List what the bot can do."""
    text = context.t("help.text")
    paid = context.config.payments.enabled
    if paid:
        text += "\n\n" + context.t("help.payments")
    if context.is_admin:
        text += "\n\n" + context.t("help.admin")
        if paid:
            text += "\n" + context.t("help.admin_payments")
    await reply(update, context, text)


async def lang_command(update: Update, context: BotContext) -> None:
    """Offer the supported languages."""
    await reply(
        update, context, context.t("lang.choose"), reply_markup=language_keyboard(context.language)
    )


async def on_set_language(update: Update, context: BotContext, data: cb.SetLanguage) -> None:
    """Store the chosen language and confirm in it."""
    if data.language not in LANGUAGES:
        await reply(update, context, context.t("callback.stale"))
        return
    await context.db.run(users.set_language, context.account.id, data.language)
    context.account.language = data.language
    await edit_or_reply(
        update, context, context.t("lang.changed"), reply_markup=language_keyboard(data.language)
    )
    await set_menu_button(update, context)


async def cancel_command(update: Update, context: BotContext) -> None:
    """Leave whatever multi-step flow the user is in."""
    before = await context.db.run(conversations.load, context.account.id)
    await context.db.run(
        conversations.update, context.account.id, end_flow=True, pending_style_id=None
    )
    key = "cancel.done" if before.state is not conversations.State.IDLE else "cancel.nothing"
    await reply(update, context, context.t(key))
