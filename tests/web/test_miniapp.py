"""The Mini App's page and API: init data or 401, the catalog, and every chat limit on the jobs
it starts (quota, credits, one active job, bans, selfie first), HD, packs and signed pictures."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.metrics import Metrics
from core.settings import MiniAppSettings, PaymentsSettings, TelegramSettings
from db.models import Invoice, Job, JobKind, JobStatus, Photo, Style, User
from db.session import Database
from domain import billing, conversations
from telegram_ui.i18n import ntranslate, translate
from tests.utils.factories import make_portrait_job, make_selfie, make_style, make_user
from tests.utils.fake_telegram import TOKEN, FakeTelegram
from tests.web.conftest import AUTH, make_config, publisher_for
from web.app import create_web_app
from web.miniapp import initdata

Client = TestClient[Any, Any]
TELEGRAM_ID = 5150


def tma(telegram_id: int = TELEGRAM_ID, *, token: str = TOKEN, age: int = 0, **user: Any) -> dict:
    """The header the page sends: init data as Telegram signs it at launch."""
    who = {"id": telegram_id, "first_name": "Ada", "language_code": "ru", **user}
    raw = initdata.build(token, who, auth_date=int(time.time()) - age, query_id="AAQ1")
    return {"Authorization": f"tma {raw}"}


def picture(colour: tuple[int, int, int] = (200, 60, 60), size: int = 640) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size * 4 // 3), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def payments() -> PaymentsSettings:
    return PaymentsSettings(enabled=False)


@pytest.fixture
def updates_per_minute() -> int:
    return 30


@pytest.fixture
async def client(
    tg: FakeTelegram,
    tmp_path: Path,
    db: Database,
    blobs: LocalBlobStore,
    celery: Any,
    metrics: Metrics,
    payments: PaymentsSettings,
    updates_per_minute: int,
) -> AsyncIterator[Client]:
    """The web app with the Mini App, talking to the fake Bot API."""
    config = make_config(tmp_path)
    config.limits.updates_per_minute = updates_per_minute
    config.telegram = TelegramSettings(
        token=SecretStr(TOKEN), api_base_url=tg.api_base_url, file_base_url=tg.file_base_url
    )
    config.payments = payments
    config.miniapp = MiniAppSettings(init_data_max_age=3600)
    app = create_web_app(config, db, blobs, publisher_for(celery, db), metrics=metrics)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as test_client:
        yield test_client


@pytest.fixture
def styled(session: Session, blobs: LocalBlobStore) -> list[int]:
    """Two public styles with pictures (one per base) and one disabled."""
    a = make_style(session, "mini-armor", position=1, thumbnail_blob=blobs.put(picture()))
    b = make_style(
        session,
        "mini-autumn",
        position=2,
        base_model="majic",
        thumbnail_blob=blobs.put(picture((40, 120, 200))),
    )
    b.names = {"en": "Autumn", "ru": "Осень", "zh": "秋天"}
    make_style(session, "mini-hidden", position=3, enabled=False)
    session.commit()
    return [a.id, b.id]


def ready_user(session: Session, blobs: LocalBlobStore, **kw: Any) -> User:
    user = make_user(session, TELEGRAM_ID, language="ru", **kw)
    make_selfie(session, blobs, user)
    session.commit()
    return user


def jobs_of(session: Session, user: User) -> list[Job]:
    session.expire_all()
    return list(session.scalars(select(Job).where(Job.user_id == user.id).order_by(Job.id)))


async def error_of(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = (await response.json())["error"]
    return body


class TestAuthentication:
    async def test_styles_without_init_data_is_401(self, client: Client, styled: list[int]):
        r = await client.get("/miniapp/api/styles")
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("tma ")
        # The admin token is no key to the Mini App's API.
        assert (await client.get("/miniapp/api/styles", headers=AUTH)).status == 401

    async def test_forged_init_data_is_401(self, client: Client, styled: list[int]) -> None:
        forged = tma(token="123456:SOMEONE-ELSE")
        assert (await client.get("/miniapp/api/styles", headers=forged)).status == 401
        raw = tma()["Authorization"].replace("5150", "5151")
        assert (
            await client.get("/miniapp/api/styles", headers={"Authorization": raw})
        ).status == 401

    async def test_stale_init_data_is_401(self, client: Client, styled: list[int]) -> None:
        r = await client.get("/miniapp/api/styles", headers=tma(age=3601))
        assert r.status == 401
        assert "expired" in (await error_of(r))["message"]

    async def test_valid_init_data_gets_the_catalog(
        self, client: Client, styled: list[int]
    ) -> None:
        r = await client.get("/miniapp/api/styles", headers=tma())
        assert r.status == 200
        body = await r.json()
        assert [s["id"] for s in body["styles"]] == styled
        armor, autumn = body["styles"]
        # The user's language (ru, from the init data of a new user) names the styles.
        assert armor["name"] == "Доспехи"
        assert autumn["base_model"] == "majic"
        assert armor["thumb"].startswith("api/media?")
        assert {b["id"] for b in body["bases"]} == {"film", "majic"}

    async def test_unknown_user_is_created_as_in_the_chat(
        self, client: Client, session: Session
    ) -> None:
        r = await client.get("/miniapp/api/me", headers=tma(9001, username="new"))
        assert r.status == 200
        me = await r.json()
        assert me["user"] == {"telegram_id": 9001, "first_name": "Ada", "language": "ru"}
        assert me["texts"]["miniapp.tab.styles"] == translate("ru", "miniapp.tab.styles")
        # Counted texts come with every Russian form and the CLDR category of each, so the page
        # says "1 кредит", "2 кредита", "5 кредитов" (Intl.PluralRules picks the category).
        assert me["plural_categories"] == ["one", "few", "many"]
        forms = dict(zip(me["plural_categories"], me["counted"]["miniapp.balance"], strict=True))
        for n, category in ((1, "one"), (2, "few"), (5, "many"), (21, "one"), (11, "many")):
            said = forms[category].replace("{count}", str(n))
            assert said == ntranslate("ru", "miniapp.balance", n)
        assert me["has_selfie"] is False
        user = session.scalar(select(User).where(User.telegram_id == 9001))
        assert user is not None
        assert user.username == "new"


class TestPage:
    async def test_page_and_files_come_from_this_server_only(self, client: Client) -> None:
        r = await client.get("/miniapp/")
        assert r.status == 200
        assert r.content_type == "text/html"
        html = await r.text()
        assert "{{LAUNCH_TEXTS}}" not in html
        assert translate("zh", "miniapp.open_in_telegram") in html
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "connect-src 'self'" in csp
        for name in ("app.js", "bridge.js", "app.css"):
            f = await client.get(f"/miniapp/{name}")
            assert f.status == 200
            text = await f.text()
            assert "telegram.org/js" not in text
            assert "fonts.googleapis" not in text
        assert (await client.get("/miniapp/nothing.js")).status == 404


class TestPictures:
    async def test_signed_pictures_are_sized_for_the_grid(
        self, client: Client, styled: list[int]
    ) -> None:
        body = await (await client.get("/miniapp/api/styles", headers=tma())).json()
        thumb, full = body["styles"][0]["thumb"], body["styles"][0]["picture"]
        r = await client.get(f"/miniapp/{thumb}")
        assert r.status == 200
        assert r.content_type == "image/jpeg"
        image = Image.open(io.BytesIO(await r.read()))
        assert max(image.size) == 384
        big = Image.open(io.BytesIO(await (await client.get(f"/miniapp/{full}")).read()))
        assert max(big.size) == 640 * 4 // 3  # never enlarged

    async def test_tampered_or_expired_links_are_refused(
        self, client: Client, styled: list[int]
    ) -> None:
        body = await (await client.get("/miniapp/api/styles", headers=tma())).json()
        query = parse_qs(urlsplit(body["styles"][0]["thumb"]).query)
        k, s, e, h = (query[n][0] for n in ("k", "s", "e", "h"))
        for params in (
            {"k": k, "s": "full", "e": e, "h": h},
            {"k": k, "s": s, "e": str(int(e) + 3600), "h": h},
            {"k": "0" * 64, "s": s, "e": e, "h": h},
        ):
            r = await client.get("/miniapp/api/media", params=params)
            assert r.status == 403, params
        from web.miniapp import media

        old = media.signed_url(
            media.media_key(TOKEN), k, "thumb", now=time.time() - 4 * 3600
        ).split("?", 1)[1]
        assert (await client.get(f"/miniapp/api/media?{old}")).status == 403


class TestUseStyle:
    async def test_use_style_queues_the_chats_job_and_status_message(
        self,
        client: Client,
        session: Session,
        blobs: LocalBlobStore,
        styled: list[int],
        tg: FakeTelegram,
        celery: Any,
    ) -> None:
        user = ready_user(session, blobs)
        r = await client.post(f"/miniapp/api/styles/{styled[1]}/use", headers=tma())
        assert r.status == 201, await r.text()
        created = await r.json()
        (job,) = jobs_of(session, user)
        assert created["job_id"] == job.id
        assert created["position"] == 1
        assert job.kind is JobKind.PORTRAIT
        assert job.status is JobStatus.QUEUED
        assert job.style_id == styled[1]
        assert job.chat_id == TELEGRAM_ID
        assert job.charge == "quota"
        # The chat's status message (with Cancel), which the worker edits; then published.
        (status,) = tg.calls_to("sendMessage", chat_id=TELEGRAM_ID)
        assert status.params["text"] == created["message"]
        assert status.params["text"].startswith(translate("ru", "job.queued").split("{")[0])
        assert "jc:" in str(status.params["reply_markup"])
        assert job.status_message_id is not None
        celery.send_task.assert_called_once()
        assert celery.send_task.call_args.kwargs["args"] == [job.id]

    async def test_a_second_job_while_one_runs_is_refused(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        user = ready_user(session, blobs)
        assert (
            await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        ).status == 201
        r = await client.post(f"/miniapp/api/styles/{styled[1]}/use", headers=tma())
        assert r.status == 409
        error = await error_of(r)
        assert error["code"] == "active_job_exists"
        assert error["message"] == translate("ru", "error.active_job_exists")
        assert len(jobs_of(session, user)) == 1

    async def test_exhausted_quota_is_refused(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        user = ready_user(session, blobs, daily_quota=0)
        r = await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        assert r.status == 409
        error = await error_of(r)
        assert error["code"] == "quota_exceeded"
        assert error["message"] == translate("ru", "error.quota_exceeded", quota=0)
        assert jobs_of(session, user) == []

    async def test_banned_user_gets_the_chats_refusal(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        user = ready_user(session, blobs, is_banned=True)
        for method, path in (
            ("POST", f"/miniapp/api/styles/{styled[0]}/use"),
            ("GET", "/miniapp/api/styles"),
            ("GET", "/miniapp/api/portraits"),
        ):
            r = await client.request(method, path, headers=tma())
            assert r.status == 403, path
            error = await error_of(r)
            assert error["code"] == "banned"
            assert error["message"] == translate("ru", "error.banned")
        assert jobs_of(session, user) == []

    async def test_without_a_selfie_the_style_waits_for_one(
        self, client: Client, session: Session, styled: list[int]
    ) -> None:
        user = make_user(session, TELEGRAM_ID, language="en")
        session.commit()
        r = await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        assert r.status == 409
        assert (await error_of(r))["message"] == translate("ru", "error.selfie_required")
        assert conversations.load(session, user.id).data["pending_style_id"] == styled[0]

    async def test_hidden_or_missing_style_is_404(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        ready_user(session, blobs)
        for style_id in (styled[1] + 1, 999_999):
            r = await client.post(f"/miniapp/api/styles/{style_id}/use", headers=tma())
            assert r.status == 404
            assert (await error_of(r))["code"] == "style_unavailable"


@pytest.mark.parametrize("updates_per_minute", [2])
class TestFloodLimit:
    async def test_actions_beyond_the_chats_flood_limit_are_refused(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        ready_user(session, blobs)
        statuses = [
            (await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())).status
            for _ in range(2)
        ]
        assert statuses == [201, 409]  # the second one: a job is already running
        r = await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        assert r.status == 429
        assert int(r.headers["Retry-After"]) > 0
        assert (await error_of(r))["message"] == translate("ru", "error.rate_limited")
        # Reading (the page's polling) is not an action.
        for _ in range(5):
            assert (await client.get("/miniapp/api/portraits", headers=tma())).status == 200
        # Another user has their own allowance.
        assert (
            await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma(8080))
        ).status == 409


@pytest.mark.parametrize(
    "payments", [PaymentsSettings(enabled=True, price_portrait=2, price_upscale=1)]
)
class TestCredits:
    async def test_credits_needed_after_the_free_quota(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        user = ready_user(session, blobs, daily_quota=0)
        r = await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        assert r.status == 409
        error = await error_of(r)
        assert error["code"] == "credits_needed"
        assert error["message"] == translate(
            "ru", "error.credits_needed", quota=0, price=2, credits=0
        )
        billing.grant_credits(session, str(TELEGRAM_ID), 3, "test", "t")
        session.commit()
        assert (
            await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        ).status == 201
        (job,) = jobs_of(session, user)
        assert job.charge == "credits"
        assert job.charge_credits == 2

    async def test_packs_and_invoice_link(
        self, client: Client, session: Session, blobs: LocalBlobStore, tg: FakeTelegram
    ) -> None:
        user = ready_user(session, blobs)
        pack = billing.create_pack(session, title="Ten", credits=10, stars=75, actor="t")
        billing.create_pack(session, title="Off", credits=1, stars=5, actor="t", enabled=False)
        session.commit()
        body = await (await client.get("/miniapp/api/packs", headers=tma())).json()
        assert body["enabled"] is True
        assert body["packs"] == [{"id": pack.id, "title": "Ten", "credits": 10, "stars": 75}]
        assert body["balance"]["price_portrait"] == 2
        r = await client.post(f"/miniapp/api/packs/{pack.id}/invoice", headers=tma())
        assert r.status == 200, await r.text()
        link = (await r.json())["link"]
        (call,) = tg.calls_to("createInvoiceLink")
        assert link.startswith("https://t.me/$")
        assert call.params["currency"] == "XTR"
        # An invoice row issued like the chat's /buy: the payment is credited from it alone.
        invoice = session.scalar(select(Invoice).where(Invoice.payload == call.params["payload"]))
        assert invoice is not None
        assert (invoice.pack_id, invoice.credits, invoice.stars, invoice.user_id) == (
            pack.id,
            10,
            75,
            user.id,
        )
        result = billing.record_payment(session, TELEGRAM_ID, call.params["payload"], 75, "ch-1")
        session.commit()
        assert result.credits == 10
        body = await (await client.get("/miniapp/api/packs", headers=tma())).json()
        assert body["balance"]["credits"] == 10

    async def test_a_pack_off_sale_is_refused_in_words(
        self, client: Client, session: Session, blobs: LocalBlobStore, tg: FakeTelegram
    ) -> None:
        ready_user(session, blobs)
        pack = billing.create_pack(
            session, title="Off", credits=1, stars=5, actor="t", enabled=False
        )
        session.commit()
        r = await client.post(f"/miniapp/api/packs/{pack.id}/invoice", headers=tma())
        assert r.status == 409
        assert (await error_of(r))["message"] == translate("ru", "pay.refused.pack_gone")
        assert tg.calls_to("createInvoiceLink") == []


class TestPortraits:
    async def test_finished_and_running_sets_and_hd(
        self,
        client: Client,
        session: Session,
        blobs: LocalBlobStore,
        styled: list[int],
        tg: FakeTelegram,
    ) -> None:
        user = ready_user(session, blobs)
        selfie = user_selfie(session, user)
        style = session.get(Style, styled[0])
        done = make_portrait_job(session, user, selfie, style)
        done.status = JobStatus.SUCCEEDED
        done.result_blobs = [blobs.put(picture((i * 40, 90, 90), 512)) for i in range(2)]
        other = make_user(session, 777)
        make_portrait_job(session, other, selfie, style)  # someone else's, ahead in the queue
        session.commit()
        body = await (await client.get("/miniapp/api/portraits", headers=tma())).json()
        assert body["active"] == []
        (shown,) = body["finished"]
        assert shown["job_id"] == done.id
        assert shown["title"] == "Доспехи"
        assert [p["index"] for p in shown["pictures"]] == [0, 1]
        r = await client.get(f"/miniapp/{shown['pictures'][1]['thumb']}")
        assert r.status == 200
        # HD of picture 2: the chat's upscale job, announced in the chat.
        r = await client.post(f"/miniapp/api/portraits/{done.id}/pictures/1/hd", headers=tma())
        assert r.status == 201, await r.text()
        hd = jobs_of(session, user)[-1]
        assert hd.kind is JobKind.UPSCALE
        assert hd.params == {"source_job_id": done.id, "index": 1, "size": 2048}
        assert tg.calls_to("sendMessage", chat_id=TELEGRAM_ID)
        body = await (await client.get("/miniapp/api/portraits", headers=tma())).json()
        (active,) = body["active"]
        assert active["job_id"] == hd.id
        assert active["status"] == "queued"
        assert active["kind"] == "upscale"
        # A picture that does not exist, or another user's set.
        r = await client.post(f"/miniapp/api/portraits/{done.id}/pictures/5/hd", headers=tma())
        assert r.status in (404, 409)

    async def test_queue_position_and_progress(
        self, client: Client, session: Session, blobs: LocalBlobStore, styled: list[int]
    ) -> None:
        other = make_user(session, 778)
        selfie_other = make_selfie(session, blobs, other)
        style = session.get(Style, styled[0])
        make_portrait_job(session, other, selfie_other, style)
        session.commit()
        ready_user(session, blobs)
        await client.post(f"/miniapp/api/styles/{styled[0]}/use", headers=tma())
        body = await (await client.get("/miniapp/api/portraits", headers=tma())).json()
        (active,) = body["active"]
        assert active["position"] == 2
        assert active["progress"] == 0.0


def user_selfie(session: Session, user: User) -> Photo:
    photo = session.scalars(select(Photo).where(Photo.user_id == user.id)).first()
    assert photo is not None
    return photo
