"""Admin hardening (issue 14): the lockout never locks out the right token and counts failures
per client (X-Forwarded-For only from ADMIN_TRUSTED_PROXIES), /metrics behind
ADMIN_METRICS_TOKEN, and /metrics and /readyz reads bounded (cached, one read at a time) with the
broker's queue depth per queue."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from core.blobstore import LocalBlobStore
from core.metrics import create_metrics
from core.settings import AdminSettings
from db.session import Database
from domain import stats
from tasks.celery_app import create_celery
from tasks.dispatch import CeleryPublisher
from tests.utils.workers import redis_available, redis_test_url
from tests.web.conftest import AUTH, make_config, publisher_for
from web.app import create_web_app

LIMIT = 10
BAD = {"Authorization": "Bearer wrong-token-wrong-token"}
METRICS_TOKEN = "prometheus-scrape-token-0123456789"


def _app(config: Any, db: Database, blobs: LocalBlobStore, celery: Any, **kw: Any) -> Any:
    return create_web_app(
        config, db, blobs, publisher_for(celery, db), metrics=create_metrics(), **kw
    )


async def test_ten_bad_requests_do_not_lock_out_the_valid_token(
    config: Any, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    """The owner's case: 10 unauthenticated requests from the operator's address."""
    async with TestClient(TestServer(_app(config, db, blobs, celery), host="127.0.0.1")) as c:
        for _ in range(LIMIT):
            assert (await c.get("/api/v1/users")).status == 401
        assert (await c.get("/api/v1/users")).status == 429
        r = await c.get("/api/v1/users", headers=AUTH)
        assert r.status == 200, await r.text()
        # Success does not reset the count: the guesser stays locked out.
        assert (await c.get("/api/v1/users", headers=BAD)).status == 429


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_count(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    config = make_config(tmp_path, trusted_proxies="127.0.0.1, 10.0.0.0/8")
    async with TestClient(TestServer(_app(config, db, blobs, celery), host="127.0.0.1")) as c:
        guesser = {"X-Forwarded-For": "203.0.113.9, 10.1.2.3"}
        for _ in range(LIMIT):
            assert (await c.get("/api/v1/users", headers=guesser)).status == 401
        assert (await c.get("/api/v1/users", headers=guesser)).status == 429
        # Another client behind the same proxy is not locked out.
        other = {"X-Forwarded-For": "198.51.100.7"}
        assert (await c.get("/api/v1/users", headers=other)).status == 401
        assert (await c.get("/api/v1/users", headers={**other, **AUTH})).status == 200
        # A client cannot escape by forging the left-most hop: the proxy's own entry counts.
        forged = {"X-Forwarded-For": "1.2.3.4, 203.0.113.9"}
        assert (await c.get("/api/v1/users", headers=forged)).status == 429


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    config: Any, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    async with TestClient(TestServer(_app(config, db, blobs, celery), host="127.0.0.1")) as c:
        for n in range(LIMIT):
            headers = {"X-Forwarded-For": f"203.0.113.{n}"}
            assert (await c.get("/api/v1/users", headers=headers)).status == 401
        fresh = {"X-Forwarded-For": "198.51.100.99"}
        assert (await c.get("/api/v1/users", headers=fresh)).status == 429


def test_trusted_proxies_setting_is_validated() -> None:
    assert AdminSettings(trusted_proxies="10.0.0.1, fd00::/8").trusted_proxies
    with pytest.raises(ValueError, match="not an address or network"):
        AdminSettings(trusted_proxies="proxy.example")


async def test_metrics_token_guards_metrics(
    tmp_path: Path, db: Database, blobs: LocalBlobStore, celery: Any
) -> None:
    config = make_config(tmp_path, metrics_token=SecretStr(METRICS_TOKEN))
    async with TestClient(TestServer(_app(config, db, blobs, celery), host="127.0.0.1")) as c:
        assert (await c.get("/metrics")).status == 401
        assert (await c.get("/metrics", headers=BAD)).status == 401
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        r = await c.get("/metrics", headers=scrape)
        assert r.status == 200
        assert "facechain_metrics_database_up" in await r.text()
        assert (await c.get("/metrics", headers=AUTH)).status == 200
        # The metrics token opens nothing else.
        assert (await c.get("/api/v1/users", headers=scrape)).status == 401
        # Probes stay public.
        assert (await c.get("/healthz")).status == 200
    with pytest.raises(ValueError, match="16 characters"):
        AdminSettings(metrics_token=SecretStr("short"))


async def test_metrics_and_readyz_read_once_however_many_requests_arrive(
    config: Any,
    db: Database,
    blobs: LocalBlobStore,
    celery: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real = stats.read_snapshot

    def counting(session: Any) -> stats.DatabaseSnapshot:
        reads.append(1)
        return real(session)

    monkeypatch.setattr(stats, "read_snapshot", counting)
    pings: list[int] = []

    def slow_ping() -> None:
        pings.append(1)
        time.sleep(0.5)  # every probe below arrives while this one is in flight

    monkeypatch.setattr(db, "ping", slow_ping)
    async with TestClient(TestServer(_app(config, db, blobs, celery), host="127.0.0.1")) as c:
        scrapes = await asyncio.gather(*(c.get("/metrics") for _ in range(20)))
        assert {r.status for r in scrapes} == {200}
        probes = await asyncio.gather(*(c.get("/readyz") for _ in range(20)))
        assert len({r.status for r in probes}) == 1
    assert len(reads) == 1
    assert len(pings) == 1


@pytest.mark.skipif(not redis_available(), reason="no Redis on 127.0.0.1:6379")
async def test_metrics_report_the_broker_queue_depth_per_queue(
    tmp_path: Path, db: Database, blobs: LocalBlobStore
) -> None:
    url = redis_test_url()
    config = make_config(tmp_path)
    config.broker.url = url
    celery = create_celery(config)
    for queue, n in (("gpu", 2), ("io", 3)):
        for i in range(n):
            celery.send_task("portrait.generate", args=[i], queue=queue)
    app = create_web_app(config, db, blobs, CeleryPublisher(celery, db), metrics=create_metrics())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        text = await (await c.get("/metrics")).text()
    found = dict(re.findall(r'facechain_broker_queue_messages\{queue="(\w+)"\} ([\d.]+)', text))
    assert found == {"gpu": "2.0", "io": "3.0", "train": "0.0"}
    assert "facechain_metrics_broker_up 1.0" in text
    redis.Redis.from_url(url).flushdb()


@pytest.mark.skipif(not redis_available(), reason="no Redis on 127.0.0.1:6379")
async def test_readyz_lists_every_worker_as_its_probe_reports_it(
    tmp_path: Path, db: Database, blobs: LocalBlobStore
) -> None:
    from service.probe import ProbeState
    from service.worker_status import StatusWriter

    url = redis_test_url()
    config = make_config(tmp_path)
    config.broker.url = url
    gpu = ProbeState("worker")
    gpu.set_unready("engine build failed: [weights_missing] model transface is missing")
    io = ProbeState("worker")
    io.set_ready()
    writers = [
        StatusWriter(url, "gpu@a:1", ["gpu"], gpu),
        StatusWriter(url, "io@a:2", ["io"], io),
    ]
    for writer in writers:
        writer.write()
    app = create_web_app(
        config, db, blobs, CeleryPublisher(create_celery(config), db), metrics=create_metrics()
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.get("/readyz")
        body = await r.json()
        assert r.status == 200  # informational: web's own readiness does not depend on them
        workers = {w["name"]: w for w in body["workers"]}
        assert workers["gpu@a:1"]["ready"] is False
        assert workers["gpu@a:1"]["reason"].startswith("engine build failed")
        assert workers["io@a:2"]["ready"] is True
        assert workers["io@a:2"]["seen_s_ago"] < 5
        # A worker that stops cleanly removes itself.
        writers[1].stop()
        body = await (await c.get("/readyz")).json()
        assert [w["name"] for w in body["workers"]] == ["gpu@a:1"]
    writers[0].stop()
    redis.Redis.from_url(url).flushdb()
