"""The one CallbackQueryHandler: parse strictly, answer at once, then run the flow's handler.

Forged, stale or malformed data gets a polite answer and never reaches a flow handler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import Update

from bot.context import BotContext, query_of, user_of
from bot.handlers import (
    intake,
    payments,
    photos,
    privacy,
    results,
    start,
    styles,
    subject,
    template,
    training,
)
from telegram_ui import callbacks as cb

logger = logging.getLogger(__name__)

Handler = Callable[[Update, BotContext, Any], Awaitable[None]]


async def _noop(update: Update, context: BotContext, data: cb.Noop) -> None:
    """Label buttons do nothing (the press was already answered)."""


ROUTES: dict[type[cb.CallbackData], Handler] = {
    cb.SetLanguage: start.on_set_language,
    cb.SetSubject: subject.on_set_subject,
    cb.ChooseFace: intake.on_choose_face,
    cb.StylePage: styles.on_style_page,
    cb.StyleCategories: styles.on_style_categories,
    cb.UseStyle: styles.on_use_style,
    cb.CancelJob: results.on_cancel_job,
    cb.MoreLikeThis: results.on_more_like_this,
    cb.AnotherStyle: results.on_another_style,
    cb.UsePose: results.on_use_pose,
    cb.Upscale: results.on_upscale,
    cb.HistoryPage: results.on_history_page,
    cb.HistoryShow: results.on_history_show,
    cb.DeletePhoto: photos.on_delete_photo,
    cb.TemplatePage: template.on_template_page,
    cb.UseTemplate: template.on_use_template,
    cb.OwnTemplate: template.on_own_template,
    cb.ToggleTemplateFace: template.on_toggle_face,
    cb.StartTemplate: template.on_start_template,
    cb.Forget: privacy.on_forget,
    cb.TrainConfirm: training.on_train_confirm,
    cb.ShowPacks: payments.on_show_packs,
    cb.BuyPack: payments.on_buy_pack,
    cb.Noop: _noop,
}


async def on_callback(update: Update, context: BotContext) -> None:
    """Route a button press by its callback data."""
    query = query_of(update)
    if query.message is None:
        # A button under an inline-mode message (the bot sends none): no chat to answer in.
        logger.info("rejected a press without its message from %s", user_of(update).id)
        await query.answer(context.t("callback.stale"), show_alert=False)
        return
    try:
        data = cb.parse(query.data)
        handler = ROUTES[type(data)]
    except (cb.BadCallback, KeyError):
        logger.info("rejected callback data %r from %s", query.data, user_of(update).id)
        await query.answer(context.t("callback.stale"), show_alert=False)
        return
    await query.answer()
    await handler(update, context, data)
