"""Refunding a Stars payment, shared by the admin chat command and the admin API: Telegram
first (`refundStarPayment`), then the record (`domain.billing.refund_payment`, which debits the
payment's unspent credits once), then a note to the payer.

Telegram is asked first so that nothing is debited for a refund that did not happen. A refund
Telegram already made (`CHARGE_ALREADY_REFUNDED`, e.g. the `refunded_payment` update was lost)
is recorded all the same; the record is idempotent, so the `refunded_payment` update that
follows a refund changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from telegram import Bot, TransactionPartnerUser
from telegram.error import BadRequest, TelegramError

from core.errors import PaymentRefused
from db.session import Database
from domain import billing
from domain.outbox import Publisher, transact_async
from telegram_ui.i18n import ntranslate, translate

logger = logging.getLogger(__name__)

ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


async def refund(
    open_bot: Callable[[], AbstractAsyncContextManager[Bot]],
    db: Database,
    publisher: Publisher,
    ref: int | str,
    actor: str,
) -> billing.RefundResult:
    """Refund a payment (by id or Telegram charge id); NotFound for an unknown one,
    PaymentRefused when Telegram refuses. `open_bot` gives the Bot (opened only when needed)."""
    target = await db.run(billing.refund_target, ref)
    if target.refunded:
        return await transact_async(
            db, publisher, billing.refund_payment, target.payment_id, actor
        )
    async with open_bot() as bot:
        try:
            await bot.refund_star_payment(target.telegram_id, target.charge_id)
        except BadRequest as exc:
            if ALREADY_REFUNDED not in str(exc).upper():
                raise PaymentRefused(str(exc), reason="telegram", telegram=str(exc)) from exc
            logger.info("payment %s was already refunded at Telegram", target.charge_id)
        result = await transact_async(
            db, publisher, billing.refund_payment, target.payment_id, actor
        )
        if not result.duplicate and result.language is not None:
            await tell_refunded(bot, result)
    return result


# Stars transactions read per call (Telegram's maximum) and in all.
TRANSACTIONS_PAGE = 100
MAX_TRANSACTIONS = 10_000


def paid_text(language: str | None, credits: int, balance: int) -> str:
    """The payer's thanks for a payment credited (by its update or by reconciliation)."""
    return translate(
        language,
        "pay.done",
        credits=ntranslate(language, "credits.amount", credits),
        balance=ntranslate(language, "credits.amount", balance),
    )


async def star_payments(bot: Bot) -> list[billing.StarPayment]:
    """Payments to this bot that Telegram lists and has not refunded, newest first."""
    received, refunded = await star_transactions(bot)
    return [p for p in received if p.charge_id not in refunded]


async def star_transactions(bot: Bot) -> tuple[list[billing.StarPayment], set[str]]:
    """Payments to this bot that Telegram lists (newest first), and the charge ids of those
    it refunded."""
    received: list[billing.StarPayment] = []
    refunded: set[str] = set()
    offset = 0
    while offset < MAX_TRANSACTIONS:
        page = await bot.get_star_transactions(offset=offset, limit=TRANSACTIONS_PAGE)
        for tx in page.transactions:
            if isinstance(tx.receiver, TransactionPartnerUser):
                # A refund carries the id of the payment it returns.
                refunded.add(tx.id)
            source = tx.source
            if isinstance(source, TransactionPartnerUser) and source.invoice_payload:
                received.append(
                    billing.StarPayment(
                        tx.id, source.user.id, source.invoice_payload, tx.amount, tx.date
                    )
                )
        if len(page.transactions) < TRANSACTIONS_PAGE:
            break
        offset += len(page.transactions)
    return received, refunded


async def reconcile(
    open_bot: Callable[[], AbstractAsyncContextManager[Bot]], db: Database, publisher: Publisher
) -> billing.Reconciled:
    """Credit the Stars payments Telegram made that this bot never recorded, and record the
    refunds Telegram made that this bot never recorded (`domain.billing.reconcile_payments`);
    each payer is told, as the lost update would have told them."""
    async with open_bot() as bot:
        received, refunded = await star_transactions(bot)
        unrefunded = [p for p in received if p.charge_id not in refunded]
        found = await transact_async(
            db, publisher, billing.reconcile_payments, unrefunded, refunded
        )
        for result in found.credited:
            text = paid_text(result.language, result.credits, result.balance)
            try:
                await bot.send_message(result.telegram_id, text)
            except TelegramError as exc:
                logger.info("could not tell %s about their credits: %s", result.telegram_id, exc)
        for refund in found.refunded:
            if refund.language is not None:
                await tell_refunded(bot, refund)
    return found


async def tell_refunded(bot: Bot, result: billing.RefundResult) -> None:
    """Tell the payer their payment came back (best effort: they may have blocked the bot)."""
    text = ntranslate(
        result.language,
        "pay.refunded",
        result.debited,
        stars=result.stars,
        balance=ntranslate(
            result.language,
            "credits.amount",
            result.balance if result.balance is not None else 0,
        ),
    )
    try:
        await bot.send_message(result.telegram_id, text)
    except TelegramError as exc:
        logger.info("could not tell %s about their refund: %s", result.telegram_id, exc)


def reconcile_text(
    language: str | None, found: billing.Reconciled, *, scheduled: bool = False
) -> str:
    """What a reconciliation recorded, for the admins: the payments credited (the scheduled
    run's notice names them, and only when there are any), then the refunds debited."""
    lines = []
    if found.credited or not scheduled:
        # str.format ignores the payment ids where the chat's reply does not name them.
        key = "admin.reconcile_notice" if scheduled else "admin.reconcile_done"
        payments = ", ".join(str(r.payment_id) for r in found.credited)
        lines.append(
            ntranslate(language, key, len(found.credited), stars=found.stars, payments=payments)
        )
    if found.refunded:
        lines.append(
            ntranslate(
                language,
                "admin.reconcile_refunds",
                len(found.refunded),
                stars=found.refunded_stars,
                debited=sum(r.debited for r in found.refunded),
                shortfall=sum(r.shortfall for r in found.refunded),
                payments=", ".join(str(r.payment_id) for r in found.refunded),
            )
        )
    return "\n".join(lines)
