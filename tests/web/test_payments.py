"""The payments part of the admin API: packs CRUD, payments and refunds through the (fake)
Bot API, a user's ledger and grants, revenue per day, the ledger check, webhook events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.metrics import Metrics
from core.settings import PaymentsSettings, TelegramSettings
from db.locks import try_lock
from db.models import (
    AuditEntry,
    Job,
    JobKind,
    JobStatus,
    LedgerKind,
    Pack,
    Payment,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from db.session import Database
from domain import billing
from tests.utils.factories import make_user
from tests.utils.fake_telegram import TOKEN, Charge, FakeTelegram
from tests.web.conftest import AUTH, make_config, publisher_for
from web.app import create_web_app

Client = TestClient[Any, Any]


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def api(
    tg: FakeTelegram,
    tmp_path: Path,
    db: Database,
    blobs: LocalBlobStore,
    celery: Any,
    metrics: Metrics,
) -> AsyncIterator[Client]:
    """The admin web app talking to the fake Bot API."""
    config = make_config(tmp_path)
    config.telegram = TelegramSettings(
        token=SecretStr(TOKEN), api_base_url=tg.api_base_url, file_base_url=tg.file_base_url
    )
    app = create_web_app(config, db, blobs, publisher_for(celery, db), metrics=metrics)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        yield client


# What issuing an invoice needs.
ON = PaymentsSettings(enabled=True)


def paid(session: Session, tg: FakeTelegram, telegram_id: int, credits: int = 5) -> Any:
    """A user who bought a pack (the charge known to the fake Telegram)."""
    user = make_user(session, telegram_id)
    pack = billing.create_pack(session, title="Five", credits=credits, stars=50, actor="t")
    payload = billing.issue_invoice(session, user.id, pack.id, ON).payload
    charge = f"stx-{telegram_id}"
    tg.add_charge(Charge(charge, telegram_id, 50, payload))
    result = billing.record_payment(session, telegram_id, payload, 50, charge)
    session.flush()
    return user, result


class TestPacks:
    async def test_crud_and_audit(self, api: Client, session: Session) -> None:
        r = await api.post(
            "/api/v1/packs", json={"title": "Ten", "credits": 10, "stars": 90}, headers=AUTH
        )
        assert r.status == 201
        pack = await r.json()
        assert (pack["title"], pack["credits"], pack["stars"], pack["enabled"]) == (
            "Ten",
            10,
            90,
            True,
        )
        r = await api.patch(
            f"/api/v1/packs/{pack['id']}", json={"stars": 80, "enabled": False}, headers=AUTH
        )
        assert r.status == 200
        assert (await r.json())["stars"] == 80
        r = await api.get("/api/v1/packs", headers=AUTH)
        assert [p["enabled"] for p in (await r.json())["items"]] == [False]
        for bad in (
            {"title": "X", "credits": 1, "stars": 0},
            {"title": " ", "credits": 1, "stars": 1},
        ):
            r = await api.post("/api/v1/packs", json=bad, headers=AUTH)
            assert r.status == 422
        for bad_patch in ({}, {"stars": 0}, {"credits": True}):
            r = await api.patch(f"/api/v1/packs/{pack['id']}", json=bad_patch, headers=AUTH)
            assert r.status == 422, bad_patch
        r = await api.delete(f"/api/v1/packs/{pack['id']}", headers=AUTH)
        assert r.status == 204
        assert session.scalars(select(Pack)).all() == []
        actions = {a.action for a in session.scalars(select(AuditEntry))}
        assert {"pack.create", "pack.update", "pack.delete"} <= actions

    async def test_needs_the_token(self, api: Client) -> None:
        r = await api.get("/api/v1/packs")
        assert r.status == 401


class TestRefunds:
    async def test_refund_through_telegram_debits_once(
        self, api: Client, session: Session, tg: FakeTelegram, metrics: Metrics
    ) -> None:
        endpoint = WebhookEndpoint(
            url="http://x.invalid/", secret="s" * 16, events=["payment.refunded"], enabled=True
        )
        session.add(endpoint)
        user, payment = paid(session, tg, 7001)
        billing.grant_credits(session, 7001, -2, "admin")
        session.flush()
        r = await api.post(f"/api/v1/payments/{payment.payment_id}/refund", headers=AUTH)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert (body["debited"], body["shortfall"], body["balance"], body["duplicate"]) == (
            3,
            2,
            0,
            False,
        )
        [call] = tg.calls_to("refundStarPayment")
        assert call.params == {"user_id": 7001, "telegram_payment_charge_id": "stx-7001"}
        assert tg.charges["stx-7001"].refunded
        # The payer is told.
        await tg.wait_text(7001, "was refunded")
        again = await api.post(f"/api/v1/payments/{payment.payment_id}/refund", headers=AUTH)
        assert (await again.json())["duplicate"] is True
        assert len(tg.calls_to("refundStarPayment")) == 1
        session.expire_all()
        assert session.get(User, user.id).credits == 0  # type: ignore[union-attr]
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event == "payment.refunded")
        ).all()
        assert len(deliveries) == 1
        assert deliveries[0].payload["refund_shortfall"] == 2
        assert metrics.payment_stars.labels(event="refunded")._value.get() == 50

    async def test_telegram_refusing_debits_nothing(
        self, api: Client, session: Session, tg: FakeTelegram
    ) -> None:
        user, payment = paid(session, tg, 7002)
        tg.charges.pop("stx-7002")  # Telegram does not know the charge
        r = await api.post(f"/api/v1/payments/{payment.payment_id}/refund", headers=AUTH)
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "payment_refused"
        session.expire_all()
        assert session.get(User, user.id).credits == 5  # type: ignore[union-attr]

    async def test_unknown_payment(self, api: Client, tg: FakeTelegram) -> None:
        r = await api.post("/api/v1/payments/999/refund", headers=AUTH)
        assert r.status == 404
        assert tg.calls_to("refundStarPayment") == []


class TestReconcile:
    async def test_lost_payment_credited_once(
        self, api: Client, session: Session, tg: FakeTelegram
    ) -> None:
        user = make_user(session, 7301)
        pack = billing.create_pack(session, title="Five", credits=5, stars=50, actor="t")
        payload = billing.issue_invoice(session, user.id, pack.id, ON).payload
        session.flush()
        tg.lost_payment(tg.user(7301), payload, 50)
        r = await api.post("/api/v1/payments/reconcile", headers=AUTH)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert (body["credited"], body["stars"]) == (1, 50)
        again = await (await api.post("/api/v1/payments/reconcile", headers=AUTH)).json()
        assert again["credited"] == 0
        session.expire_all()
        assert session.get(User, user.id).credits == 5  # type: ignore[union-attr]

    async def test_a_refund_whose_update_was_lost_is_recorded(
        self, api: Client, session: Session, tg: FakeTelegram
    ) -> None:
        """Telegram refunded a recorded payment and the `refunded_payment` update was lost:
        reconcile debits its credits once (before: the user kept Stars and credits)."""
        user = make_user(session, 7302)
        pack = billing.create_pack(session, title="Five", credits=5, stars=50, actor="t")
        payload = billing.issue_invoice(session, user.id, pack.id, ON).payload
        charge = tg.lost_payment(tg.user(7302), payload, 50)
        billing.record_payment(session, 7302, payload, 50, charge)
        session.flush()
        tg.refund_charge(charge)
        payment_id = session.scalar(select(Payment.id).where(Payment.charge_id == charge))
        bodies = []
        for _ in range(2):
            r = await api.post("/api/v1/payments/reconcile", headers=AUTH)
            assert r.status == 200, await r.text()
            bodies.append(await r.json())
        assert [(b["credited"], b["refunded"], b["refunded_stars"]) for b in bodies] == [
            (0, 1, 50),
            (0, 0, 0),
        ]
        assert bodies[0]["refunded_payment_ids"] == [payment_id]
        # The payer is told, as the lost update would have told them.
        await tg.wait_text(
            7302,
            "↩️ Your payment of 50 ⭐ was refunded; 5 credits were taken back. "
            "Your balance: 0 credits.",
        )
        session.expire_all()
        assert session.get(User, user.id).credits == 0  # type: ignore[union-attr]
        row = session.scalar(select(Payment).where(Payment.charge_id == charge))
        assert row is not None
        assert (row.refund_debited, row.refund_shortfall) == (5, 0)

    async def test_a_reconcile_while_another_runs_is_409(
        self, api: Client, db: Database, tg: FakeTelegram
    ) -> None:
        with try_lock(db, "payments.reconcile") as held:
            assert held
            r = await api.post("/api/v1/payments/reconcile", headers=AUTH)
        assert r.status == 409, await r.text()
        assert (await r.json())["error"]["code"] == "reconcile_running"
        assert tg.calls_to("getStarTransactions") == []

    async def test_telegram_out_of_reach_is_503(
        self,
        tmp_path: Path,
        db: Database,
        blobs: LocalBlobStore,
        celery: Any,
        metrics: Metrics,
    ) -> None:
        config = make_config(tmp_path)
        config.telegram.api_base_url = "http://127.0.0.1:9/bot"
        app = create_web_app(config, db, blobs, publisher_for(celery, db), metrics=metrics)
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            r = await client.post("/api/v1/payments/reconcile", headers=AUTH)
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "unavailable"


class TestJobs:
    async def test_a_job_shows_its_charge_and_give_back(
        self, api: Client, session: Session
    ) -> None:
        user = make_user(session, 7401)
        job = Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={},
            charge="credits",
            charge_credits=2,
        )
        session.add(job)
        session.flush()
        job.transition(JobStatus.RUNNING)
        job.fail("internal", "boom")
        session.flush()
        body = await (await api.get(f"/api/v1/jobs/{job.id}", headers=AUTH)).json()
        assert (body["charge"], body["charge_credits"]) == ("credits", 2)
        assert body["charge_returned_at"] is not None
        ledger = await (await api.get("/api/v1/users/7401/ledger", headers=AUTH)).json()
        assert [(e["kind"], e["delta"], e["job_id"]) for e in ledger["items"]] == [
            ("giveback", 2, job.id)
        ]


class TestLedgerAndRevenue:
    async def test_grant_ledger_revenue_and_check(
        self, api: Client, session: Session, tg: FakeTelegram
    ) -> None:
        paid(session, tg, 7101, credits=4)
        r = await api.post(
            "/api/v1/users/7101/credits", json={"credits": 2, "note": "sorry"}, headers=AUTH
        )
        assert r.status == 200
        assert (await r.json())["credits"] == 6
        r = await api.post("/api/v1/users/7101/credits", json={"credits": -7}, headers=AUTH)
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "insufficient_credits"
        r = await api.post("/api/v1/users/7101/credits", json={"credits": 0}, headers=AUTH)
        assert r.status == 422
        r = await api.get("/api/v1/users/7101/ledger?limit=10", headers=AUTH)
        ledger = await r.json()
        assert ledger["credits"] == 6
        assert [(e["kind"], e["delta"], e["balance"]) for e in ledger["items"]] == [
            (LedgerKind.GRANT.value, 2, 6),
            (LedgerKind.PURCHASE.value, 4, 4),
        ]
        assert ledger["items"][0]["actor"] == "api"
        r = await api.get("/api/v1/payments?telegram_id=7101", headers=AUTH)
        payments = await r.json()
        assert payments["total"] == 1
        assert payments["items"][0]["charge_id"] == "stx-7101"
        r = await api.get("/api/v1/payments/revenue?days=7", headers=AUTH)
        revenue = await r.json()
        assert len(revenue["days"]) == 7
        assert revenue["days"][-1]["stars"] == 50
        assert (revenue["stars"], revenue["net_stars"]) == (50, 50)
        r = await api.get("/api/v1/payments/ledger-check", headers=AUTH)
        assert await r.json() == {"ok": True, "mismatches": []}
        # A balance changed behind the ledger's back is caught.
        session.scalar(select(User).where(User.telegram_id == 7101)).credits = 99  # type: ignore[union-attr]
        session.flush()
        r = await api.get("/api/v1/payments/ledger-check", headers=AUTH)
        check = await r.json()
        assert check["ok"] is False
        assert check["mismatches"][0]["ledger_sum"] == 6
