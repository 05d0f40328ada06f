"""Paid generations in Telegram Stars, driven through the fake Bot API: packs, invoices, the
pre-checkout answer, payments credited once, credits spent and given back, refunds, and the
rules Telegram sets for sellers (/terms, /paysupport, nothing shown with payments off)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from bot.polling import replay_unfinished
from core.settings import PaymentsSettings
from db.models import AuditEntry, Invoice, JobStatus, LedgerEntry, LedgerKind, Pack, Payment, User
from domain import billing, inbox, lifecycle
from telegram_ui.i18n import ntranslate, translate
from tests.bot.conftest import ADMIN_ID, BotHarness, give_selfie, jobs_of
from tests.utils.factories import make_user
from tests.utils.fake_telegram import FakeUser, button_data, buttons

PAID = PaymentsSettings(
    enabled=True,
    price_portrait=1,
    terms_text="Operator terms.",
    terms_text_ru="Условия оператора.",
)


@pytest.fixture
async def shop(harness: BotHarness) -> BotHarness:
    """A running bot with payments on, no free generations, and one pack for sale."""
    harness.payments = PAID
    await harness.start(daily_quota=0, active_jobs_per_user=3)
    with harness.db.session() as s:
        s.add(Pack(title="Small", credits=3, stars=30, enabled=True, position=1))
    return harness


def credits_of(bot: BotHarness, telegram_id: int) -> int:
    with bot.db.session() as s:
        return int(s.scalar(select(User.credits).where(User.telegram_id == telegram_id)) or 0)


def ledger_of(bot: BotHarness, telegram_id: int) -> list[tuple[LedgerKind, int]]:
    with bot.db.session() as s:
        user_id = s.scalar(select(User.id).where(User.telegram_id == telegram_id))
        rows = s.scalars(
            select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id)
        )
        return [(r.kind, r.delta) for r in rows]


async def invoice_for(bot: BotHarness, user: FakeUser, pack: str = "Small") -> Any:
    """/buy, press the pack's button, and return the sendInvoice call."""
    tg = bot.tg
    since = len(tg.calls)
    tg.send_text(user, "/buy")
    menu = translate(
        user.language_code,
        "buy.choose",
        portrait=ntranslate(user.language_code, "credits.amount", 1),
        template=ntranslate(user.language_code, "credits.amount", 1),
    )
    await tg.wait_text(user.id, menu, since=since)
    tg.press_button(user, tg.bot_messages(user.id)[-1], pack)
    return await tg.wait_for("sendInvoice", chat_id=user.id, since=since)


async def pick_first_style(bot: BotHarness, user: FakeUser) -> None:
    """/style, then "Use this style" on the first style of the new carousel."""
    since = len(bot.tg.calls)
    bot.tg.send_text(user, "/style")
    await bot.tg.wait_for("sendPhoto", chat_id=user.id, since=since)
    picker = [m for m in bot.tg.bot_messages(user.id) if "photo" in m][-1]
    bot.tg.press_button(user, picker, translate(user.language_code, "btn.use_style"))


async def buy(bot: BotHarness, user: FakeUser) -> str:
    invoice = await invoice_for(bot, user)
    charge = await bot.tg.pay(user, invoice)
    assert charge is not None
    await bot.tg.wait_text(user.id, "credits added")
    return charge


class TestBuying:
    async def test_buy_spend_and_a_failed_job_gives_the_credit_back(
        self, shop: BotHarness
    ) -> None:
        tg = shop.tg
        ann = tg.user(9101, "Ann", "en")
        give_selfie(shop, ann.id)
        invoice = await invoice_for(shop, ann)
        assert invoice.params["currency"] == "XTR"
        assert invoice.params["prices"] == [{"label": "Small", "amount": 30}]
        assert "provider_token" not in invoice.params
        charge = await tg.pay(ann, invoice)
        assert charge is not None
        answer = tg.calls_to("answerPreCheckoutQuery")[-1]
        assert answer.params["ok"] is True
        await tg.wait_text(ann.id, "✅ Thank you! 3 credits added. Your balance: 3 credits.")
        assert credits_of(shop, ann.id) == 3

        # Spend: no free generations today, so the portrait costs one credit.
        await pick_first_style(shop, ann)
        await tg.wait_text(ann.id, "in the queue")
        [job] = jobs_of(shop, ann.id)
        assert (job.charge, job.charge_credits) == ("credits", 1)
        assert credits_of(shop, ann.id) == 2

        # The worker fails through no fault of the user: the credit comes back.
        shop.db.call(lifecycle.claim, job.id, "gpu-1")
        shop.db.call(lifecycle.finish, job.id, None, ("engine_unavailable", "no GPU"))
        assert credits_of(shop, ann.id) == 3
        since = len(tg.calls)
        tg.send_text(ann, "/balance")
        await tg.wait_text(ann.id, "Credits: 3", since=since)
        assert ledger_of(shop, ann.id) == [
            (LedgerKind.PURCHASE, 3),
            (LedgerKind.SPEND, -1),
            (LedgerKind.GIVEBACK, 1),
        ]
        with shop.db.session() as s:
            assert billing.ledger_mismatches(s) == []

    async def test_a_duplicate_successful_payment_credits_once(self, shop: BotHarness) -> None:
        tg = shop.tg
        bob = tg.user(9102, "Bob", "en")
        charge = await buy(shop, bob)
        payload = tg.charges[charge].payload
        tg.successful_payment(bob, payload, 30, charge_id=charge)
        await tg.idle()
        assert credits_of(shop, bob.id) == 3
        assert len([t for t in tg.sent_texts(bob.id) if "credits added" in t]) == 1
        with shop.db.session() as s:
            assert len(s.scalars(select(Payment)).all()) == 1
        assert shop.metrics.payments.labels(event="duplicate")._value.get() == 1
        assert shop.metrics.payment_stars.labels(event="succeeded")._value.get() == 30

    async def test_a_replayed_payment_says_it_was_credited_again(self, shop: BotHarness) -> None:
        """The bot credited the payment and died before its reply: the restarted bot replays
        the update from the inbox, credits nothing, and tells the payer."""
        tg = shop.tg
        ivy = tg.user(9103, "Ivy", "en")
        charge = await buy(shop, ivy)
        assert shop.app is not None
        update = {
            "update_id": 990001,
            "message": {
                "message_id": 990001,
                "date": 0,
                "chat": ivy.chat(),
                "from": ivy.to_dict(),
                "successful_payment": {
                    "currency": "XTR",
                    "total_amount": 30,
                    "invoice_payload": tg.charges[charge].payload,
                    "telegram_payment_charge_id": charge,
                    "provider_payment_charge_id": "",
                },
            },
        }
        shop.db.call(inbox.store, 990001, update)
        since = len(tg.calls)
        assert await replay_unfinished(shop.app, shop.db) == 1
        await tg.wait_text(ivy.id, "credits added", since=since)
        await tg.idle()
        assert credits_of(shop, ivy.id) == 3
        assert len([t for t in tg.sent_texts(ivy.id) if "credits added" in t]) == 2
        assert shop.db.call(inbox.is_done, 990001)

    async def test_checkout_for_a_changed_price_is_refused(self, shop: BotHarness) -> None:
        tg = shop.tg
        cat = tg.user(9103, "Cat", "ru")
        invoice = await invoice_for(shop, cat)
        admin = tg.user(ADMIN_ID, "Root", "en")
        with shop.db.session() as s:
            pack_id = s.scalar(select(Pack.id))
        tg.send_text(admin, f"/pack_edit {pack_id} 3 45")
        await tg.wait_text(admin.id, "Saved: #")
        assert await tg.pay(cat, invoice) is None
        answer = tg.calls_to("answerPreCheckoutQuery")[-1]
        assert answer.params["ok"] is False
        assert answer.params["error_message"] == translate("ru", "pay.refused.price_changed")
        assert credits_of(shop, cat.id) == 0

    async def test_a_banned_user_cannot_pay(self, shop: BotHarness) -> None:
        tg = shop.tg
        dan = tg.user(9104, "Dan", "en")
        invoice = await invoice_for(shop, dan)
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, f"/ban {dan.id}")
        await tg.wait_text(admin.id, "is banned")
        answer = await tg.checkout(dan, invoice.params["payload"], 30)
        assert answer.params["ok"] is False
        assert answer.params["error_message"] == translate("en", "pay.refused.banned")
        assert credits_of(shop, dan.id) == 0

    async def test_a_refused_checkout_does_not_use_up_the_ban_notice(
        self, shop: BotHarness
    ) -> None:
        tg = shop.tg
        dan = tg.user(9107, "Dan", "en")
        invoice = await invoice_for(shop, dan)
        with shop.db.session() as s:
            s.scalar(select(User).where(User.telegram_id == dan.id)).is_banned = True
        answer = await tg.checkout(dan, invoice.params["payload"], 30)
        assert answer.params["ok"] is False
        # The refusal is all the payer saw; the ban notice is still theirs to read, once.
        since = len(tg.calls)
        tg.send_text(dan, "/balance")
        await tg.wait_text(dan.id, translate("en", "error.banned"), since=since)
        tg.send_text(dan, "/buy")
        await tg.idle()
        assert tg.sent_texts(dan.id).count(translate("en", "error.banned")) == 1

    async def test_money_paid_before_a_ban_is_still_credited(self, shop: BotHarness) -> None:
        tg = shop.tg
        eve = tg.user(9105, "Eve", "en")
        invoice = await invoice_for(shop, eve)
        answer = await tg.checkout(eve, invoice.params["payload"], 30)
        assert answer.params["ok"] is True
        with shop.db.session() as s:
            s.scalar(select(User).where(User.telegram_id == eve.id)).is_banned = True
        tg.successful_payment(eve, invoice.params["payload"], 30)
        await tg.idle()
        assert credits_of(shop, eve.id) == 3

    async def test_forged_pack_button_is_refused(self, shop: BotHarness) -> None:
        tg = shop.tg
        fay = tg.user(9106, "Fay", "en")
        tg.send_text(fay, "/buy")
        await tg.wait_text(fay.id, "Pick a pack")
        menu = tg.bot_messages(fay.id)[-1]
        tg.press(fay, menu, "bp:999")
        await tg.wait_text(fay.id, translate("en", "pay.refused.pack_gone"))
        tg.press(fay, menu, "bp:x")
        await tg.idle()
        assert not tg.calls_to("sendInvoice", chat_id=fay.id)

    async def test_quota_used_up_offers_the_packs(self, shop: BotHarness) -> None:
        tg = shop.tg
        gil = tg.user(9107, "Gil", "en")
        give_selfie(shop, gil.id)
        await pick_first_style(shop, gil)
        refusal = await tg.wait_text(
            gil.id,
            "You've used today's 0 free generations, and this costs 1 credit (you have 0). "
            "Buy credits below or come back after midnight UTC.",
        )
        assert jobs_of(shop, gil.id) == []
        message = tg.bot_messages(gil.id)[-1]
        assert refusal.params["reply_markup"]
        tg.press(gil, message, button_data(message, translate("en", "btn.buy")))
        await tg.wait_text(gil.id, "Pick a pack")

    async def test_a_forwarded_invoice_links_to_the_packs_not_to_a_payment(
        self, shop: BotHarness
    ) -> None:
        """The invoice carries a start parameter, so a forwarded copy shows a link to the bot
        (`/start buy`) instead of a Pay button; the link opens the packs in the friend's own
        chat with the bot, where the invoice is theirs."""
        tg = shop.tg
        hal = tg.user(9108, "Hal", "en")
        invoice = await invoice_for(shop, hal)
        assert invoice.params["start_parameter"] == "buy"
        ivy = tg.user(9109, "Ivy", "en")
        since = len(tg.calls)
        tg.send_text(ivy, "/start buy")
        await tg.wait_text(ivy.id, translate("en", "start.welcome", name="Ivy"), since=since)
        await tg.wait_text(ivy.id, "Pick a pack", since=since)
        tg.press_button(ivy, tg.bot_messages(ivy.id)[-1], "Small")
        own = await tg.wait_for("sendInvoice", chat_id=ivy.id, since=since)
        assert own.params["payload"] != invoice.params["payload"]
        with shop.db.session() as s:
            row = s.scalar(select(Invoice).where(Invoice.payload == own.params["payload"]))
            assert row is not None
            assert row.telegram_id == ivy.id


class TestRefunds:
    async def test_admin_refund_debits_unspent_credits(self, shop: BotHarness) -> None:
        tg = shop.tg
        hal = tg.user(9201, "Hal", "en")
        give_selfie(shop, hal.id)
        charge = await buy(shop, hal)
        # Two credits spent on portraits that succeed; one left.
        for _ in range(2):
            since = len(tg.calls)
            await pick_first_style(shop, hal)
            await tg.wait_text(hal.id, "in the queue", since=since)
            job = jobs_of(shop, hal.id)[-1]
            shop.db.call(lifecycle.claim, job.id, "gpu-1")
            shop.db.call(lifecycle.finish, job.id, lifecycle.JobOutcome(["k"]), None)
        assert credits_of(shop, hal.id) == 1
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, f"/refund {charge}")
        done = await tg.wait_text(admin.id, "Refunded 30")
        assert (
            "⚠️ 2 of the payment's credits were already spent and could not be taken back."
        ) in done.params["text"]
        refund = tg.calls_to("refundStarPayment")[-1]
        assert refund.params == {"user_id": hal.id, "telegram_payment_charge_id": charge}
        await tg.wait_text(
            hal.id,
            (
                "↩️ Your payment of 30 ⭐ was refunded; 1 credit was taken back. "
                "Your balance: 0 credits."
            ),
        )
        assert credits_of(shop, hal.id) == 0
        # Telegram's refunded_payment update that follows changes nothing.
        tg.refunded_payment(hal, charge)
        await tg.idle()
        assert credits_of(shop, hal.id) == 0
        assert ledger_of(shop, hal.id)[-1] == (LedgerKind.REFUND, -1)
        # A second /refund is told, not repeated at Telegram.
        tg.send_text(admin, f"/refund {charge}")
        await tg.wait_text(admin.id, "already refunded")
        assert len(tg.calls_to("refundStarPayment")) == 1

    async def test_admin_finds_a_payment_and_refunds_it_by_its_number(
        self, shop: BotHarness
    ) -> None:
        """/payments lists a user's payments with their charge ids; /refund takes one, or the
        payment's #number from that list."""
        tg = shop.tg
        kim = tg.user(9203, "Kim", "en", username="kim_buys")
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/payments @kim_buys")
        await tg.wait_text(admin.id, translate("en", "error.not_found"))
        tg.send_text(kim, "/start")
        await tg.wait_text(kim.id, translate("en", "start.welcome", name="Kim"))
        since = len(tg.calls)
        tg.send_text(admin, "/payments @kim_buys")
        await tg.wait_text(
            admin.id, translate("en", "admin.payments_none", user=kim.id), since=since
        )
        charge = await buy(shop, kim)
        with shop.db.session() as s:
            payment = s.scalar(select(Payment).where(Payment.charge_id == charge))
            assert payment is not None
            number, at = payment.id, payment.created_at
        since = len(tg.calls)
        tg.send_text(admin, "/payments @kim_buys")
        listed = await tg.wait_text(
            admin.id, translate("en", "admin.payments_header", user=kim.id), since=since
        )
        line = f"#{number} · {at:%Y-%m-%d %H:%M} UTC · Small: 30 ⭐ → 3 credits · {charge}"
        assert listed.params["text"].splitlines()[1] == line
        tg.send_text(admin, f"/refund #{number}")
        await tg.wait_text(admin.id, "Refunded 30")
        refund = tg.calls_to("refundStarPayment")[-1]
        assert refund.params == {"user_id": kim.id, "telegram_payment_charge_id": charge}
        assert credits_of(shop, kim.id) == 0
        since = len(tg.calls)
        tg.send_text(admin, f"/payments {kim.id}")
        listed = await tg.wait_text(
            admin.id, translate("en", "admin.payments_header", user=kim.id), since=since
        )
        assert "refunded" in listed.params["text"]
        for wrong in ("/payments", "/payments a b"):
            since = len(tg.calls)
            tg.send_text(admin, wrong)
            await tg.wait_text(admin.id, translate("en", "admin.payments_usage"), since=since)
        # Not an admin: the command does not exist for them.
        tg.send_text(kim, "/payments @kim_buys")
        await tg.wait_text(kim.id, translate("en", "fallback.unknown_command"))

    async def test_refunded_payment_update_debits_and_tells_the_admin(
        self, shop: BotHarness
    ) -> None:
        tg = shop.tg
        ivy = tg.user(9202, "Ivy", "en")
        give_selfie(shop, ivy.id)
        charge = await buy(shop, ivy)
        await pick_first_style(shop, ivy)
        await tg.wait_text(ivy.id, "in the queue")
        tg.refunded_payment(ivy, charge)
        await tg.wait_text(
            ivy.id,
            (
                "↩️ Your payment of 30 ⭐ was refunded; 2 credits were taken back. "
                "Your balance: 0 credits."
            ),
        )
        await tg.wait_text(ADMIN_ID, "already spent: 1")
        with shop.db.session() as s:
            payment = s.scalar(select(Payment).where(Payment.charge_id == charge))
            assert (payment.refund_debited, payment.refund_shortfall) == (2, 1)
            assert billing.ledger_mismatches(s) == []
        # The job still queued is not affected; it keeps running on its spent credit.
        [job] = jobs_of(shop, ivy.id)
        assert job.status is JobStatus.QUEUED

    async def test_refund_of_a_payment_never_recorded_is_audited_not_answered(
        self, shop: BotHarness
    ) -> None:
        tg = shop.tg
        joe = tg.user(9203, "Joe", "en")
        invoice = await invoice_for(shop, joe)
        # Telegram took the money, the update was lost, then Telegram refunded it.
        charge = tg.lost_payment(joe, invoice.params["payload"], 30)
        tg.refund_charge(charge)
        since = len(tg.calls)
        tg.refunded_payment(joe, charge)
        notice = translate(None, "admin.refund_unrecorded", charge=charge, stars=30, user=joe.id)
        await tg.wait_text(ADMIN_ID, notice, since=since)
        tg.refunded_payment(joe, charge)  # sent again: recorded once, told once
        await tg.idle()
        # The payer sees Telegram's own refund message and nothing from the bot.
        assert not [c for c in tg.calls[since:] if c.chat_id == joe.id]
        assert tg.sent_texts(ADMIN_ID).count(notice) == 1
        assert credits_of(shop, joe.id) == 0
        assert ledger_of(shop, joe.id) == []
        with shop.db.session() as s:
            assert s.scalars(select(Payment)).all() == []
            [entry] = s.scalars(
                select(AuditEntry).where(AuditEntry.action == "payment.refund_unrecorded")
            ).all()
            assert entry.target == f"charge:{charge}"
            assert entry.details["telegram_id"] == joe.id
            assert entry.details["stars"] == 30


class TestReconcile:
    async def test_a_payment_whose_update_was_lost_is_credited_once(
        self, shop: BotHarness
    ) -> None:
        tg = shop.tg
        max_ = tg.user(9601, "Max", "en")
        invoice = await invoice_for(shop, max_)
        answer = await tg.checkout(max_, invoice.params["payload"], 30)
        assert answer.params["ok"] is True
        lost = tg.lost_payment(max_, invoice.params["payload"], 30)
        # Another payment that was refunded at Telegram is not credited.
        refunded = tg.lost_payment(max_, invoice.params["payload"], 30)
        tg.refund_charge(refunded)
        await tg.idle()
        assert credits_of(shop, max_.id) == 0
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/reconcile")
        await tg.wait_text(
            admin.id,
            (
                "Reconciled with Telegram: 1 payment that was never recorded is credited now "
                "(30 ⭐)."
            ),
        )
        await tg.wait_text(max_.id, "✅ Thank you! 3 credits added. Your balance: 3 credits.")
        assert credits_of(shop, max_.id) == 3
        with shop.db.session() as s:
            assert [p.charge_id for p in s.scalars(select(Payment))] == [lost]
        since = len(tg.calls)
        tg.send_text(admin, "/reconcile")
        await tg.wait_text(
            admin.id, ntranslate("en", "admin.reconcile_done", 0, stars=0), since=since
        )
        assert credits_of(shop, max_.id) == 3
        # Refunded at Telegram later, the refunded_payment update lost: the next /reconcile
        # debits it and says so.
        tg.refund_charge(lost)
        with shop.db.session() as s:
            payment_id = s.scalar(select(Payment.id).where(Payment.charge_id == lost))
        since = len(tg.calls)
        tg.send_text(admin, "/reconcile")
        told = await tg.wait_text(
            admin.id, ntranslate("en", "admin.reconcile_done", 0, stars=0), since=since
        )
        refunds = ntranslate(
            "en",
            "admin.reconcile_refunds",
            1,
            stars=30,
            debited=3,
            shortfall=0,
            payments=str(payment_id),
        )
        assert told.params["text"].splitlines()[1] == refunds
        await tg.wait_text(
            max_.id,
            "↩️ Your payment of 30 ⭐ was refunded; 3 credits were taken back. "
            "Your balance: 0 credits.",
            since=since,
        )
        assert credits_of(shop, max_.id) == 0


class TestForget:
    @pytest.mark.parametrize("keep", [False, True])
    async def test_forget_takes_credits_and_old_invoices(
        self, harness: BotHarness, keep: bool
    ) -> None:
        harness.payments = PAID.model_copy(update={"forget_keeps_payment_records": keep})
        await harness.start(daily_quota=0)
        with harness.db.session() as s:
            s.add(Pack(title="Small", credits=3, stars=30, enabled=True, position=1))
        tg = harness.tg
        lea = tg.user(9501, "Lea", "en")
        await buy(harness, lea)
        old_invoice = await invoice_for(harness, lea)
        since = len(tg.calls)
        tg.send_text(lea, "/forget")
        await tg.wait_text(lea.id, translate("en", "forget.confirm"), since=since)
        tg.press_button(lea, tg.bot_messages(lea.id)[-1], translate("en", "btn.forget_yes"))
        await tg.idle()
        assert credits_of(harness, lea.id) == 0
        assert ledger_of(harness, lea.id) == []
        with harness.db.session() as s:
            kept = s.scalars(select(Payment).where(Payment.telegram_id == lea.id)).all()
            assert len(kept) == (1 if keep else 0)
            assert billing.ledger_mismatches(s) == []
        # An invoice issued before /forget is refused at checkout.
        answer = await tg.checkout(lea, old_invoice.params["payload"], 30)
        assert answer.params["ok"] is False
        assert answer.params["error_message"] == translate("en", "pay.refused.forgotten")

    async def test_forget_confirmation_warns_of_unspent_credits(self, shop: BotHarness) -> None:
        tg = shop.tg
        lea = tg.user(9511, "Lea", "en")
        await buy(shop, lea)
        with shop.db.session() as s:
            make_user(s, telegram_id=9512, language="zh")
            billing.grant_credits(s, 9512, 2, "test")
        mei = tg.user(9512, "Mei", "zh")
        nia = tg.user(9513, "Nia", "en")
        for user, credits in ((lea, 3), (mei, 2), (nia, 0)):
            since = len(tg.calls)
            tg.send_text(user, "/forget")
            lang = user.language_code
            call = await tg.wait_text(user.id, translate(lang, "forget.confirm"), since=since)
            warning = ntranslate(lang, "forget.credits_lost", credits)
            # Only a user with credits is told how many go with the rest.
            assert (warning in call.params["text"]) is (credits > 0), call.params["text"]
        # Nothing was deleted by asking.
        assert credits_of(shop, lea.id) == 3

    async def test_forget_confirmation_says_nothing_of_credits_with_payments_off(
        self, bot: BotHarness
    ) -> None:
        with bot.db.session() as s:
            make_user(s, telegram_id=9514, language="en")
            billing.grant_credits(s, 9514, 4, "test")
        tg = bot.tg
        ola = tg.user(9514, "Ola", "en")
        tg.send_text(ola, "/forget")
        call = await tg.wait_text(ola.id, translate("en", "forget.confirm"))
        assert call.params["text"] == translate("en", "forget.confirm")


class TestSellerRules:
    async def test_terms_and_paysupport(self, shop: BotHarness) -> None:
        tg = shop.tg
        ru = tg.user(9301, "Рита", "ru")
        en = tg.user(9302, "Ed", "en")
        tg.send_text(ru, "/terms")
        await tg.wait_text(ru.id, "Условия оператора.")
        tg.send_text(en, "/terms")
        await tg.wait_text(en.id, "Operator terms.")
        tg.send_text(ru, "/paysupport")
        await tg.wait_text(ru.id, translate("ru", "paysupport.default"))

    async def test_nothing_shows_with_payments_off(self, bot: BotHarness) -> None:
        tg = bot.tg
        jo = tg.user(9303, "Jo", "en")
        for command in ("/buy", "/balance", "/terms", "/paysupport"):
            since = len(tg.calls)
            tg.send_text(jo, command)
            await tg.wait_text(jo.id, translate("en", "fallback.unknown_command"), since=since)
        since = len(tg.calls)
        tg.send_text(jo, "/start buy")
        await tg.wait_text(jo.id, translate("en", "start.welcome", name="Jo"), since=since)
        await tg.idle()
        # The welcome only: no packs with payments off.
        assert tg.sent_texts(jo.id)[-1] == translate("en", "start.welcome", name="Jo")
        tg.send_text(jo, "/help")
        help_text = await tg.wait_text(jo.id, "What I can do")
        assert "/buy" not in help_text.params["text"]
        menus = tg.calls_to("setMyCommands")
        assert menus
        assert all(c["command"] != "buy" for m in menus for c in m.params["commands"])
        # A stray checkout is answered (refused) at once, never left to time out.
        answer = await tg.checkout(jo, "pk:1:3:30:1:1", 30)
        assert answer.params["ok"] is False
        assert answer.params["error_message"] == translate("en", "pay.refused.disabled")

    async def test_menu_lists_the_payment_commands(self, shop: BotHarness) -> None:
        menus = shop.tg.calls_to("setMyCommands")
        names = {c["command"] for m in menus for c in m.params["commands"]}
        assert {"buy", "balance", "terms", "paysupport"} <= names


class TestAdminPacks:
    async def test_pack_commands_and_grant(self, shop: BotHarness) -> None:
        tg = shop.tg
        admin = tg.user(ADMIN_ID, "Root", "en")
        tg.send_text(admin, "/pack_add 10 90 Big pack")
        await tg.wait_text(admin.id, "Big pack: 10 credits for 90")
        tg.send_text(admin, "/pack_add ten 90 X")
        await tg.wait_text(admin.id, translate("en", "admin.pack_add_usage"))
        # Digits Python's isdigit() takes but int() does not: the usage, not an internal error.
        before = len(tg.calls)
        tg.send_text(admin, "/pack_add \u00b2 90 X")
        await tg.wait_text(admin.id, translate("en", "admin.pack_add_usage"), since=before)
        with shop.db.session() as s:
            big = s.scalar(select(Pack.id).where(Pack.title == "Big pack"))
        tg.send_text(admin, f"/pack_off {big}")
        await tg.wait_text(admin.id, "(off)")
        tg.send_text(admin, "/packs")
        listing = await tg.wait_text(admin.id, "Packs:")
        assert "Small" in listing.params["text"]
        kim = tg.user(9401, "Kim", "en")
        tg.send_text(kim, "/buy")
        await tg.wait_text(kim.id, "Pick a pack")
        labels = [label for label, _ in buttons(tg.bot_messages(kim.id)[-1])]
        assert labels == ["Small: 3 credits for 30 ⭐"]
        tg.send_text(admin, f"/grant {kim.id} 4")
        await tg.wait_text(admin.id, f"Credits of {kim.id}: 4")
        before = len(tg.calls)
        tg.send_text(admin, f"/grant {kim.id} +-5")
        await tg.wait_text(admin.id, translate("en", "admin.grant_usage"), since=before)
        tg.send_text(admin, f"/grant {kim.id} -5")
        await tg.wait_text(
            admin.id, "The user has only 4 credits; a balance cannot go below zero."
        )
        assert credits_of(shop, kim.id) == 4
        # Not for everyone.
        tg.send_text(kim, "/packs")
        await tg.wait_text(kim.id, translate("en", "fallback.unknown_command"))
