"""Refunding a Stars payment, shared by the admin chat command and the admin API: Telegram
first (`refundStarPayment`), then the record (`domain.billing.refund_payment`, which debits the
payment's unspent credits once), then a note to the payer.

Telegram is asked first so that nothing is debited for a refund that did not happen. A refund
Telegram already made (`CHARGE_ALREADY_REFUNDED`, e.g. the `refunded_payment` update was lost)
is recorded all the same; the record is idempotent, so the `refunded_payment` update that
follows a refund changes nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from telegram import Bot, StarTransaction, TransactionPartnerUser
from telegram.error import BadRequest, TelegramError

from core.errors import PaymentRefused, ReconcileRunning
from db.locks import try_lock
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


# Stars transactions read per call (Telegram's maximum), and pages read before a batch is
# recorded (credits and the new place in one transaction, so a crash loses no progress).
TRANSACTIONS_PAGE = 100
BATCH_PAGES = 10
LOCK_NAME = "payments.reconcile"


@dataclass
class StarBatch:
    """Transactions read from the Stars history: the payments and the refunded charge ids among
    them, and the place in the history they end at."""

    received: list[billing.StarPayment]
    refunded: set[str]
    cursor: billing.StarCursor
    # Whether the history ended within this batch (the run is done after it).
    last: bool


def paid_text(language: str | None, credits: int, balance: int) -> str:
    """The payer's thanks for a payment credited (by its update or by reconciliation)."""
    return translate(
        language,
        "pay.done",
        credits=ntranslate(language, "credits.amount", credits),
        balance=ntranslate(language, "credits.amount", balance),
    )


def transaction_key(tx: StarTransaction) -> str:
    """What identifies a transaction in the history: a refund carries its payment's id."""
    return f"{'out' if tx.receiver is not None else 'in'}:{tx.id}"


async def star_batches(bot: Bot, cursor: billing.StarCursor) -> AsyncIterator[StarBatch]:
    """Telegram's Stars transactions after `cursor`, in batches of pages, oldest first (the
    Bot API lists them in chronological order, `offset` counting from the oldest).

    The page that resumes starts one before the place, with the last transaction read: when it
    is not the one the place remembers (another bot's token, a history Telegram changed), the
    whole history is read again from the start (every step of reconciling is idempotent)."""
    offset = cursor.offset
    skip = 0
    if offset > 0 and cursor.last is not None:
        offset, skip = offset - 1, 1
    elif offset > 0:
        offset = 0
    received: list[billing.StarPayment] = []
    refunded: set[str] = set()
    pages = 0
    last_key = cursor.last
    while True:
        page = await bot.get_star_transactions(offset=offset, limit=TRANSACTIONS_PAGE)
        transactions = list(page.transactions)
        if skip:
            if not transactions or transaction_key(transactions[0]) != cursor.last:
                logger.warning(
                    "the Stars history no longer holds transaction %s at %d: reading it all",
                    cursor.last,
                    offset,
                )
                offset, skip, last_key = 0, 0, None
                continue
            new = transactions[1:]
            skip = 0
        else:
            new = transactions
        for tx in new:
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
        if transactions:
            last_key = transaction_key(transactions[-1])
        offset += len(transactions)
        pages += 1
        end = len(transactions) < TRANSACTIONS_PAGE
        if end or pages >= BATCH_PAGES:
            yield StarBatch(received, refunded, billing.StarCursor(offset, last_key), end)
            if end:
                return
            received, refunded, pages = [], set(), 0


async def reconcile(
    open_bot: Callable[[], AbstractAsyncContextManager[Bot]],
    db: Database,
    publisher: Publisher,
    *,
    locked: bool = False,
    admin_chat: int | None = None,
) -> billing.Reconciled:
    """Credit the Stars payments Telegram made that this bot never recorded, and record the
    refunds Telegram made that this bot never recorded (`domain.billing.reconcile_payments`);
    each payer is told, as the lost update would have told them.

    Only the transactions after the place the last run kept are read (the first run reads the
    whole history, in pages, with no cap); each batch is recorded with the new place in one
    transaction. One run at a time: under the `payments.reconcile` lock (`db.locks`), taken
    here unless the caller holds it (`locked`); ReconcileRunning when another run holds it.
    Payments that match no invoice the bot issued are kept, credit nothing, and are told to
    `admin_chat` when given (the scheduled run tells the admin chat everything itself)."""
    async with _reconcile_lock(db, held_by_caller=locked):
        found = billing.Reconciled()
        async with open_bot() as bot:
            cursor = await db.run(billing.star_cursor)
            async for batch in star_batches(bot, cursor):
                unrefunded = [p for p in batch.received if p.charge_id not in batch.refunded]
                part = await transact_async(
                    db,
                    publisher,
                    billing.reconcile_payments,
                    unrefunded,
                    batch.refunded,
                    batch.cursor,
                )
                await _tell_payers(bot, part)
                found.extend(part)
            if found.unmatched and admin_chat is not None:
                await _tell_unmatched(bot, admin_chat, found)
        return found


async def _tell_unmatched(bot: Bot, admin_chat: int, found: billing.Reconciled) -> None:
    """Alert the admin chat to payments that match no invoice (best effort: they are kept)."""
    text = ntranslate(
        None,
        "admin.reconcile_unmatched",
        len(found.unmatched),
        stars=sum(r.stars for r in found.unmatched),
        payments=", ".join(str(r.payment_id) for r in found.unmatched),
    )
    try:
        await bot.send_message(admin_chat, text)
    except TelegramError as exc:
        logger.warning("could not tell the admin chat about unmatched payments: %s", exc)


async def _tell_payers(bot: Bot, found: billing.Reconciled) -> None:
    for result in found.credited:
        text = paid_text(result.language, result.credits, result.balance)
        try:
            await bot.send_message(result.telegram_id, text)
        except TelegramError as exc:
            logger.info("could not tell %s about their credits: %s", result.telegram_id, exc)
    for refund in found.refunded:
        if refund.language is not None:
            await tell_refunded(bot, refund)


@asynccontextmanager
async def _reconcile_lock(db: Database, *, held_by_caller: bool) -> AsyncIterator[None]:
    """The reconcile lock for an async body (its blocking acquire and release in a thread)."""
    if held_by_caller:
        yield
        return
    lock = try_lock(db, LOCK_NAME)
    held = await asyncio.to_thread(lock.__enter__)
    try:
        if not held:
            raise ReconcileRunning("another reconciliation is running")
        yield
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)


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
    if found.unmatched:
        lines.append(
            ntranslate(
                language,
                "admin.reconcile_unmatched",
                len(found.unmatched),
                stars=sum(r.stars for r in found.unmatched),
                payments=", ".join(str(r.payment_id) for r in found.unmatched),
            )
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
