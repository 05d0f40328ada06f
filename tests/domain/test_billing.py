"""Paid generations: charging jobs (free quota, then credits), giving charges back on every final
path, payments exactly once, refunds that never go negative, and a ledger that always agrees
with the balances (property test), plus the credit race on real PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core.errors import CreditsNeeded, QuotaExceeded, caused_by_user
from core.settings import LimitsSettings, PaymentsSettings
from db.base import utcnow
from db.models import (
    AuditEntry,
    ChargeKind,
    Invoice,
    Job,
    JobKind,
    JobStatus,
    LedgerEntry,
    LedgerKind,
    Payment,
    Photo,
    PhotoKind,
    ServiceState,
    User,
)
from db.session import Database
from domain import billing, jobs, lifecycle
from domain.billing import refunds as billing_refunds
from tests.conftest import migrate
from tests.utils.factories import make_style, make_user

PAY = PaymentsSettings(enabled=True, price_portrait=1, price_template=2, price_upscale=1)
_ids = itertools.count(50_000)


def _user(session: Session, **kw: Any) -> User:
    user = make_user(session, next(_ids), **kw)
    session.add(
        Photo(
            user_id=user.id,
            kind=PhotoKind.SELFIE,
            sha256=f"{user.id:064x}",
            size_bytes=1,
            width=512,
            height=512,
            faces=[{"box": [0, 0, 100, 100], "score": 0.99}],
            selected_face=0,
        )
    )
    session.flush()
    return user


def _style(session: Session) -> int:
    return make_style(session, slug=f"s{next(_ids)}").id


def _portrait(
    session: Session,
    user: User,
    style_id: int,
    *,
    quota: int = 0,
    payments: PaymentsSettings = PAY,
    active: int = 5,
) -> jobs.CreatedJob:
    return jobs.create_portrait_job(
        session,
        user.id,
        style_id=style_id,
        chat_id=user.telegram_id,
        limits=LimitsSettings(daily_quota=quota, active_jobs_per_user=active),
        is_admin=False,
        num_images=1,
        payments=payments,
    )


def _buy(session: Session, user: User, credits: int, charge: str | None = None) -> int:
    pack = billing.create_pack(session, title="p", credits=credits, stars=credits * 10, actor="t")
    payload = billing.issue_invoice(session, user.id, pack.id, PAY).payload
    result = billing.record_payment(
        session, user.telegram_id, payload, pack.stars, charge or f"ch{next(_ids)}"
    )
    return result.payment_id


def _credits(session: Session, user: User) -> int:
    session.flush()
    return int(session.scalar(select(User.credits).where(User.id == user.id)) or 0)


def _ledger(session: Session, user: User) -> list[tuple[LedgerKind, int]]:
    session.flush()
    rows = session.scalars(
        select(LedgerEntry).where(LedgerEntry.user_id == user.id).order_by(LedgerEntry.id)
    )
    return [(r.kind, r.delta) for r in rows]


class TestCharging:
    def test_free_quota_first_then_credits(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 2)
        first = session.get(Job, _portrait(session, user, style, quota=1).job_id)
        second = session.get(Job, _portrait(session, user, style, quota=1).job_id)
        assert first is not None
        assert second is not None
        assert (first.charge, first.charge_credits) == (ChargeKind.QUOTA.value, 0)
        assert (second.charge, second.charge_credits) == (ChargeKind.CREDITS.value, 1)
        assert _credits(session, user) == 1
        assert _ledger(session, user) == [(LedgerKind.PURCHASE, 2), (LedgerKind.SPEND, -1)]

    def test_no_credits_left(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        with pytest.raises(CreditsNeeded) as caught:
            _portrait(session, user, style)
        assert caught.value.details == {"quota": 0, "price": 1, "credits": 0}

    def test_payments_off_means_quota_only(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 3)
        off = PaymentsSettings(enabled=False)
        with pytest.raises(QuotaExceeded) as caught:
            _portrait(session, user, style, payments=off)
        assert not isinstance(caught.value, CreditsNeeded)
        assert _credits(session, user) == 3

    def test_template_and_upscale_prices(self, session: Session) -> None:
        user = _user(session)
        _buy(session, user, 3)
        source = Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={},
            status=JobStatus.SUCCEEDED,
            result_blobs=["a"],
        )
        session.add(source)
        session.flush()
        up = jobs.create_upscale_job(
            session,
            user.id,
            source_job_id=source.id,
            index=0,
            size=2048,
            chat_id=1,
            limits=LimitsSettings(daily_quota=5),
            is_admin=False,
            payments=PAY,
        )
        # HD is outside the free quota: it costs its own price even with quota left.
        assert session.get(Job, up.job_id).charge_credits == 1  # type: ignore[union-attr]
        assert _credits(session, user) == 2
        free = jobs.create_upscale_job(
            session,
            user.id,
            source_job_id=source.id,
            index=0,
            size=2048,
            chat_id=1,
            limits=LimitsSettings(daily_quota=5, active_jobs_per_user=5),
            is_admin=False,
            payments=PaymentsSettings(enabled=True, price_upscale=0),
        )
        assert session.get(Job, free.job_id).charge is None  # type: ignore[union-attr]

    def test_template_costs_its_own_price(self, session: Session) -> None:
        user = _user(session)
        _buy(session, user, 3)
        photo = Photo(
            user_id=user.id,
            kind=PhotoKind.TEMPLATE,
            sha256=f"t{user.id:063x}",
            size_bytes=1,
            width=512,
            height=512,
            faces=[{"box": [0, 0, 100, 100], "score": 0.99}],
        )
        session.add(photo)
        session.flush()

        def template() -> Job:
            created = jobs.create_template_job(
                session,
                user.id,
                faces=[0],
                chat_id=1,
                limits=LimitsSettings(daily_quota=0, active_jobs_per_user=5),
                is_admin=False,
                template_photo_id=photo.id,
                payments=PAY,
            )
            job = session.get(Job, created.job_id)
            assert job is not None
            return job

        assert template().charge_credits == 2
        assert _credits(session, user) == 1
        with pytest.raises(CreditsNeeded) as caught:
            template()
        assert caught.value.details["price"] == 2

    def test_admin_pays_nothing(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        created = jobs.create_portrait_job(
            session,
            user.id,
            style_id=style,
            chat_id=1,
            limits=LimitsSettings(daily_quota=0),
            is_admin=True,
            num_images=1,
            payments=PAY,
        )
        assert session.get(Job, created.job_id).charge is None  # type: ignore[union-attr]


def _job(session: Session, user: User, style: int, *, quota: int = 0) -> Job:
    job = session.get(Job, _portrait(session, user, style, quota=quota).job_id)
    assert job is not None
    return job


class TestGiveBack:
    """Every final path of a job settles its charge where it ends (the flush hook backs it)."""

    def test_worker_error_gives_the_credit_back_once(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 1)
        job = _job(session, user, style)
        assert _credits(session, user) == 0
        lifecycle.claim(session, job.id, "host")
        lifecycle.finish(session, job.id, None, ("engine_unavailable", "no gpu"))
        assert _credits(session, user) == 1
        assert job.charge_returned_at is not None
        # A retry that fails again gives nothing more.
        jobs.retry_job(session, job.id, "admin")
        lifecycle.claim(session, job.id, "host")
        lifecycle.finish(session, job.id, None, ("internal", "boom"))
        assert _credits(session, user) == 1
        assert _ledger(session, user)[-1] == (LedgerKind.GIVEBACK, 1)
        assert billing.ledger_mismatches(session) == []

    def test_quota_counts_only_success_and_user_failures(self, session: Session) -> None:
        """Issue 12: a worker's failure does not use up the day's free generation."""
        user, style = _user(session), _style(session)
        off = PaymentsSettings(enabled=False)
        crashed = _portrait(session, user, style, quota=1, payments=off).job_id
        lifecycle.claim(session, crashed, "host")
        lifecycle.finish(session, crashed, None, ("internal", "worker crash"))
        blamed = _portrait(session, user, style, quota=1, payments=off).job_id
        lifecycle.claim(session, blamed, "host")
        lifecycle.finish(session, blamed, None, ("multiple_faces", "two faces"))
        with pytest.raises(QuotaExceeded):
            _portrait(session, user, style, quota=1, payments=off)

    def test_user_input_failure_keeps_the_charge(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 1)
        job = _job(session, user, style)
        lifecycle.claim(session, job.id, "host")
        lifecycle.finish(session, job.id, None, ("no_face", "none found"))
        assert _credits(session, user) == 0
        assert job.charge_returned_at is None

    def test_unclaimed_failure_and_sweep_timeout(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 2)
        first = _job(session, user, style)
        lifecycle.fail_unclaimed(session, first.id, "weights_missing", "no weights")
        assert _credits(session, user) == 2
        second = _job(session, user, style)
        lifecycle.claim(session, second.id, "host")
        second.started_at = utcnow() - timedelta(hours=2)
        second.updated_at = utcnow()
        session.flush()
        plan = lifecycle.sweep(
            session, outbox_grace=timedelta(seconds=30), time_limit=timedelta(minutes=15)
        )
        assert second.id in plan.failed
        assert _credits(session, user) == 2

    def test_cancel_before_running_returns_quota_slot_and_credit(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 1)
        slot = _job(session, user, style, quota=1)
        assert billing.quota_used(session, user.id) == 1
        assert jobs.cancel_for_user(session, user.id, slot.id) == jobs.CancelOutcome.CANCELLED
        assert billing.quota_used(session, user.id) == 0
        paid = _job(session, user, style, quota=0)
        assert _credits(session, user) == 0
        jobs.cancel_job(session, paid.id, "admin")
        assert _credits(session, user) == 1

    def test_cancel_while_running_keeps_the_slot_and_the_credits(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 1)
        slot = _job(session, user, style, quota=1)
        paid = _job(session, user, style, quota=1)
        for job in (slot, paid):
            lifecycle.claim(session, job.id, "host")
            lifecycle.finish(session, job.id, None, None, cancelled=True)
        assert billing.quota_used(session, user.id) == 1
        assert _credits(session, user) == 0
        assert slot.charge_returned_at is None
        assert paid.charge_returned_at is None

    def test_cancelling_running_jobs_cannot_repeat_the_free_slot(self, session: Session) -> None:
        """The abuse: cancel each job just before it ends, and paint forever on one free slot
        (on dbcd432 five jobs ran with `quota_used` 0 and `daily_quota=1`)."""
        user, style = _user(session), _style(session)
        off = PaymentsSettings(enabled=False)
        ran = 0
        for _ in range(5):
            try:
                job_id = _portrait(session, user, style, quota=1, payments=off).job_id
            except QuotaExceeded:
                break
            lifecycle.claim(session, job_id, "host")
            lifecycle.finish(session, job_id, None, None, cancelled=True)
            ran += 1
        assert ran == 1
        assert billing.quota_used(session, user.id) == 1

    def test_a_job_gives_back_where_it_ends_not_at_the_next_flush(self, session: Session) -> None:
        """Issue 25: the paths that end a job call the give-back themselves; the flush hook is
        only the backstop (on 9da537c these charges stayed unsettled until a flush)."""
        user, style = _user(session), _style(session)
        _buy(session, user, 3)
        failed, cancelled, unclaimed = (_job(session, user, style) for _ in range(3))
        lifecycle.claim(session, failed.id, "host")
        session.flush()
        with session.no_autoflush:
            lifecycle.finish(session, failed.id, None, ("internal", "boom"))
            assert failed.charge_returned_at is not None
            jobs.cancel_for_user(session, user.id, cancelled.id)
            assert cancelled.charge_returned_at is not None
            lifecycle.fail_unclaimed(session, unclaimed.id, "weights_missing", "no weights")
            assert unclaimed.charge_returned_at is not None
        assert _credits(session, user) == 3
        assert billing.ledger_mismatches(session) == []

    def test_success_keeps_the_charge(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        job = _job(session, user, style, quota=1)
        lifecycle.claim(session, job.id, "host")
        lifecycle.finish(session, job.id, lifecycle.JobOutcome(["k"]), None)
        assert billing.quota_used(session, user.id) == 1

    def test_a_second_giveback_row_is_refused_by_the_database(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        _buy(session, user, 1)
        job = _job(session, user, style)
        lifecycle.fail_unclaimed(session, job.id, "internal", "x")
        session.flush()
        duplicate = LedgerEntry(
            user_id=user.id, kind=LedgerKind.GIVEBACK, delta=1, balance=2, job_id=job.id
        )
        nested = session.begin_nested()
        session.add(duplicate)
        with pytest.raises(IntegrityError):
            session.flush()
        nested.rollback()

    def test_user_input_codes_match_the_engine(self) -> None:
        from facechain import errors as fe

        for cls in (fe.NotAnImage, fe.NoFace, fe.MultipleFaces, fe.FaceTooSmall, fe.PoorQuality):
            assert caused_by_user(cls.code)
        for cls in (fe.WeightsMissing, fe.WeightsInvalid, fe.FaceChainError):
            assert not caused_by_user(cls.code)
        assert not caused_by_user("timed_out")
        assert not caused_by_user(None)


class TestPayments:
    def _pack(self, session: Session, credits: int = 5, stars: int = 50) -> Any:
        return billing.create_pack(session, title="Five", credits=credits, stars=stars, actor="t")

    def test_checkout_rechecks_everything(self, session: Session) -> None:
        user = _user(session)
        pack = self._pack(session)
        payload = billing.issue_invoice(session, user.id, pack.id, PAY).payload

        def verdict(total: int = 50, currency: str = "XTR", who: int | None = None) -> Any:
            return billing.check_checkout(
                session, who or user.telegram_id, payload, currency, total, PAY
            )

        assert verdict() is None
        assert verdict(total=49) == "invalid"
        assert verdict(currency="USD") == "invalid"
        assert verdict(who=_user(session).telegram_id) == "invalid"
        assert (
            billing.check_checkout(
                session, user.telegram_id, payload, "XTR", 50, PaymentsSettings()
            )
            == "disabled"
        )
        billing.update_pack(session, pack.id, {"stars": 60}, "admin")
        assert verdict() == "price_changed"
        assert verdict(total=60) == "invalid"
        billing.update_pack(session, pack.id, {"stars": 50, "enabled": False}, "admin")
        assert verdict() == "pack_gone"
        billing.update_pack(session, pack.id, {"enabled": True}, "admin")
        user.is_banned = True
        assert verdict() == "banned"
        user.is_banned = False
        billing.forget_billing(session, user.id, keep_payment_records=True)
        assert verdict() == "forgotten"

    def test_only_an_invoice_we_issued_credits_and_only_on_its_terms(
        self, session: Session
    ) -> None:
        """Credits come from the invoice row, never from the payload's own numbers: a forged
        payload, another user's invoice, another amount or currency, or an invoice paid
        already credit nothing; each payment is kept with its reason and audited."""
        user, other = _user(session), _user(session)
        pack = self._pack(session)
        forged = f"pk:999:1000000:1:{user.id}:0"
        # The old format with today's time and a real pack: issued after invoices were rows.
        fresh = billing.invoice_payload(pack, user.id, int(utcnow().timestamp() * 1000))
        invoice = billing.issue_invoice(session, user.id, pack.id, PAY)
        assert invoice.payload.startswith("inv:")
        assert (invoice.credits, invoice.stars, invoice.currency) == (5, 50, "XTR")
        assert invoice.expires_at - invoice.issued_at == timedelta(days=1)
        assert str(pack.id) not in invoice.payload.removeprefix("inv:").split(":")
        theirs = billing.issue_invoice(session, other.id, pack.id, PAY)

        def pay(payload: str, stars: int = 50, currency: str = "XTR") -> billing.PaymentResult:
            return billing.record_payment(
                session, user.telegram_id, payload, stars, f"u{next(_ids)}", None, currency
            )

        assert billing.check_checkout(session, user.telegram_id, forged, "XTR", 1, PAY) == (
            "invalid"
        )
        assert pay(forged, 1).unmatched == "no_invoice"
        assert pay(fresh).unmatched == "no_invoice"
        assert pay(theirs.payload).unmatched == "payer"
        assert pay(invoice.payload, 1).unmatched == "amount"
        assert pay(invoice.payload, 50, "USD").unmatched == "currency"
        assert _credits(session, user) == 0
        paid = pay(invoice.payload)
        assert (paid.unmatched, paid.credits, paid.balance) == (None, 5, 5)
        assert pay(invoice.payload).unmatched == "paid"
        assert billing.check_checkout(
            session, user.telegram_id, invoice.payload, "XTR", 50, PAY
        ) == ("paid")
        assert _credits(session, user) == 5
        assert _ledger(session, user) == [(LedgerKind.PURCHASE, 5)]
        rows = session.scalars(select(Payment).order_by(Payment.id)).all()
        assert [(r.unmatched, r.credits) for r in rows] == [
            ("no_invoice", 0),
            ("no_invoice", 0),
            ("payer", 0),
            ("amount", 0),
            ("currency", 0),
            (None, 5),
            ("paid", 0),
        ]
        audited = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "payment.unmatched")
        ).all()
        assert [a.details["reason"] for a in audited] == [
            "no_invoice",
            "no_invoice",
            "payer",
            "amount",
            "currency",
            "paid",
        ]
        assert audited[0].details["payload"] == forged
        assert billing.ledger_mismatches(session) == []

    def test_an_invoice_expires_at_checkout_only(self, session: Session) -> None:
        user = _user(session)
        pack = self._pack(session)
        old = billing.issue_invoice(
            session, user.id, pack.id, PAY, now=utcnow() - timedelta(days=1, seconds=1)
        )
        assert (
            billing.check_checkout(session, user.telegram_id, old.payload, "XTR", 50, PAY)
            == "expired"
        )
        # Paid all the same (accepted at a checkout just before it expired): credited.
        paid = billing.record_payment(session, user.telegram_id, old.payload, 50, "late")
        assert (paid.unmatched, paid.credits) == (None, 5)

    def test_old_payloads_match_during_the_grace_period_only(self, session: Session) -> None:
        """`pk:` invoices sent before the upgrade are paid from a row made for them while the
        grace period the migration set lasts, and only on their pack's current terms."""
        user = _user(session)
        pack = self._pack(session)
        # The migration writes this row; tests that commit empty every table, so set it here.
        now_ms = int(utcnow().timestamp() * 1000)
        state = session.merge(
            ServiceState(
                name=billing.LEGACY_INVOICES,
                value={"issued_before_ms": now_ms, "paid_until_ms": now_ms + 3_600_000},
            )
        )
        session.flush()
        old = billing.invoice_payload(pack, user.id, now_ms - 60_000)
        assert billing.check_checkout(session, user.telegram_id, old, "XTR", 50, PAY) is None
        paid = billing.record_payment(session, user.telegram_id, old, 50, "legacy-1")
        assert (paid.unmatched, paid.credits) == (None, 5)
        row = session.scalar(select(Invoice).where(Invoice.payload == old))
        assert row is not None
        assert row.paid_at is not None
        # Other terms than the pack's, or after the grace period: matched to nothing.
        changed = f"pk:{pack.id}:50:50:{user.id}:{now_ms - 30_000}"
        assert billing.record_payment(session, user.telegram_id, changed, 50, "l2").unmatched
        state.value = {"issued_before_ms": now_ms, "paid_until_ms": now_ms - 1}
        session.flush()
        late = billing.invoice_payload(pack, user.id, now_ms - 20_000)
        assert billing.check_checkout(session, user.telegram_id, late, "XTR", 50, PAY) == "invalid"
        assert billing.record_payment(session, user.telegram_id, late, 50, "l3").unmatched == (
            "no_invoice"
        )
        assert _credits(session, user) == 5

    def test_reconcile_keeps_unmatched_payments_and_credits_nothing(
        self, session: Session
    ) -> None:
        user = _user(session)
        forged = billing.StarPayment(
            "forged", user.telegram_id, "pk:999:1000000:1:1:0", 1, utcnow()
        )
        found = billing.reconcile_payments(session, [forged])
        assert found.credited == []
        [kept] = found.unmatched
        assert (kept.unmatched, kept.credits, kept.stars) == ("no_invoice", 0, 1)
        assert _credits(session, user) == 0
        again = billing.reconcile_payments(session, [forged])
        assert (again.credited, again.unmatched) == ([], [])

    def test_duplicate_charge_credits_once(self, session: Session) -> None:
        user = _user(session)
        pack = self._pack(session)
        payload = billing.issue_invoice(session, user.id, pack.id, PAY).payload
        first = billing.record_payment(session, user.telegram_id, payload, 50, "dup-1")
        again = billing.record_payment(session, user.telegram_id, payload, 50, "dup-1")
        assert (first.duplicate, again.duplicate) == (False, True)
        assert _credits(session, user) == 5
        assert _ledger(session, user) == [(LedgerKind.PURCHASE, 5)]

    def test_refund_debits_only_unspent_credits(self, session: Session) -> None:
        user, style = _user(session), _style(session)
        payment = _buy(session, user, 3)
        _job(session, user, style)
        _job(session, user, style)
        result = billing.refund_payment(session, payment, "admin")
        assert (result.debited, result.shortfall, result.balance) == (1, 2, 0)
        assert _credits(session, user) == 0
        again = billing.refund_payment(session, payment, "telegram")
        assert again.duplicate
        assert again.debited == 1
        assert _ledger(session, user)[-1] == (LedgerKind.REFUND, -1)
        row = session.get(Payment, payment)
        assert row is not None
        assert row.refund_shortfall == 2

    def test_a_spent_credit_a_refund_could_not_debit_is_not_given_back_later(
        self, session: Session
    ) -> None:
        """The refund counted the queued job's credit as spent (shortfall); when that job then
        fails through no fault of the user, its credit goes to the refund, not to the user,
        who already has their Stars back."""
        user, style = _user(session), _style(session)
        payment = _buy(session, user, 2)
        queued = _job(session, user, style)
        running = _job(session, user, style)
        lifecycle.claim(session, running.id, "host")
        result = billing.refund_payment(session, payment, "admin")
        assert (result.debited, result.shortfall) == (0, 2)
        jobs.cancel_job(session, queued.id, "admin")
        lifecycle.finish(session, running.id, None, ("internal", "boom"))
        assert _credits(session, user) == 0
        row = session.get(Payment, payment)
        assert row is not None
        session.refresh(row)
        assert (row.refund_debited, row.refund_shortfall) == (2, 0)
        assert queued.charge_returned_at is not None
        assert running.charge_returned_at is not None
        assert billing.ledger_mismatches(session) == []
        # A job paid after the refund gets its credit back as always.
        billing.grant_credits(session, user.telegram_id, 1, "admin")
        later = _job(session, user, style)
        lifecycle.fail_unclaimed(session, later.id, "internal", "x")
        assert _credits(session, user) == 1

    def test_refund_of_a_payment_forfeited_by_forget_takes_none_of_newer_credits(
        self, session: Session
    ) -> None:
        """/forget forfeited that payment's credits; refunding it later must not debit the
        credits of a pack bought after."""
        user = _user(session)
        before = _buy(session, user, 3)
        billing.forget_billing(session, user.id, keep_payment_records=True)
        session.flush()
        forgotten_at = session.scalar(select(User.forgotten_at).where(User.id == user.id))
        assert forgotten_at is not None
        old = session.get(Payment, before)
        assert old is not None
        old.created_at = forgotten_at - timedelta(minutes=1)
        _buy(session, user, 3)
        result = billing.refund_payment(session, before, "admin")
        assert (result.debited, result.shortfall) == (0, 0)
        assert _credits(session, user) == 3
        assert billing.ledger_mismatches(session) == []

    def test_grant_never_below_zero(self, session: Session) -> None:
        from core.errors import InsufficientCredits

        user = _user(session)
        billing.grant_credits(session, user.telegram_id, 2, "admin")
        with pytest.raises(InsufficientCredits):
            billing.grant_credits(session, user.telegram_id, -3, "admin")
        billing.grant_credits(session, user.telegram_id, -2, "admin")
        assert _credits(session, user) == 0

    def test_forget(self, session: Session) -> None:
        kept, gone = _user(session), _user(session)
        _buy(session, kept, 2)
        _buy(session, gone, 2)
        billing.forget_billing(session, kept.id, keep_payment_records=True)
        billing.forget_billing(session, gone.id, keep_payment_records=False)
        session.flush()
        for user, payments in ((kept, 1), (gone, 0)):
            assert _credits(session, user) == 0
            assert _ledger(session, user) == []
            count = session.scalars(select(Payment).where(Payment.user_id == user.id)).all()
            assert len(count) == payments
        assert billing.ledger_mismatches(session) == []

    def test_reconcile_skips_recorded_unknown_and_forgotten(self, session: Session) -> None:
        user, forgot = _user(session), _user(session)
        pack = self._pack(session)
        now = utcnow()

        def star(who: User | int, charge: str, when: Any = now) -> billing.StarPayment:
            telegram_id = who if isinstance(who, int) else who.telegram_id
            user_id = user.id if isinstance(who, int) else who.id
            payload = billing.issue_invoice(session, user_id, pack.id, PAY).payload
            return billing.StarPayment(charge, telegram_id, payload, 50, when)

        paid = star(user, "a")
        billing.record_payment(session, user.telegram_id, paid.payload, 50, "a")
        gone = star(forgot, "d", now - timedelta(minutes=1))  # before their /forget
        billing.forget_billing(session, forgot.id, keep_payment_records=False)
        received = [
            paid,  # recorded already
            star(user, "b"),  # lost: credited
            star(424242, "c"),  # a payer this bot never saw
            gone,
        ]
        found = billing.reconcile_payments(session, received)
        assert [r.payment_id for r in found.credited] == [
            session.scalar(select(Payment.id).where(Payment.charge_id == "b"))
        ]
        assert found.refunded == []
        assert _credits(session, user) == 10
        assert _credits(session, forgot) == 0
        assert billing.reconcile_payments(session, received) == billing.Reconciled()

    def test_reconcile_records_a_refund_whose_update_was_lost(self, session: Session) -> None:
        user = _user(session)
        payment = _buy(session, user, 3, "refunded-lost")
        kept = _buy(session, user, 2, "kept")
        found = billing.reconcile_payments(session, [], {"refunded-lost", "unknown"})
        assert found.credited == []
        assert [(r.payment_id, r.stars, r.debited, r.shortfall) for r in found.refunded] == [
            (payment, 30, 3, 0)
        ]
        assert _credits(session, user) == 2
        row = session.get(Payment, payment)
        assert row is not None
        assert row.refunded_at is not None
        assert (row.refund_debited, row.refund_shortfall) == (3, 0)
        other = session.get(Payment, kept)
        assert other is not None
        assert other.refunded_at is None
        # Again: recorded once.
        assert billing.reconcile_payments(session, [], {"refunded-lost"}).refunded == []
        assert _credits(session, user) == 2
        assert _ledger(session, user)[-1] == (LedgerKind.REFUND, -3)
        assert billing.ledger_mismatches(session) == []

    def test_revenue_by_day(self, session: Session) -> None:
        user = _user(session)
        payment = _buy(session, user, 2)
        _buy(session, user, 1)
        billing.refund_payment(session, payment, "admin")
        days = billing.revenue_by_day(session, 3)
        assert [d.day for d in days][-1] == utcnow().date()
        today = days[-1]
        assert (today.payments, today.stars, today.credits) == (2, 30, 3)
        assert (today.refunds, today.refunded_stars, today.net_stars) == (1, 20, 10)


# ---- the property: any sequence of movements leaves ledger and balances in agreement ----

OPERATION = st.one_of(
    st.tuples(st.just("buy"), st.integers(1, 4)),
    st.tuples(st.just("spend"), st.integers(0, 2)),
    st.tuples(st.just("fail"), st.sampled_from(["internal", "no_face", "timed_out"])),
    st.tuples(st.just("cancel"), st.booleans()),
    st.tuples(st.just("succeed"), st.just(0)),
    st.tuples(st.just("refund"), st.integers(0, 5)),
    st.tuples(st.just("grant"), st.integers(-3, 3)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(OPERATION, min_size=1, max_size=25))
def test_ledger_and_balances_agree(session: Session, operations: list[tuple[str, Any]]) -> None:
    from core.errors import InsufficientCredits

    user, style = _user(session), _style(session)
    payments: list[int] = []
    open_jobs: list[int] = []
    for op, arg in operations:
        if op == "buy":
            payments.append(_buy(session, user, arg))
        elif op == "spend":
            try:
                open_jobs.append(_portrait(session, user, style, quota=arg, active=100).job_id)
            except QuotaExceeded:
                pass
        elif op in ("fail", "cancel", "succeed") and open_jobs:
            job_id = open_jobs.pop(0)
            if op == "cancel" and arg:
                jobs.cancel_job(session, job_id, "admin")
                continue
            lifecycle.claim(session, job_id, "host")
            if op == "fail":
                lifecycle.finish(session, job_id, None, (arg, "x"))
            elif op == "cancel":
                lifecycle.finish(session, job_id, None, None, cancelled=True)
            else:
                lifecycle.finish(session, job_id, lifecycle.JobOutcome(["k"]), None)
        elif op == "refund" and payments:
            billing.refund_payment(session, payments[arg % len(payments)], "admin")
        elif op == "grant" and arg:
            try:
                billing.grant_credits(session, user.telegram_id, arg, "admin")
            except InsufficientCredits:
                pass
        session.flush()
        credits = _credits(session, user)
        assert credits >= 0
        assert billing.ledger_mismatches(session) == []
        last = session.scalar(
            select(LedgerEntry.balance)
            .where(LedgerEntry.user_id == user.id)
            .order_by(LedgerEntry.id.desc())
            .limit(1)
        )
        assert credits == (last or 0)
    # Each job was charged at most once and given back at most once.
    spends = {j for k, j in _job_rows(session, user) if k is LedgerKind.SPEND}
    givebacks = [j for k, j in _job_rows(session, user) if k is LedgerKind.GIVEBACK]
    assert len(givebacks) == len(set(givebacks))
    assert set(givebacks) <= spends


def _job_rows(session: Session, user: User) -> list[tuple[LedgerKind, int | None]]:
    return [
        (r.kind, r.job_id)
        for r in session.scalars(select(LedgerEntry).where(LedgerEntry.user_id == user.id))
    ]


# ---- the race, on real PostgreSQL ----


def test_two_jobs_at_once_with_one_credit(committed_db: Database, database_url: str) -> None:
    """Two bot replicas create a job for the same user at the same moment with one credit and
    no free quota left: exactly one job is created, the other is refused, no credit is lost."""
    if not database_url.startswith("postgresql"):
        pytest.skip("needs real PostgreSQL row locks")
    with committed_db.session() as s:
        user = _user(s)
        style = _style(s)
        _buy(s, user, 1)
        user_id, telegram_id = user.id, user.telegram_id
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def create() -> None:
        with committed_db.session() as s:
            # Both transactions are open and have read the user before either locks it.
            s.get(User, user_id)
            barrier.wait()
            try:
                jobs.create_portrait_job(
                    s,
                    user_id,
                    style_id=style,
                    chat_id=telegram_id,
                    limits=LimitsSettings(daily_quota=0, active_jobs_per_user=5),
                    is_admin=False,
                    num_images=1,
                    payments=PAY,
                )
                outcomes.append("created")
            except CreditsNeeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["created", "refused"]
    with committed_db.session() as s:
        assert s.scalar(select(User.credits).where(User.id == user_id)) == 0
        assert len(s.scalars(select(Job).where(Job.user_id == user_id)).all()) == 1
        assert billing.ledger_mismatches(s) == []


# ---- the refund race, on SQLite ----


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite file database of its own (whatever TEST_DATABASE is): the race is SQLite's."""
    url = f"sqlite:///{tmp_path / 'refund.db'}"
    migrate(url)
    database = Database.from_url(url)
    try:
        yield database
    finally:
        database.dispose()


def test_refund_and_a_spend_interleaved_on_sqlite(
    sqlite_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spend lands between the refund's balance read and its debit: the refund waits for it
    or keeps it out, and what it records as debited is what the ledger debited (on dbcd432 the
    spend went through, the debit did not, and the payment said 10 credits were debited)."""
    with sqlite_db.session() as s:
        user = _user(s)
        style = _style(s)
        payment_id = _buy(s, user, 10)
        user_id, telegram_id = user.id, user.telegram_id
    spent: list[str] = []

    def spend() -> None:
        try:
            with sqlite_db.session() as s:
                jobs.create_portrait_job(
                    s,
                    user_id,
                    style_id=style,
                    chat_id=telegram_id,
                    limits=LimitsSettings(daily_quota=0),
                    is_admin=False,
                    num_images=1,
                    payments=PaymentsSettings(enabled=True, price_portrait=4),
                )
            spent.append("spent")
        except (CreditsNeeded, OperationalError) as exc:
            spent.append(type(exc).__name__)

    move = billing_refunds._move
    spender = threading.Thread(target=spend)

    def interleaved(session: Session, uid: int, kind: LedgerKind, delta: int, **kw: Any) -> Any:
        if kind is LedgerKind.REFUND and not spender.is_alive() and not spent:
            # The refund has read the balance; a job is paid for now, from another process.
            spender.start()
            spender.join(1.5)
        return move(session, uid, kind, delta, **kw)

    monkeypatch.setattr(billing_refunds, "_move", interleaved)
    result = sqlite_db.call(billing.refund_payment, payment_id, "admin")
    spender.join(40)
    assert not spender.is_alive()

    with sqlite_db.session() as s:
        credits = _credits(s, s.get(User, user_id))
        payment = s.get(Payment, payment_id)
        assert payment is not None
        refund_rows = s.scalars(
            select(LedgerEntry.delta).where(
                LedgerEntry.kind == LedgerKind.REFUND, LedgerEntry.payment_id == payment_id
            )
        ).all()
        # What the payment says was debited is what the ledger debited.
        assert [-d for d in refund_rows] == [payment.refund_debited]
        assert result.debited == payment.refund_debited
        assert payment.refund_debited + payment.refund_shortfall == 10
        paid = 4 if spent == ["spent"] else 0
        assert credits == 10 - payment.refund_debited - paid
        assert billing.ledger_mismatches(s) == []
