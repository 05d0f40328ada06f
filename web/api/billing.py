"""Paid generations: Star packs, payments and refunds, a user's credit ledger and grants,
revenue per day, and the ledger check (`domain.billing`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from pydantic import BaseModel
from telegram import Bot
from telegram.error import BadRequest, TelegramError

from core.settings import TelegramSettings
from domain import billing
from telegram_ui import payments as telegram_payments
from telegram_ui.client import make_bot
from web.api.common import page_of
from web.api.users import TELEGRAM_ID_BOUNDS
from web.http import Call, Unavailable
from web.keys import METRICS
from web.openapi import API_PREFIX, Route
from web.schemas import (
    GrantIn,
    LedgerCheckOut,
    LedgerMismatch,
    LedgerOut,
    LedgerPage,
    PackIn,
    PackList,
    PackOut,
    PackPatch,
    Page,
    PageQuery,
    PaymentOut,
    PaymentQuery,
    ReconcileOut,
    RefundOut,
    RevenueDayOut,
    RevenueOut,
    RevenueQuery,
    UserOut,
)


def _telegram(
    settings: TelegramSettings, broker_url: str | None = None
) -> Callable[[], AbstractAsyncContextManager[Bot]]:
    """Opens a Bot for one call; Telegram out of reach (or the token refused) answers 503.
    `broker_url`: the chats' flood schedules are shared through the broker's Redis."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[Bot]:
        try:
            async with make_bot(settings, broker_url) as bot:
                yield bot
        except BadRequest:
            raise
        except TelegramError as exc:
            raise Unavailable(f"Telegram is not reachable: {exc}") from exc

    return opened


async def list_packs(call: Call) -> PackList:
    packs = await call.db.run(billing.list_packs)
    return PackList(items=[PackOut.model_validate(p) for p in packs])


async def create_pack(call: Call) -> PackOut:
    body = call.body_as(PackIn)
    pack = await call.db.run(
        billing.create_pack,
        title=body.title,
        credits=body.credits,
        stars=body.stars,
        enabled=body.enabled,
        position=body.position,
        actor=call.actor,
    )
    return PackOut.model_validate(pack)


async def update_pack(call: Call) -> PackOut:
    changes = call.body_as(PackPatch).model_dump(exclude_unset=True, exclude_none=True)
    pack = await call.db.run(billing.update_pack, call.path_int("pack_id"), changes, call.actor)
    return PackOut.model_validate(pack)


async def delete_pack(call: Call) -> None:
    await call.db.run(billing.delete_pack, call.path_int("pack_id"), call.actor)


async def user_ledger(call: Call) -> LedgerPage:
    q = call.query_as(PageQuery)
    user, rows, total = await call.db.run(
        billing.ledger_page, call.path_int("telegram_id"), limit=q.limit, offset=q.offset
    )
    return LedgerPage(
        items=[LedgerOut.model_validate(r) for r in rows],
        total=total,
        limit=q.limit,
        offset=q.offset,
        telegram_id=user.telegram_id,
        credits=user.credits,
    )


async def grant_credits(call: Call) -> UserOut:
    body = call.body_as(GrantIn)
    user = await call.db.run(
        billing.grant_credits, call.path_int("telegram_id"), body.credits, call.actor, body.note
    )
    return UserOut.model_validate(user)


async def list_payments(call: Call) -> BaseModel:
    q = call.query_as(PaymentQuery)
    rows, total = await call.db.run(
        billing.payments_page, telegram_id=q.telegram_id, limit=q.limit, offset=q.offset
    )
    return page_of(PaymentOut, rows, total, q)


async def refund_payment(call: Call) -> RefundOut:
    """Refund through Telegram (refundStarPayment), then debit the unspent credits once."""
    result = await telegram_payments.refund(
        _telegram(call.config.telegram, call.config.broker.effective_url),
        call.db,
        call.publisher,
        call.path_int("payment_id"),
        call.actor,
    )
    if not result.duplicate:
        call.app[METRICS].record_payment("refunded", result.stars)
    return RefundOut(
        payment_id=result.payment_id,
        charge_id=result.charge_id,
        stars=result.stars,
        debited=result.debited,
        shortfall=result.shortfall,
        balance=result.balance,
        duplicate=result.duplicate,
    )


async def reconcile_payments(call: Call) -> ReconcileOut:
    """Credit the payments Telegram made that were never recorded (lost updates)."""
    found = await telegram_payments.reconcile(
        _telegram(call.config.telegram, call.config.broker.effective_url),
        call.db,
        call.publisher,
        admin_chat=call.config.telegram.admin_chat_id,
    )
    call.app[METRICS].record_reconciled(
        "api", [r.stars for r in found.credited], [r.stars for r in found.refunded]
    )
    return ReconcileOut(
        credited=len(found.credited),
        stars=found.stars,
        payment_ids=[r.payment_id for r in found.credited],
        refunded=len(found.refunded),
        refunded_stars=found.refunded_stars,
        refunded_payment_ids=[r.payment_id for r in found.refunded],
        unmatched=len(found.unmatched),
        unmatched_payment_ids=[r.payment_id for r in found.unmatched],
    )


async def revenue(call: Call) -> RevenueOut:
    q = call.query_as(RevenueQuery)
    days = await call.db.run(billing.revenue_by_day, q.days)
    return RevenueOut(
        days=[
            RevenueDayOut(
                day=d.day.isoformat(),
                payments=d.payments,
                stars=d.stars,
                credits=d.credits,
                refunds=d.refunds,
                refunded_stars=d.refunded_stars,
                net_stars=d.net_stars,
            )
            for d in days
        ],
        stars=sum(d.stars for d in days),
        refunded_stars=sum(d.refunded_stars for d in days),
        net_stars=sum(d.net_stars for d in days),
    )


async def check_ledger(call: Call) -> LedgerCheckOut:
    rows = await call.db.run(billing.ledger_mismatches)
    return LedgerCheckOut(
        ok=not rows,
        mismatches=[LedgerMismatch(user_id=u, credits=c, ledger_sum=s) for u, c, s in rows],
    )


def routes() -> list[Route]:
    p = API_PREFIX
    uid = TELEGRAM_ID_BOUNDS
    return [
        Route(
            "GET",
            f"{p}/packs",
            list_packs,
            "Star packs in shop order",
            "payments",
            response=PackList,
        ),
        Route(
            "POST",
            f"{p}/packs",
            create_pack,
            "Add a Star pack",
            "payments",
            body=PackIn,
            response=PackOut,
            status=201,
            errors=(409,),
        ),
        Route(
            "PATCH",
            f"{p}/packs/{{pack_id}}",
            update_pack,
            "Change a Star pack",
            "payments",
            body=PackPatch,
            response=PackOut,
        ),
        Route(
            "DELETE",
            f"{p}/packs/{{pack_id}}",
            delete_pack,
            "Delete a Star pack (its payments keep their terms)",
            "payments",
            status=204,
        ),
        Route(
            "GET",
            f"{p}/payments",
            list_payments,
            "Stars payments, newest first",
            "payments",
            query=PaymentQuery,
            response=Page[PaymentOut],
        ),
        Route(
            "POST",
            f"{p}/payments/{{payment_id}}/refund",
            refund_payment,
            "Refund a payment through Telegram and debit its unspent credits",
            "payments",
            response=RefundOut,
            errors=(409, 503),
        ),
        Route(
            "POST",
            f"{p}/payments/reconcile",
            reconcile_payments,
            "Credit the payments Telegram lists that were never recorded",
            "payments",
            response=ReconcileOut,
            errors=(503,),
        ),
        Route(
            "GET",
            f"{p}/payments/revenue",
            revenue,
            "Stars received and refunded per day",
            "payments",
            query=RevenueQuery,
            response=RevenueOut,
        ),
        Route(
            "GET",
            f"{p}/payments/ledger-check",
            check_ledger,
            "Users whose credit balance disagrees with their ledger",
            "payments",
            response=LedgerCheckOut,
        ),
        Route(
            "GET",
            f"{p}/users/{{telegram_id}}/ledger",
            user_ledger,
            "A user's credit ledger, newest first",
            "payments",
            query=PageQuery,
            response=LedgerPage,
            path_bounds=uid,
        ),
        Route(
            "POST",
            f"{p}/users/{{telegram_id}}/credits",
            grant_credits,
            "Grant (or take back) credits",
            "payments",
            body=GrantIn,
            response=UserOut,
            path_bounds=uid,
            errors=(409,),
        ),
    ]
