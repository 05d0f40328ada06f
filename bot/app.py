"""Builds the python-telegram-bot Application: typed context, handlers per flow, error handler.

The caller owns the lifecycle (`async with application`, then `start()`, the inbox's unfinished
updates (`bot.polling.replay_unfinished`), plus `bot.polling.DurablePoller` in polling mode; in
webhook mode there is no updater and the admin web's `/telegram/webhook` route feeds the
application's update queue)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from telegram import BotCommand, MenuButtonWebApp, Update, WebAppInfo
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    PreCheckoutQueryHandler,
    TypeHandler,
    filters,
)

from bot.context import DEPS_KEY, BotContext, BotDeps
from bot.errors import error_handler
from bot.handlers import (
    admin,
    callbacks,
    fallback,
    gate,
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
from bot.processor import PerUserUpdateProcessor
from bot.ratelimit import UpdateRateLimiter
from bot.transport import AiohttpRequest
from core.blobstore import BlobStore
from core.errors import ConfigError
from core.metrics import Metrics, default_metrics
from core.safety import ScreenFactory, create_screen
from core.settings import AppConfig
from db.session import Database
from domain.outbox import Publisher
from telegram_ui.client import make_limiter
from telegram_ui.i18n import DEFAULT_LANGUAGE, LANGUAGES, translate

logger = logging.getLogger(__name__)

# Commands in the client's menu; each has a `cmd.<name>` description in every language.
MENU_COMMANDS = (
    "start",
    "style",
    "template",
    "photos",
    "history",
    "subject",
    "lang",
    "forget",
    "help",
)
ADMIN_COMMANDS = ("stats", "ban", "unban", "quota", "broadcast", *payments.ADMIN_PAYMENT_COMMANDS)
MAX_CONCURRENT_UPDATES = 256
# What the webhook asks Telegram for: messages (successful and refunded payments included),
# button presses, and the pre-checkout queries of Stars payments (answered within 10 s).
ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "pre_checkout_query")


class FaceChainApplication(Application[Any, Any, Any, Any, Any, Any]):
    """PTB's Application that also publishes the command menu when initialised.

    PTB runs `post_init` only inside `run_polling`/`run_webhook`; the service drives the
    application itself (`async with application`), so the menu is set up here instead.
    """

    async def initialize(self) -> None:
        """Initialise PTB, then publish the menu (best effort: a failure only logs), and start
        the upload safety checker's process so the first upload does not wait for it."""
        await super().initialize()
        await publish_commands(self)
        await publish_menu_button(self)
        screen = self.bot_data[DEPS_KEY].screen
        if screen is not None:
            screen.warm()

    async def shutdown(self) -> None:
        """Stop the upload safety checker's process, then PTB."""
        screen = self.bot_data[DEPS_KEY].screen
        if screen is not None:
            screen.close()
        await super().shutdown()


async def publish_commands(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """The command menu in every language."""
    bot = application.bot
    deps = application.bot_data.get(DEPS_KEY)
    names: tuple[str, ...] = MENU_COMMANDS
    if deps is not None and deps.config.payments.enabled:
        names = (*MENU_COMMANDS, *payments.PAYMENT_COMMANDS)
    try:
        for language in LANGUAGES:
            commands = [BotCommand(c, translate(language, f"cmd.{c}")) for c in names]
            code = None if language == DEFAULT_LANGUAGE else language
            await bot.set_my_commands(commands, language_code=code)
    except TelegramError as exc:
        logger.warning("could not set the command menu: %s", exc)
    logger.info("bot @%s ready", bot.username)


async def publish_menu_button(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """With MINIAPP_URL set, the chat's menu button opens the Mini App (best effort: a failure
    only logs); without it, the menu button is left as it is."""
    deps = application.bot_data.get(DEPS_KEY)
    url = deps.config.miniapp.url if deps is not None else None
    if not url:
        return
    button = MenuButtonWebApp(translate(DEFAULT_LANGUAGE, "miniapp.menu"), WebAppInfo(url))
    try:
        await application.bot.set_chat_menu_button(menu_button=button)
    except TelegramError as exc:
        logger.warning("could not set the Mini App menu button: %s", exc)


def register_handlers(
    application: Application[Any, Any, Any, Any, Any, Any], config: AppConfig
) -> None:
    """Wire every flow; groups -3 to -1 run first for every update (count, flood, user, ban)."""
    application.add_handler(TypeHandler(Update, gate.count_update), group=-3)
    application.add_handler(TypeHandler(Update, gate.rate_limit), group=-2)
    application.add_handler(TypeHandler(Update, gate.load_account), group=-1)

    new_message = filters.UpdateType.MESSAGE
    # Payments first: money that arrived is credited (or a refund debited) whatever else
    # happens; a checkout is answered even with payments off (refused), never left to time out.
    application.add_handler(PreCheckoutQueryHandler(payments.on_pre_checkout))
    application.add_handler(
        MessageHandler(new_message & filters.SUCCESSFUL_PAYMENT, payments.on_successful_payment)
    )
    application.add_handler(
        MessageHandler(
            new_message & filters.StatusUpdate.REFUNDED_PAYMENT, payments.on_refunded_payment
        )
    )
    commands = {
        "start": start.start,
        "help": start.help_command,
        "lang": start.lang_command,
        "cancel": start.cancel_command,
        "style": styles.style_command,
        "template": template.template_command,
        "photos": photos.photos_command,
        "history": results.history_command,
        "subject": subject.subject_command,
        "forget": privacy.forget_command,
        "train_style": training.train_command,
        "done": training.done_command,
    }
    if config.payments.enabled:
        commands |= {
            "buy": payments.buy_command,
            "balance": payments.balance_command,
            "terms": payments.terms_command,
            "paysupport": payments.paysupport_command,
        }
    for name, callback in commands.items():
        application.add_handler(CommandHandler(name, callback, filters=new_message))

    # An empty admin list matches nobody, so these fall through to "unknown command".
    admins = filters.User(user_id=config.telegram.admin_ids, allow_empty=False)
    admin_commands = {
        "stats": admin.stats_command,
        "ban": admin.ban_command,
        "unban": admin.unban_command,
        "quota": admin.quota_command,
        "broadcast": admin.broadcast_command,
    }
    if config.payments.enabled:
        admin_commands |= {
            "payments": payments.payments_command,
            "packs": payments.packs_command,
            "pack_add": payments.pack_add_command,
            "pack_edit": payments.pack_edit_command,
            "pack_on": payments.pack_on_command,
            "pack_off": payments.pack_off_command,
            "refund": payments.refund_command,
            "grant": payments.grant_command,
            "reconcile": payments.reconcile_command,
        }
    for name, callback in admin_commands.items():
        application.add_handler(CommandHandler(name, callback, filters=new_message & admins))

    application.add_handler(CallbackQueryHandler(callbacks.on_callback))
    application.add_handler(
        MessageHandler(new_message & (filters.PHOTO | filters.Document.ALL), intake.on_image)
    )
    application.add_handler(
        MessageHandler(new_message & filters.TEXT & ~filters.COMMAND, fallback.on_text)
    )
    application.add_handler(
        MessageHandler(new_message & filters.COMMAND, fallback.on_unknown_command)
    )
    application.add_handler(MessageHandler(new_message, fallback.on_other))
    application.add_error_handler(error_handler)


def build_application(
    config: AppConfig,
    db: Database,
    blobs: BlobStore,
    publisher: Publisher,
    *,
    metrics: Metrics | None = None,
    screen_factory: ScreenFactory = create_screen,
) -> Application[Any, Any, Any, Any, Any, Any]:
    """The bot Application for this configuration (not yet initialised or started).

    `publisher` takes the jobs, webhook deliveries and broadcasts the handlers' use cases
    outbox; `metrics` gets the counted updates and errors (default: the process's own);
    `screen_factory` builds the upload safety screen (default: a child process per bot)."""
    telegram = config.telegram
    if telegram.token is None:
        raise ConfigError("TELEGRAM_TOKEN is not set")
    # One flood limiter: the update processor counts each update before it joins the user's
    # queue, the gate handler answers or drops what is over the limit.
    rate_limiter = UpdateRateLimiter(config.limits.updates_per_minute)
    processor = PerUserUpdateProcessor(
        MAX_CONCURRENT_UPDATES, rate_limiter=rate_limiter, exempt=telegram.admin_ids, db=db
    )
    builder = (
        ApplicationBuilder()
        .application_class(FaceChainApplication)
        .token(telegram.token.get_secret_value())
        .base_url(telegram.api_base_url)
        .base_file_url(telegram.file_base_url)
        .context_types(ContextTypes(context=BotContext))
        .concurrent_updates(processor)
        # Chats' flood schedules shared with the io workers and the web through Redis.
        .rate_limiter(make_limiter(telegram, config.broker.effective_url))
        # aiohttp, not PTB's default httpx: a fifth of the CPU per Bot API call (bot/transport.py).
        .request(AiohttpRequest(connection_pool_size=64, media_write_timeout=60))
        .get_updates_request(AiohttpRequest(connection_pool_size=1))
    )
    if telegram.mode == "webhook":
        # Updates arrive through the admin web's webhook route, not getUpdates.
        builder = builder.updater(None)
    application = builder.build()
    application.bot_data[DEPS_KEY] = BotDeps(
        config=config,
        db=db,
        blobs=blobs,
        publisher=publisher,
        metrics=metrics or default_metrics(),
        rate_limiter=rate_limiter,
        cpu_slots=asyncio.Semaphore(max(1, os.cpu_count() or 1)),
        screen=screen_factory(config),
    )
    register_handlers(application, config)
    return application


__all__ = [
    "ADMIN_COMMANDS",
    "ALLOWED_UPDATES",
    "BotContext",
    "build_application",
    "register_handlers",
]
