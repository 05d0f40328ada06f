"""Everything no flow claimed: text outside a flow, unknown commands, stickers, voice, etc."""

from __future__ import annotations

from telegram import Update

from bot.context import BotContext
from bot.handlers import training
from bot.handlers.common import reply
from domain import conversations


async def on_text(update: Update, context: BotContext) -> None:
    """Text answers a training question, or gets a hint about what the bot understands."""
    conv = await context.db.run(conversations.load, context.account.id)
    if conv.state in training.TEXT_STATES:
        await training.on_training_text(update, context, conv)
    elif conv.state is conversations.State.AWAIT_POSE:
        await reply(update, context, context.t("pose.send"))
    elif conv.state in (
        conversations.State.AWAIT_TEMPLATE_PHOTO,
        conversations.State.TEMPLATE_FACES,
    ):
        await reply(update, context, context.t("template.send_own"))
    elif conv.state is conversations.State.TRAIN_IMAGES:
        await reply(update, context, context.t("training.send_images"))
    else:
        await reply(update, context, context.t("fallback.text"))


async def on_unknown_command(update: Update, context: BotContext) -> None:
    """A command the bot does not have (or that is for admins only)."""
    await reply(update, context, context.t("fallback.unknown_command"))


async def on_other(update: Update, context: BotContext) -> None:
    """Stickers, voice, video, locations and the like."""
    await reply(update, context, context.t("fallback.media"))
