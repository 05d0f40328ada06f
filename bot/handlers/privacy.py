"""/forget: after confirmation, erase the user's photos, results, trainings and styles."""

from __future__ import annotations

import logging

from telegram import Update
from telegram.error import TelegramError

from bot.context import BotContext
from bot.handlers.common import pressed_message, reply
from domain.privacy import ForgetReport, forget_user
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import forget_keyboard

logger = logging.getLogger(__name__)


async def forget_command(update: Update, context: BotContext) -> None:
    """Ask for confirmation; with payments on, say how many unspent credits go with the rest."""
    text = context.t("forget.confirm")
    account = context.loaded_account
    credits = account.credits if account is not None else 0
    if context.config.payments.enabled and credits > 0:
        text += "\n\n" + context.nt("forget.credits_lost", credits)
    await reply(update, context, text, reply_markup=forget_keyboard(context.language))


async def on_forget(update: Update, context: BotContext, data: cb.Forget) -> None:
    """Yes: erase everything; no: keep it."""
    message = pressed_message(update)
    if data.answer == "yes":
        report: ForgetReport = await context.db.run(
            forget_user,
            context.blobs,
            context.account.id,
            keep_payment_records=context.config.payments.forget_keeps_payment_records,
        )
        text = context.t(
            "forget.done",
            photos=context.nt("forget.photos", report.photos),
            jobs=context.nt("forget.jobs", report.jobs),
        )
        for chat_id, message_id in report.cancelled_messages:
            # The cancelled jobs' status messages stop showing a queue place or progress.
            try:
                await context.bot.edit_message_text(
                    context.t("job.cancelled"), chat_id=chat_id, message_id=message_id
                )
            except TelegramError as exc:
                logger.info("status message %s not edited after /forget: %s", message_id, exc)
    elif data.answer == "no":
        text = context.t("forget.kept")
    else:
        text = context.t("callback.stale")
    if message is not None:
        await message.edit_text(text)
    else:
        await reply(update, context, text)
