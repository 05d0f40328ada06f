"""io task `payments.reconcile` (beat, every `PAYMENTS_RECONCILE_INTERVAL_SECONDS`): credit the
Stars payments Telegram made whose `successful_payment` update never reached the bot.

The reconciliation itself is the one /reconcile and the admin API run
(`telegram_ui.payments.reconcile`: getStarTransactions, each payment credited once, the payer
told); this module schedules it. It runs through the io worker's one Bot, under a named lock
(`db.locks`) so two beats, or a run that outlasts the interval, never reconcile at once, and it
tells the admin chat when it credited something. Telegram out of reach ends the run; the next
one tries again."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field

from celery import shared_task
from telegram import Bot
from telegram.error import TelegramError

from core.metrics import Metrics, default_metrics
from db.locks import try_lock
from domain import billing
from tasks.context import WorkerContext, get_context
from telegram_ui import payments as telegram_payments
from telegram_ui.client import as_bulk, bulk_sends

logger = logging.getLogger(__name__)

TASK_NAME = "payments.reconcile"
LOCK_NAME = telegram_payments.LOCK_NAME


@dataclass(frozen=True)
class ReconcileRun:
    """What one scheduled run did: `done`, `off`, `locked` (another run holds the lock) or
    `failed` (Telegram out of reach); the payments it credited."""

    outcome: str
    found: billing.Reconciled = field(default_factory=billing.Reconciled)

    @property
    def credited(self) -> list[billing.PaymentResult]:
        return self.found.credited

    @property
    def stars(self) -> int:
        return self.found.stars


def reconcile_once(ctx: WorkerContext, metrics: Metrics | None = None) -> ReconcileRun:
    """One scheduled reconciliation, unless payments are off or another one is running."""
    metrics = metrics or default_metrics()
    if not ctx.config.payments.enabled or ctx.config.telegram.token is None:
        return ReconcileRun("off")
    with try_lock(ctx.db, LOCK_NAME) as held:
        if not held:
            logger.info("payments reconcile skipped: another reconciliation is running")
            metrics.reconcile_runs.labels(outcome="locked").inc()
            return ReconcileRun("locked")
        try:
            found = ctx.call_telegram(
                # The payers' notices are the bot's own messages: bulk.
                lambda bot: as_bulk(
                    telegram_payments.reconcile(
                        lambda: nullcontext(bot), ctx.db, ctx.publisher, locked=True
                    )
                )
            )
        except TelegramError as exc:  # DeadlineExceeded included
            logger.warning("payments reconcile failed (next run tries again): %s", exc)
            metrics.reconcile_runs.labels(outcome="failed").inc()
            return ReconcileRun("failed")
    run = ReconcileRun("done", found)
    metrics.reconcile_runs.labels(outcome="done").inc()
    metrics.record_reconciled(
        "schedule", [r.stars for r in found.credited], [r.stars for r in found.refunded]
    )
    if found.credited or found.refunded or found.unmatched:
        logger.warning(
            "payments reconcile credited %d lost payments (%d Stars): ids %s; recorded %d lost "
            "refunds: ids %s",
            len(found.credited),
            run.stars,
            [r.payment_id for r in found.credited],
            len(found.refunded),
            [r.payment_id for r in found.refunded],
        )
        _tell_admins(ctx, run)
    else:
        logger.info("payments reconcile: nothing to credit")
    return run


def _tell_admins(ctx: WorkerContext, run: ReconcileRun) -> None:
    """Tell the admin chat what was credited (best effort: the credits are in already)."""
    admin_chat = ctx.config.telegram.admin_chat_id
    if admin_chat is None:
        return
    text = telegram_payments.reconcile_text(None, run.found, scheduled=True)

    async def send(bot: Bot) -> None:
        with bulk_sends():
            await bot.send_message(admin_chat, text)

    try:
        ctx.call_telegram(send)
    except TelegramError as exc:  # DeadlineExceeded included
        logger.warning("could not tell the admin chat about reconciled payments: %s", exc)


@shared_task(name=TASK_NAME, ignore_result=True)
def reconcile_payments() -> str:
    """Beat entry point for `reconcile_once`; returns the outcome."""
    return reconcile_once(get_context()).outcome
