"""Every route, with and without the token; lockout after repeated failures; disabled admin."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.blobstore import LocalBlobStore
from core.metrics import create_metrics
from db.session import Database
from tests.web.conftest import AUTH, TOKEN, make_config, publisher_for
from web.app import create_web_app
from web.auth import FailureLimiter
from web.keys import ROUTES

PUBLIC = {"/healthz", "/readyz", "/metrics"}
# The Mini App: its page files are public, its pictures need a signed URL (refused without one:
# 422 for the missing parameters), its API the init data Telegram signs (never the token).
MINIAPP_API = "/miniapp/api/"
MINIAPP_MEDIA = "/miniapp/api/media"


def miniapp_page(path: str) -> bool:
    return path.startswith("/miniapp/") and not path.startswith(MINIAPP_API)


def route_table() -> list[tuple[str, str]]:
    """(method, path) of every route the app can serve, telegram webhook included."""
    from unittest import mock

    from celery import Celery
    from telegram.ext import ApplicationBuilder

    config = make_config(Path("unused"))
    tg = ApplicationBuilder().token("123456:TEST").updater(None).build()
    app = create_web_app(
        config,
        mock.Mock(spec=Database),
        mock.Mock(spec=LocalBlobStore),
        publisher_for(mock.create_autospec(Celery, instance=True), mock.Mock(spec=Database)),
        tg,
        metrics=create_metrics(),
    )
    return [(r.method, r.path) for r in app[ROUTES]]


ALL_ROUTES = route_table()


def concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "1", path)


def request_kwargs(method: str) -> dict[str, Any]:
    return {"json": {}} if method in ("POST", "PUT", "PATCH") else {}


# Routes that talk to the Bot API before answering (Telegram Stars reconciliation).
CALLS_TELEGRAM = frozenset({"/api/v1/payments/reconcile"})


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES, ids=[f"{m} {p}" for m, p in ALL_ROUTES])
class TestEveryRoute:
    async def test_without_token(
        self, client: TestClient[Any, Any], method: str, path: str
    ) -> None:
        response = await client.request(method, concrete(path), **request_kwargs(method))
        if path in PUBLIC or miniapp_page(path):
            assert response.status in (200, 503)
        elif path == MINIAPP_MEDIA:
            assert response.status == 422
        elif path.startswith(MINIAPP_API):
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("tma")
        elif path.startswith("/telegram/"):
            # Not in this app (no bot application): absent, never open.
            assert response.status == 404
        else:
            assert response.status == 401, await response.text()
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            body = await response.json()
            assert body["error"]["code"] == "unauthorized"
            assert set(body) == {"error"}

    async def test_with_wrong_token(
        self, client: TestClient[Any, Any], method: str, path: str
    ) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}x"}
        response = await client.request(
            method, concrete(path), headers=headers, **request_kwargs(method)
        )
        if path.startswith("/api/"):
            assert response.status == 401

    async def test_with_token(self, client: TestClient[Any, Any], method: str, path: str) -> None:
        response = await client.request(
            method, concrete(path), headers=AUTH, **request_kwargs(method)
        )
        if path.startswith("/telegram/"):
            assert response.status == 404
            return
        if path.startswith(MINIAPP_API) and path != MINIAPP_MEDIA:
            # The admin token is no key to the Mini App's API.
            assert response.status == 401
            return
        assert response.status not in (401, 403, 429), await response.text()
        if path in CALLS_TELEGRAM:
            # This app's Bot API is out of reach: "unavailable", never a crash.
            assert response.status in (200, 503), await response.text()
            return
        assert response.status < 500, await response.text()


class TestLockout:
    async def test_locks_out_a_guessing_client_but_never_the_right_token(
        self, config: Any, db: Database, blobs: LocalBlobStore, celery: Any
    ) -> None:
        app = create_web_app(
            config,
            db,
            blobs,
            publisher_for(celery, db),
            metrics=create_metrics(),
            auth_max_failures=3,
        )
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for _ in range(3):
                r = await client.get("/api/v1/stats", headers={"Authorization": "Bearer nope"})
                assert r.status == 401
            r = await client.get("/api/v1/stats", headers={"Authorization": "Bearer nope"})
            assert r.status == 429
            assert int(r.headers["Retry-After"]) > 0
            assert (await r.json())["error"]["code"] == "rate_limited"
            assert (await client.get("/api/v1/stats")).status == 429
            # The operator's token still works from the same address.
            assert (await client.get("/api/v1/stats", headers=AUTH)).status == 200
            # Probes stay reachable.
            assert (await client.get("/healthz")).status == 200

    def test_window_slides(self) -> None:
        now = [0.0]
        limiter = FailureLimiter(max_failures=2, window=10.0, clock=lambda: now[0])
        limiter.record_failure("a")
        limiter.record_failure("a")
        assert limiter.retry_after("a") == pytest.approx(10.0)
        assert limiter.retry_after("b") == 0.0
        now[0] = 5.0
        assert limiter.retry_after("a") == pytest.approx(5.0)
        now[0] = 10.5
        assert limiter.retry_after("a") == 0.0


class TestSchemes:
    @pytest.mark.parametrize(
        "header", ["", "Basic " + TOKEN, "Bearer", "Bearer ", TOKEN, "bearer " + TOKEN[:-1]]
    )
    async def test_malformed_headers_are_refused(
        self, client: TestClient[Any, Any], header: str
    ) -> None:
        r = await client.get("/api/v1/users", headers={"Authorization": header} if header else {})
        assert r.status == 401

    async def test_scheme_is_case_insensitive(self, client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/v1/users", headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status == 200


async def test_unset_token_disables_api(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    config = make_config(tmp_path)
    config.admin.token = None
    app = create_web_app(config, db, blobs, publisher_for(celery, db), metrics=create_metrics())
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        r = await client.get("/api/v1/users", headers=AUTH)
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "admin_disabled"
        assert (await client.get("/healthz")).status == 200


async def test_private_metrics_need_token(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    config = make_config(tmp_path, public_metrics=False)
    app: web.Application = create_web_app(
        config, db, blobs, publisher_for(celery, db), metrics=create_metrics()
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/metrics", headers=AUTH)).status == 200
