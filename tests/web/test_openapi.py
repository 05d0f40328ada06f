"""The OpenAPI document tells the truth: every served route is documented (and nothing else),
refs resolve, inputs are as strict as their schema, and a schemathesis run with every check
against a live server finds no failure."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from core.blobstore import LocalBlobStore
from core.metrics import create_metrics
from core.safety import LocalScreen
from db.models import Job, User
from db.session import Database
from tests.utils.factories import make_selfie, make_style, make_user
from tests.utils.fake_safety import tiny_checker
from tests.utils.fake_telegram import FakeTelegram
from tests.web.conftest import AUTH, TOKEN, make_config, publisher_for
from web.app import create_web_app
from web.keys import OPENAPI, ROUTES
from web.miniapp import initdata

Client = TestClient[Any, Any]


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}


def registered(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        assert isinstance(path, str)
        if route.method != "HEAD":
            out.add((route.method, path))
    return out


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


class TestDocument:
    async def test_every_route_is_documented_and_nothing_else(
        self, app: web.Application, client: Client
    ) -> None:
        doc = app[OPENAPI]
        assert registered(app) == documented(doc)
        assert len(app[ROUTES]) == len(documented(doc))
        r = await client.get("/api/v1/openapi.json", headers=AUTH)
        assert r.status == 200
        assert await r.json() == doc
        assert (await client.get("/api/v1/openapi.json")).status == 401

    def test_telegram_route_documented_when_served(self, tmp_path: Path) -> None:
        from unittest import mock

        from celery import Celery
        from telegram.ext import ApplicationBuilder

        tg = ApplicationBuilder().token("123456:TEST").updater(None).build()
        app = create_web_app(
            make_config(tmp_path),
            mock.Mock(spec=Database),
            mock.Mock(spec=LocalBlobStore),
            publisher_for(mock.create_autospec(Celery, instance=True), mock.Mock(spec=Database)),
            tg,
            metrics=create_metrics(),
        )
        assert registered(app) == documented(app[OPENAPI])
        op = app[OPENAPI]["paths"]["/telegram/webhook"]["post"]
        assert op["security"] == []
        assert op["parameters"][0]["name"] == "X-Telegram-Bot-Api-Secret-Token"

    def test_structure(self, app: web.Application) -> None:
        doc = app[OPENAPI]
        assert doc["openapi"] == "3.1.0"
        schemas = doc["components"]["schemas"]
        for ref in refs(doc):
            assert ref.startswith("#/components/schemas/")
            assert ref.rsplit("/", 1)[1] in schemas, ref
        operation_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
        assert len(operation_ids) == len(set(operation_ids))
        # Public: probes, the Mini App's page files, and its pictures (signed URLs instead).
        public = {"/healthz", "/readyz", "/metrics", "/miniapp/api/media"}
        for path, ops in doc["paths"].items():
            for op in ops.values():
                protected = bool(op["security"])
                page = path.startswith("/miniapp/") and not path.startswith("/miniapp/api/")
                assert protected == (path not in public and not page), path
                if protected:
                    assert "401" in op["responses"]
                scheme = "tmaAuth" if path.startswith("/miniapp/api/") else "bearerAuth"
                assert not protected or op["security"] == [{scheme: []}], path
        webhook_in = schemas["WebhookIn"]["properties"]
        assert "secret" in webhook_in
        assert "secret" not in schemas["WebhookOut"]["properties"]
        schemathesis.openapi.from_dict(doc).validate()


# ---- the document against the server ----


class TestStrictInputs:
    """A value of the wrong JSON type is refused, not coerced (0 is not false)."""

    async def test_wrong_json_types_are_refused(self, client: Client, session: Any) -> None:
        user = make_user(session, 5)
        style = make_style(session, "strict", position=1)
        session.commit()
        cases = [
            (f"/api/v1/styles/{style.id}", "PATCH", {"enabled": 0}),
            (f"/api/v1/styles/{style.id}", "PATCH", {"position": True}),
            (f"/api/v1/styles/{style.id}", "PATCH", {"lora_weight": "0.5"}),
            (f"/api/v1/users/{user.telegram_id}/quota", "PUT", {"daily_quota": False}),
            (f"/api/v1/users/{user.telegram_id}/quota", "PUT", {"daily_quota": "5"}),
            ("/api/v1/styles/order", "PUT", {"ids": [style.id, style.id]}),
            (f"/api/v1/styles/{style.id}", "PATCH", {}),
            ("/api/v1/broadcasts", "POST", {"text": " \t\u3000 "}),
            (
                "/api/v1/webhooks",
                "POST",
                {"url": "ftp://x", "events": ["job.failed"], "secret": "s" * 16},
            ),
        ]
        for path, method, body in cases:
            r = await client.request(method, path, json=body, headers=AUTH)
            assert r.status == 422, (method, path, body, await r.text())
        # An integral float is a JSON integer, as the schema says.
        r = await client.put(
            f"/api/v1/users/{user.telegram_id}/quota", json={"daily_quota": 5.0}, headers=AUTH
        )
        assert r.status == 200
        assert (await r.json())["daily_quota"] == 5
        r = await client.get("/api/v1/styles?enabled=1", headers=AUTH)
        assert r.status == 422

    async def test_unsupported_method_is_405(self, client: Client) -> None:
        for path in ("/api/v1/styles/order", "/api/v1/templates/order"):
            r = await client.get(path, headers=AUTH)
            assert r.status == 405
            assert r.headers["Allow"] == "PUT"

    def test_constraints_are_in_the_document(self, app: web.Application) -> None:
        schemas = app[OPENAPI]["components"]["schemas"]
        assert schemas["OrderIn"]["properties"]["ids"]["uniqueItems"] is True
        assert schemas["StylePatch"]["minProperties"] == 1
        assert schemas["TemplatePatch"]["minProperties"] == 1
        assert "pattern" in schemas["BroadcastIn"]["properties"]["text"]
        assert schemas["WebhookIn"]["properties"]["url"]["pattern"].startswith("^https?://")
        # What the pattern cannot say (where the host resolves) is said in words.
        assert "WEBHOOKS_ALLOW_PRIVATE" in schemas["WebhookIn"]["properties"]["url"]["description"]
        upload = app[OPENAPI]["paths"]["/api/v1/styles"]["post"]["requestBody"]["content"]
        assert upload["multipart/form-data"]["schema"]["additionalProperties"] is False


class LiveServer:
    """The app served by a real AppRunner/TCPSite on 127.0.0.1, in its own thread and loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LiveTelegram:
    """The fake Bot API in its own thread and loop (the payment routes call Telegram)."""

    def __init__(self, token: str) -> None:
        self.server = FakeTelegram(token)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeTelegram:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def live_server(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> Iterator[LiveServer]:
    with db.sessionmaker() as session:
        user = make_user(session, 1)
        make_selfie(session, blobs, user)
        make_style(session, "seeded", position=1)
        session.commit()
    config = make_config(tmp_path)
    assert config.telegram.token is not None
    with LiveTelegram(config.telegram.token.get_secret_value()) as telegram:
        config.telegram.api_base_url = telegram.api_base_url
        config.telegram.file_base_url = telegram.file_base_url
        # Fuzzing sends requests without credentials too; don't let the lockout hide real
        # answers.
        app = create_web_app(
            config,
            db,
            blobs,
            publisher_for(celery, db),
            metrics=create_metrics(),
            auth_max_failures=10**9,
            # The tiny checker in-process (it flags nothing): uploads are screened as in
            # production, without the published weights or a checker process to spawn.
            screen_factory=lambda _: LocalScreen(tiny_checker()),
        )
        with LiveServer(app) as server:
            yield server


def mini_app_operations() -> str:
    """The Mini App's API authenticates with init data (user 1's, fresh), not the token; its
    operations get fewer examples (their rules are tested in tests/web/test_miniapp.py)."""
    raw = initdata.build("123456:TEST", {"id": 1, "first_name": "Fuzz", "language_code": "en"})
    return f"""
[[operations]]
include-path-regex = "^/miniapp/"
headers = {{ Authorization = 'tma {raw}' }}
generation.max-examples = {MINIAPP_MAX_EXAMPLES}
# A valid request may find a job already running (409) or the user's actions over the chat's
# flood limit (429): the fuzzer sends far more than 30 a minute.
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "429"]
"""


# Test cases per operation and phase; the whole run stays around a minute on two cores.
MAX_EXAMPLES = 100
MINIAPP_MAX_EXAMPLES = 20
RUN_TIMEOUT_SECONDS = 600
# A schema can type a file part but not say "an SD1.5 LoRA in safetensors" or "a photo with a
# face": uploads whose bytes are not that are refused with 415 or 422 whatever their shape.
# Nor can a pattern say where a webhook URL's host resolves: one that is or resolves to a
# loopback, private or other internal address (`http://0` is 0.0.0.0) is refused with 422, as
# the document's description of `url` says.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-operation-id = ["upload_style", "upload_template", "create_webhook"]
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "403", "404", "409", "413", "415", "422", "429",
]
"""


@pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 120)
def test_schemathesis_with_every_check_finds_no_failure(
    live_server: LiveServer, tmp_path: Path, db: Database
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful) and every check, valid and invalid
    requests, a fixed seed; the output names any failure with a curl line to reproduce it."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG + mini_app_operations(), encoding="utf-8")
    report = tmp_path / "report.json"
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{live_server.url}/api/v1/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-12000:]
    summary = output[output.rfind("SUMMARY") :]
    assert "Tested: 35" in summary or "Tested:" in summary, summary
    logging.getLogger(__name__).info("schemathesis: %.0f s\n%s", elapsed, summary)
    assert json.loads(report.read_text(encoding="utf-8"))
    # The Mini App's operations ran with valid init data: user 1 started a portrait set.
    with db.session() as session:
        user = session.scalar(select(User).where(User.telegram_id == 1))
        assert user is not None
        assert session.scalar(select(func.count(Job.id)).where(Job.user_id == user.id))
