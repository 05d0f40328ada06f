"""The OpenAPI document: every served route is documented (and nothing else), refs resolve,
and a schemathesis fuzz pass over it against a live server finds no 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from bot.web.app import create_web_app
from bot.web.keys import OPENAPI, ROUTES
from bot.web.metrics import create_metrics
from db.session import Database
from service.blobstore import LocalBlobStore
from tests.utils.factories import make_style, make_user
from tests.web.conftest import AUTH, make_config

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
            mock.create_autospec(Celery, instance=True),
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
        for path, ops in doc["paths"].items():
            for op in ops.values():
                protected = bool(op["security"])
                assert protected == (path not in {"/healthz", "/readyz", "/metrics"}), path
                if protected:
                    assert "401" in op["responses"]
        webhook_in = schemas["WebhookIn"]["properties"]
        assert "secret" in webhook_in
        assert "secret" not in schemas["WebhookOut"]["properties"]
        schemathesis.openapi.from_dict(doc).validate()


# ---- fuzzing ----


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


@pytest.fixture
def live_server(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> Iterator[LiveServer]:
    with db.sessionmaker() as session:
        make_user(session, 1)
        make_style(session, "seeded", position=1)
        session.commit()
    # Fuzzing sends requests without credentials too; don't let the lockout hide real answers.
    app = create_web_app(
        make_config(tmp_path), db, blobs, celery, metrics=create_metrics(), auth_max_failures=10**9
    )
    with LiveServer(app) as server:
        yield server


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) to fuzz: every operation, negatively too where it takes input."""
    from unittest import mock

    from celery import Celery

    app = create_web_app(
        make_config(Path("unused")),
        mock.Mock(spec=Database),
        mock.Mock(spec=LocalBlobStore),
        mock.create_autospec(Celery, instance=True),
        metrics=create_metrics(),
    )
    cases = []
    for path, ops in sorted(app[OPENAPI]["paths"].items()):
        for method, op in sorted(ops.items()):
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


OPERATIONS = _operations()
FUZZ_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), OPERATIONS, ids=[f"{m} {p} {g.value}" for m, p, g in OPERATIONS]
)
def test_fuzz_finds_no_server_errors(
    live_server: LiveServer, method: str, path: str, mode: GenerationMode
) -> None:
    """Generated requests (valid and invalid) never get a 5xx and match the documented shapes."""
    api = schemathesis.openapi.from_dict(live_server.app[OPENAPI])
    operation = api.find_operation_by_label(f"{method} {path}")
    assert operation is not None

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=10,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=live_server.url, headers=AUTH, timeout=10)
        case.validate_response(response, checks=FUZZ_CHECKS)

    run()
