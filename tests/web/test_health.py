"""/healthz, /readyz per dependency (database down, broker down, blobs broken) and /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.metrics import Metrics
from core.settings import AppConfig
from db.base import utcnow
from db.models import Job, JobKind, JobStatus
from db.session import Database
from tests.web.conftest import AUTH, publisher_for
from web.app import create_web_app

Client = TestClient[Any, Any]
UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:1/facechain"


@pytest.fixture
def real_celery() -> Iterator[Celery]:
    """A Celery app on the local Redis (only connections are opened, nothing is published)."""
    app = Celery("readyz-test", broker="redis://127.0.0.1:6379/15", set_as_current=False)
    yield app
    app.close()


async def serve(
    config: AppConfig, db: Database, blobs: LocalBlobStore, celery: Any, metrics: Metrics
) -> AsyncIterator[Client]:
    app = create_web_app(config, db, blobs, publisher_for(celery, db), metrics=metrics)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


class TestProbes:
    async def test_healthz(self, client: Client) -> None:
        r = await client.get("/healthz")
        assert (r.status, await r.json()) == (200, {"status": "ok"})

    async def test_ready_when_all_reachable(
        self,
        config: AppConfig,
        db: Database,
        blobs: LocalBlobStore,
        real_celery: Celery,
        metrics: Metrics,
    ) -> None:
        async for client in serve(config, db, blobs, real_celery, metrics):
            r = await client.get("/readyz")
            body = await r.json()
            assert r.status == 200, body
            assert body["status"] == "ok"
            assert set(body["checks"]) == {"database", "broker", "blobs"}
            assert all(c["ok"] for c in body["checks"].values())

    async def test_unready_when_database_unreachable(
        self, config: AppConfig, blobs: LocalBlobStore, real_celery: Celery, metrics: Metrics
    ) -> None:
        dead = Database.from_url(UNREACHABLE_DB)
        try:
            async for client in serve(config, dead, blobs, real_celery, metrics):
                r = await client.get("/readyz")
                body = await r.json()
                assert r.status == 503
                assert body["status"] == "unavailable"
                assert body["checks"]["database"]["ok"] is False
                assert body["checks"]["database"]["error"] == "OperationalError"
                assert body["checks"]["broker"]["ok"] is True
                assert body["checks"]["blobs"]["ok"] is True
                # Liveness is unaffected, and metrics still answer (without database figures).
                assert (await client.get("/healthz")).status == 200
                r = await client.get("/metrics")
                assert r.status == 200
                assert "facechain_metrics_database_up 0.0" in await r.text()
        finally:
            dead.dispose()

    async def test_unready_when_database_stops(
        self,
        config: AppConfig,
        db_engine: Any,
        blobs: LocalBlobStore,
        real_celery: Celery,
        metrics: Metrics,
    ) -> None:
        from sqlalchemy import event

        database = Database(db_engine)
        async for client in serve(config, database, blobs, real_celery, metrics):
            assert (await client.get("/readyz")).status == 200

            def refuse(*args: Any, **kwargs: Any) -> None:
                raise ConnectionRefusedError("database stopped")

            # The server going away: every new connection attempt is refused.
            database.engine.dispose()
            event.listen(database.engine, "do_connect", refuse)
            try:
                r = await client.get("/readyz")
                assert r.status == 503
                assert (await r.json())["checks"]["database"]["ok"] is False
            finally:
                event.remove(database.engine, "do_connect", refuse)
                database.engine.dispose()

    async def test_unready_when_broker_unreachable(
        self, config: AppConfig, db: Database, blobs: LocalBlobStore, metrics: Metrics
    ) -> None:
        dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
        async for client in serve(config, db, blobs, dead, metrics):
            r = await client.get("/readyz")
            body = await r.json()
            assert r.status == 503
            assert body["checks"]["broker"]["ok"] is False
            assert body["checks"]["database"]["ok"] is True

    async def test_unready_when_blob_store_broken(
        self,
        config: AppConfig,
        db: Database,
        tmp_path: Path,
        real_celery: Celery,
        metrics: Metrics,
    ) -> None:
        store = LocalBlobStore(tmp_path / "gone")
        (tmp_path / "gone").rmdir()
        (tmp_path / "gone").write_bytes(b"not a folder")
        async for client in serve(config, db, store, real_celery, metrics):
            r = await client.get("/readyz")
            assert r.status == 503
            assert (await r.json())["checks"]["blobs"]["ok"] is False


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class TestMetrics:
    async def test_exposes_job_figures_and_counters(
        self, client: Client, session: Session, metrics: Metrics
    ) -> None:
        now = utcnow()
        for seconds in (3, 45):
            session.add(
                Job(
                    kind=JobKind.PORTRAIT,
                    status=JobStatus.SUCCEEDED,
                    params={},
                    started_at=now - timedelta(seconds=seconds),
                    finished_at=now,
                )
            )
        session.add(Job(kind=JobKind.TEMPLATE, status=JobStatus.QUEUED, params={}))
        session.add(
            Job(kind=JobKind.PORTRAIT, status=JobStatus.FAILED, params={}, error_code="no_face")
        )
        session.flush()
        metrics.record_update("message")
        metrics.record_error("no_face", "bot")
        await client.get("/api/v1/jobs/999999", headers=AUTH)  # a 404 counts as an API error
        r = await client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        got = samples(await r.text())
        assert got[("facechain_jobs", (("kind", "portrait"), ("status", "succeeded")))] == 2
        assert got[("facechain_queue_depth", (("kind", "template"),))] == 1
        assert got[("facechain_job_duration_seconds_count", (("kind", "portrait"),))] == 2
        assert (
            got[("facechain_job_duration_seconds_bucket", (("kind", "portrait"), ("le", "5.0")))]
            == 1
        )
        assert (
            got[("facechain_job_duration_seconds_bucket", (("kind", "portrait"), ("le", "60.0")))]
            == 2
        )
        assert got[
            ("facechain_job_duration_seconds_sum", (("kind", "portrait"),))
        ] == pytest.approx(48, abs=0.01)
        assert got[("facechain_job_failures", (("code", "no_face"),))] == 1
        assert got[("facechain_updates_handled_total", (("kind", "message"),))] == 1
        assert got[("facechain_errors_total", (("code", "no_face"), ("source", "bot")))] == 1
        assert got[("facechain_errors_total", (("code", "not_found"), ("source", "api")))] == 1
        assert got[("facechain_metrics_database_up", ())] == 1
        key = (
            "facechain_admin_http_requests_total",
            (("method", "GET"), ("route", "/api/v1/jobs/{job_id}"), ("status", "404")),
        )
        assert got[key] == 1
