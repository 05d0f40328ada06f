"""Paid generations in Telegram Stars: /buy, the invoice, the pre-checkout answer, the
successful and refunded payments, /balance, /terms, /paysupport, and the admins' pack, refund
and grant commands.

The use cases are `domain.billing`'s; these handlers only talk to Telegram. The pre-checkout
answer must reach Telegram within 10 s, so it is one short database read. Payment updates are
never dropped: the gate lets them through flood control and bans (a banned user who paid before
the ban still gets what they paid for; a banned user's checkout is refused in the gate)."""

from __future__ import annotations

import logging
import re
from contextlib import nullcontext

from telegram import LabeledPrice, Update
from telegram.error import TelegramError

from bot.context import BotContext, chat_id_of, message_of, pre_checkout_of, require, user_of
from bot.handlers.common import reply
from bot.polling import was_replayed
from core.errors import NotFound, PaymentRefused
from domain import billing
from domain.audit import bot_actor
from telegram_ui import callbacks as cb
from telegram_ui import payments as telegram_payments
from telegram_ui.i18n import translate
from telegram_ui.keyboards import packs_keyboard

logger = logging.getLogger(__name__)

# Commands that exist only with PAYMENTS_ENABLED (the user's; the admins' are below).
PAYMENT_COMMANDS = ("buy", "balance", "terms", "paysupport")
# `/start buy` (the link on a forwarded invoice, or t.me/<bot>?start=buy): the packs.
BUY_START_PARAMETER = "buy"
# Why a purchase is refused (`domain.billing` reasons) -> what the user reads.
REFUSALS = {
    "disabled": "pay.refused.disabled",
    "invalid": "pay.refused.invalid",
    "banned": "pay.refused.banned",
    "forgotten": "pay.refused.forgotten",
    "pack_gone": "pay.refused.pack_gone",
    "price_changed": "pay.refused.price_changed",
    "paid": "pay.refused.paid",
    "expired": "pay.refused.expired",
}
ADMIN_PAYMENT_COMMANDS = (
    "payments",
    "packs",
    "pack_add",
    "pack_edit",
    "pack_on",
    "pack_off",
    "refund",
    "grant",
    "reconcile",
)


# ---- users ----


async def show_packs(update: Update, context: BotContext) -> None:
    """The packs on sale, each a button that sends its invoice."""
    packs = await context.db.run(billing.list_packs, enabled_only=True)
    if not packs:
        await reply(update, context, context.t("buy.none"))
        return
    payments = context.config.payments
    await reply(
        update,
        context,
        context.t(
            "buy.choose",
            portrait=context.nt("credits.amount", payments.price_portrait),
            template=context.nt("credits.amount", payments.price_template),
        ),
        reply_markup=packs_keyboard(
            [(p.id, p.title, p.credits, p.stars) for p in packs], context.language
        ),
    )


async def buy_command(update: Update, context: BotContext) -> None:
    """/buy: the packs on sale."""
    await show_packs(update, context)


async def on_show_packs(update: Update, context: BotContext, data: cb.ShowPacks) -> None:
    """The Buy button under "free quota used up"."""
    await show_packs(update, context)


async def on_buy_pack(update: Update, context: BotContext, data: cb.BuyPack) -> None:
    """A pack's button: issue its invoice (a row; the payload names only it) and send it in
    Stars (the pack is re-checked, forged ids refused)."""
    try:
        invoice = await context.db.run(
            billing.issue_invoice, context.account.id, data.pack_id, context.config.payments
        )
    except PaymentRefused as exc:
        reason = str(exc.details.get("reason", "invalid"))
        await reply(update, context, context.t(REFUSALS.get(reason, REFUSALS["invalid"])))
        return
    await context.bot.send_invoice(
        chat_id_of(update),
        title=invoice.title,
        description=context.nt("buy.invoice_description", invoice.credits),
        payload=invoice.payload,
        currency=billing.CURRENCY,
        prices=[LabeledPrice(invoice.title, invoice.stars)],
        # A forwarded copy gets a link that opens this bot's packs (/start buy) instead of a
        # Pay button: every payment happens in the buyer's own chat with the bot.
        start_parameter=BUY_START_PARAMETER,
    )


async def on_pre_checkout(update: Update, context: BotContext) -> None:
    """Telegram asks whether to take the money: re-check pack, price and payer, then answer."""
    query = pre_checkout_of(update)
    reason = await context.db.run(
        billing.check_checkout,
        query.from_user.id,
        query.invoice_payload,
        query.currency,
        query.total_amount,
        context.config.payments,
    )
    context.deps.metrics.precheckouts.labels(outcome=reason or "ok").inc()
    if reason is None:
        await query.answer(ok=True)
        return
    logger.info("pre-checkout of %s refused: %s", query.from_user.id, reason)
    await query.answer(
        ok=False, error_message=context.t(REFUSALS.get(reason, REFUSALS["invalid"]))
    )


async def on_successful_payment(update: Update, context: BotContext) -> None:
    """The money arrived: credit the invoice it paid, once per charge id (a duplicate update
    does nothing, except a replay of this very update after the bot died: it credited, but may
    never have said so, so it says it again). A payment that matches no invoice we issued
    credits nothing: it is kept, the payer is told an admin will look at it, and the admin chat
    is alerted."""
    payment = require(message_of(update).successful_payment, "successful payment", update)
    result = await context.transact(
        billing.record_payment,
        user_of(update).id,
        payment.invoice_payload,
        payment.total_amount,
        payment.telegram_payment_charge_id,
        payment.provider_payment_charge_id,
        payment.currency,
    )
    if result.duplicate:
        context.deps.metrics.record_payment("duplicate")
        if not was_replayed(context.bot_data, update.update_id):
            return
        if result.unmatched is not None:
            await reply(update, context, context.t("pay.unmatched"))
            return
    elif result.unmatched is not None:
        context.deps.metrics.record_payment("unmatched", result.stars)
        await reply(update, context, context.t("pay.unmatched"))
        await _tell_admin_chat(
            context,
            True,
            "admin.payment_unmatched",
            charge=result.charge_id,
            stars=result.stars,
            currency=payment.currency,
            user=result.telegram_id,
            reason=result.unmatched,
            id=result.payment_id,
        )
        return
    else:
        context.deps.metrics.record_payment("succeeded", result.stars)
    await reply(
        update,
        context,
        telegram_payments.paid_text(context.language, result.credits, result.balance),
    )


async def on_refunded_payment(update: Update, context: BotContext) -> None:
    """Telegram reports a refund: debit the payment's unspent credits once; tell the payer and,
    when credits were already spent, the admin chat."""
    refunded = require(message_of(update).refunded_payment, "refunded payment", update)
    charge_id = refunded.telegram_payment_charge_id
    try:
        result = await context.transact(billing.refund_payment, charge_id, "telegram")
    except NotFound:
        # A payment this bot never recorded: nothing to debit and nothing to tell the payer
        # (Telegram shows them the refund); the admins hear of it once.
        new = await context.transact(
            billing.record_unrecorded_refund,
            charge_id,
            user_of(update).id,
            refunded.total_amount,
            refunded.invoice_payload,
        )
        await _tell_admin_chat(
            context,
            new,
            "admin.refund_unrecorded",
            charge=charge_id,
            stars=refunded.total_amount,
            user=user_of(update).id,
        )
        return
    if result.duplicate:
        return
    context.deps.metrics.record_payment("refunded", result.stars)
    await telegram_payments.tell_refunded(context.bot, result)
    admin_chat = context.config.telegram.admin_chat_id
    if result.shortfall and admin_chat is not None:
        await context.bot.send_message(
            admin_chat,
            translate(
                None,
                "admin.refund_notice",
                charge=result.charge_id,
                stars=result.stars,
                debited=result.debited,
                shortfall=result.shortfall,
            ),
        )


async def _tell_admin_chat(context: BotContext, tell: bool, key: str, **values: object) -> None:
    """A notice for the admin chat, when there is one (best effort: it is recorded already)."""
    admin_chat = context.config.telegram.admin_chat_id
    if not tell or admin_chat is None:
        return
    try:
        await context.bot.send_message(admin_chat, translate(None, key, **values))
    except TelegramError as exc:
        logger.warning("could not tell the admin chat (%s): %s", key, exc)


async def balance_command(update: Update, context: BotContext) -> None:
    """/balance: credits, today's free generations and the prices."""
    shown = await context.db.run(
        billing.balance, context.account.id, context.config.limits, context.config.payments
    )
    await reply(
        update,
        context,
        context.t(
            "balance.text",
            credits=shown.credits,
            left=shown.quota_left,
            quota=shown.quota,
            portrait=context.nt("credits.amount", shown.price_portrait),
            template=context.nt("credits.amount", shown.price_template),
            upscale=context.nt("credits.amount", shown.price_upscale),
        ),
    )


async def terms_command(update: Update, context: BotContext) -> None:
    """/terms: the operator's terms of purchase (Telegram requires them of sellers)."""
    text = context.config.payments.text("terms", context.language)
    await reply(update, context, text or context.t("terms.default"))


async def paysupport_command(update: Update, context: BotContext) -> None:
    """/paysupport: how to get help with a payment (Telegram requires it of sellers)."""
    text = context.config.payments.text("paysupport", context.language)
    await reply(update, context, text or context.t("paysupport.default"))


# ---- admins ----


def _actor(context: BotContext) -> str:
    return bot_actor(context.account.telegram_id)


def _pack_text(context: BotContext, key: str, pack: object) -> str:
    state = context.t("admin.pack_on" if getattr(pack, "enabled", False) else "admin.pack_off")
    return context.nt(
        key,
        getattr(pack, "credits", 0),
        id=getattr(pack, "id", 0),
        title=getattr(pack, "title", ""),
        stars=getattr(pack, "stars", 0),
        state=state,
    )


async def packs_command(update: Update, context: BotContext) -> None:
    """/packs: every pack, on sale or not."""
    packs = await context.db.run(billing.list_packs)
    if not packs:
        await reply(update, context, context.t("admin.packs_none"))
        return
    lines = "\n".join(_pack_text(context, "admin.pack_line", p) for p in packs)
    await reply(update, context, context.t("admin.packs", packs=lines))


def _numbers(args: list[str], count: int) -> list[int] | None:
    # ASCII digits only: isdigit() alone takes '²', which int() refuses.
    if len(args) < count or not all(a.isascii() and a.isdigit() for a in args[:count]):
        return None
    return [int(a) for a in args[:count]]


async def pack_add_command(update: Update, context: BotContext) -> None:
    """/pack_add <credits> <stars> <title>."""
    args = context.args or []
    numbers = _numbers(args, 2)
    title = " ".join(args[2:]).strip()
    if numbers is None or not title:
        await reply(update, context, context.t("admin.pack_add_usage"))
        return
    pack = await context.db.run(
        billing.create_pack,
        title=title,
        credits=numbers[0],
        stars=numbers[1],
        actor=_actor(context),
    )
    await reply(update, context, _pack_text(context, "admin.pack_saved", pack))


async def pack_edit_command(update: Update, context: BotContext) -> None:
    """/pack_edit <id> <credits> <stars> [title]."""
    args = context.args or []
    numbers = _numbers(args, 3)
    if numbers is None:
        await reply(update, context, context.t("admin.pack_edit_usage"))
        return
    changes: dict[str, object] = {"credits": numbers[1], "stars": numbers[2]}
    title = " ".join(args[3:]).strip()
    if title:
        changes["title"] = title
    pack = await context.db.run(billing.update_pack, numbers[0], changes, _actor(context))
    await reply(update, context, _pack_text(context, "admin.pack_saved", pack))


async def _toggle(update: Update, context: BotContext, enabled: bool) -> None:
    numbers = _numbers(context.args or [], 1)
    if numbers is None or len(context.args or []) != 1:
        await reply(update, context, context.t("admin.pack_toggle_usage"))
        return
    pack = await context.db.run(
        billing.update_pack, numbers[0], {"enabled": enabled}, _actor(context)
    )
    await reply(update, context, _pack_text(context, "admin.pack_saved", pack))


async def pack_on_command(update: Update, context: BotContext) -> None:
    """/pack_on <id>: put a pack on sale."""
    await _toggle(update, context, True)


async def pack_off_command(update: Update, context: BotContext) -> None:
    """/pack_off <id>: take a pack off sale (invoices already sent are refused at checkout)."""
    await _toggle(update, context, False)


async def payments_command(update: Update, context: BotContext) -> None:
    """/payments <id|@username>: the user's latest payments with the charge ids /refund takes."""
    args = context.args or []
    if len(args) != 1:
        await reply(update, context, context.t("admin.payments_usage"))
        return
    user, rows = await context.db.run(billing.payments_of, args[0])
    if not rows:
        await reply(update, context, context.t("admin.payments_none", user=user.telegram_id))
        return
    lines = [context.t("admin.payments_header", user=user.telegram_id)]
    for payment in rows:
        line = context.nt(
            "admin.payments_line",
            payment.credits,
            id=payment.id,
            date=f"{payment.created_at:%Y-%m-%d %H:%M}",
            title=payment.title,
            stars=payment.stars,
            charge=payment.charge_id,
        )
        if payment.refunded_at is not None:
            line += " " + context.t(
                "admin.payments_refunded", date=f"{payment.refunded_at:%Y-%m-%d}"
            )
        lines.append(line)
    await reply(update, context, "\n".join(lines))


def _payment_ref(arg: str) -> int | str:
    """`#12` is a payment id (what /payments lists), anything else a Telegram charge id."""
    if re.fullmatch(r"#[0-9]{1,9}", arg):
        return int(arg[1:])
    return arg


async def refund_command(update: Update, context: BotContext) -> None:
    """/refund <charge id | #payment id>: refund through Telegram, debit the unspent credits,
    say what could not be debited."""
    args = context.args or []
    if len(args) != 1:
        await reply(update, context, context.t("admin.refund_usage"))
        return
    try:
        result = await telegram_payments.refund(
            lambda: nullcontext(context.bot),
            context.db,
            context.deps.publisher,
            _payment_ref(args[0]),
            _actor(context),
        )
    except PaymentRefused as exc:
        reason = str(exc.details.get("telegram", exc))
        await reply(update, context, context.t("admin.refund_failed", reason=reason))
        return
    if result.duplicate:
        text = context.t(
            "admin.refund_already", debited=result.debited, shortfall=result.shortfall
        )
    else:
        context.deps.metrics.record_payment("refunded", result.stars)
        text = context.t(
            "admin.refund_done",
            stars=result.stars,
            charge=result.charge_id,
            debited=result.debited,
        )
        if result.shortfall:
            text += "\n" + context.nt("admin.refund_shortfall", result.shortfall)
    await reply(update, context, text)


async def reconcile_command(update: Update, context: BotContext) -> None:
    """/reconcile: credit the payments Telegram lists that were never recorded, and record the
    refunds it lists that were never recorded."""
    found = await telegram_payments.reconcile(
        lambda: nullcontext(context.bot),
        context.db,
        context.deps.publisher,
        admin_chat=context.config.telegram.admin_chat_id,
    )
    context.deps.metrics.record_reconciled(
        "chat", [r.stars for r in found.credited], [r.stars for r in found.refunded]
    )
    await reply(update, context, telegram_payments.reconcile_text(context.language, found))


async def grant_command(update: Update, context: BotContext) -> None:
    """/grant <id|@username> <±credits>: an admin's correction, written to the ledger."""
    args = context.args or []
    amount = args[1] if len(args) == 2 else ""
    if re.fullmatch(r"[+-]?[0-9]+", amount) is None:
        await reply(update, context, context.t("admin.grant_usage"))
        return
    user = await context.db.run(
        billing.grant_credits, args[0], int(amount), _actor(context), "chat /grant"
    )
    await reply(
        update, context, context.t("admin.grant_done", user=user.telegram_id, credits=user.credits)
    )
