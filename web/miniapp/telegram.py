"""What the Mini App's API says to Telegram: the job's status message in the chat (as the chat
sends it, so the worker edits it and the album follows), and Stars invoice links.

The web process has no bot Application of its own (`facechain-bot web` runs alone in
production), so it keeps one Bot, initialised at first use and closed with the app."""

from __future__ import annotations

import asyncio
import logging

from telegram import Bot, InlineKeyboardMarkup, LabeledPrice
from telegram.error import TelegramError

from core.settings import PaymentsSettings, TelegramSettings
from db.session import Database
from domain import billing
from telegram_ui.client import make_bot
from telegram_ui.i18n import ntranslate
from web.http import Unavailable

logger = logging.getLogger(__name__)


class TelegramLink:
    """One Bot for the app's lifetime, opened (getMe) when first needed."""

    def __init__(self, settings: TelegramSettings, broker_url: str | None = None) -> None:
        self.settings = settings
        # The chats' flood schedules are shared with the bot through the broker's Redis.
        self.broker_url = broker_url
        self._bot: Bot | None = None
        self._lock = asyncio.Lock()

    async def bot(self) -> Bot:
        """The initialised Bot; Unavailable (503) while Telegram cannot be reached."""
        async with self._lock:
            if self._bot is None:
                bot = make_bot(self.settings, self.broker_url)
                try:
                    await bot.initialize()
                except TelegramError as exc:
                    await bot.shutdown()
                    raise Unavailable(f"Telegram is not reachable: {exc}") from exc
                self._bot = bot
            return self._bot

    async def close(self) -> None:
        if self._bot is not None:
            bot, self._bot = self._bot, None
            await bot.shutdown()


async def send_status(
    link: TelegramLink, chat_id: int, text: str, markup: InlineKeyboardMarkup
) -> int | None:
    """Send a job's status message; its id, or None when Telegram cannot take it now (the job
    still runs, and its album still comes: the status message is only the progress display)."""
    try:
        bot = await link.bot()
        message = await bot.send_message(chat_id, text, reply_markup=markup)
    except (TelegramError, Unavailable) as exc:
        logger.warning("status message to %s not sent: %s", chat_id, exc)
        return None
    return message.message_id


async def invoice_link(
    link: TelegramLink,
    db: Database,
    user_id: int,
    pack_id: int,
    payments: PaymentsSettings,
    language: str,
) -> str:
    """A Stars invoice link for a pack: the one place the Mini App makes an invoice.

    The invoice is a row, issued like the chat's `/buy` (`billing.issue_invoice`): the
    pre-checkout check, the payment record and reconciliation credit from that row alone.
    PaymentRefused when the pack cannot be sold now."""
    invoice = await db.run(billing.issue_invoice, user_id, pack_id, payments)
    bot = await link.bot()
    try:
        url: str = await bot.create_invoice_link(
            title=invoice.title,
            description=ntranslate(language, "buy.invoice_description", invoice.credits),
            payload=invoice.payload,
            currency=billing.CURRENCY,
            prices=[LabeledPrice(invoice.title, invoice.stars)],
        )
    except TelegramError as exc:
        raise Unavailable(f"Telegram did not make the invoice: {exc}") from exc
    return url
