"""Outgoing webhooks: events to deliveries, signatures a receiver can verify, retries, failure."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy.orm import Session

from core.errors import ValidationFailed
from core.settings import WebhooksSettings
from db.models import Job, JobKind, JobStatus, WebhookDelivery, WebhookEndpoint
from db.session import Database
from domain import outbox, webhooks
from tasks import dispatch
from tasks import webhooks as webhook_task
from tasks.context import set_context

SECRET = "receiver-secret-0123456789"


@dataclass
class Receiver:
    """An HTTP receiver on 127.0.0.1 that verifies signatures and fails the first N requests."""

    fail_first: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = webhooks.verify_signature(
            SECRET,
            request.headers["X-FaceChain-Timestamp"],
            body,
            request.headers["X-FaceChain-Signature"],
        )
        self.requests.append({"headers": dict(request.headers), "body": body, "valid": ok})
        if not ok:
            return web.Response(status=401)
        if len(self.requests) <= self.fail_first:
            return web.Response(status=500, text="receiver down")
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        rec.url = str(server.make_url("/hook"))
        yield rec


@pytest.fixture
def worker_db(db: Database) -> Iterator[Database]:
    """Install a worker context whose database is the test's; deliveries may go to the local
    receiver (WEBHOOKS_ALLOW_PRIVATE=true)."""
    config = SimpleNamespace(webhooks=WebhooksSettings(allow_private=True))
    set_context(SimpleNamespace(db=db, config=config))  # type: ignore[arg-type]
    yield db
    set_context(None)


def add_endpoint(
    session: Session, url: str, events: list[str], enabled: bool = True
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(url=url, secret=SECRET, events=events, enabled=enabled)
    session.add(endpoint)
    session.flush()
    return endpoint


def add_job(session: Session) -> Job:
    job = Job(kind=JobKind.PORTRAIT, status=JobStatus.QUEUED, params={})
    session.add(job)
    session.flush()
    return job


class TestSignature:
    def test_sign_is_hmac_of_timestamp_dot_body(self) -> None:
        import hashlib
        import hmac

        body = b'{"a":1}'
        expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
        assert webhooks.sign("k" * 16, 1700000000, body) == f"sha256={expected}"

    def test_verify_accepts_fresh_and_rejects_tampered_or_stale(self) -> None:
        body = b'{"x":2}'
        sig = webhooks.sign(SECRET, 1000, body)
        assert webhooks.verify_signature(SECRET, "1000", body, sig, now=1100)
        assert not webhooks.verify_signature(SECRET, "1000", body + b" ", sig, now=1100)
        assert not webhooks.verify_signature("other-secret-xxxxxx", "1000", body, sig, now=1100)
        assert not webhooks.verify_signature(SECRET, "1000", body, sig, now=1000 + 301)
        assert not webhooks.verify_signature(SECRET, "abc", body, sig, now=1000)

    def test_backoff_doubles_and_caps(self) -> None:
        assert [webhooks.backoff_seconds(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
        assert webhooks.backoff_seconds(50) == webhooks.BACKOFF_MAX_SECONDS


class TestEmitEvent:
    def test_creates_deliveries_for_subscribed_enabled_endpoints(self, session: Session) -> None:
        wanted = add_endpoint(session, "http://a.invalid/", ["job.succeeded", "job.failed"])
        add_endpoint(session, "http://b.invalid/", ["job.failed"])
        add_endpoint(session, "http://c.invalid/", ["job.succeeded"], enabled=False)
        job = add_job(session)
        ids = webhooks.emit_event(session, "job.succeeded", webhooks.job_event_payload(job))
        assert len(ids) == 1
        delivery = session.get(WebhookDelivery, ids[0])
        assert delivery is not None
        assert delivery.endpoint_id == wanted.id
        assert delivery.status == "pending"
        assert delivery.payload["job_id"] == job.id
        assert outbox.take(session).deliveries == ids
        assert outbox.take(session).deliveries == []

    def test_no_endpoints_is_fine(self, session: Session) -> None:
        assert webhooks.emit_event(session, "style.trained", {"style_id": 1}) == []

    def test_unknown_event_is_refused(self, session: Session) -> None:
        with pytest.raises(ValidationFailed):
            webhooks.emit_event(session, "job.exploded", {})

    def test_check_events(self) -> None:
        assert webhooks.check_events(["job.failed", "job.succeeded", "job.failed"]) == [
            "job.succeeded",
            "job.failed",
        ]
        with pytest.raises(ValidationFailed):
            webhooks.check_events([])
        with pytest.raises(ValidationFailed):
            webhooks.check_events(["nope"])

    def test_enqueue_publishes_on_io(self) -> None:
        from unittest import mock

        from celery import Celery

        celery = mock.create_autospec(Celery, instance=True)
        dispatch.enqueue_deliveries(celery, [3, 4])
        assert celery.send_task.call_args_list == [
            mock.call("webhooks.deliver", args=[3], queue="io"),
            mock.call("webhooks.deliver", args=[4], queue="io"),
        ]


def load(db: Database, delivery_id: int) -> WebhookDelivery:
    row = db.call(lambda s: s.get(WebhookDelivery, delivery_id))
    assert row is not None
    return row


def emit_one(db: Database, url: str, event: str = "job.succeeded") -> int:
    def run(session: Session) -> int:
        add_endpoint(session, url, [event])
        job = add_job(session)
        return webhooks.emit_event(session, event, webhooks.job_event_payload(job))[0]

    return db.call(run)


class TestDelivery:
    async def test_receiver_verifies_signature_and_headers(
        self, db: Database, receiver: Receiver
    ) -> None:
        delivery_id = emit_one(db, receiver.url)
        outcome = await asyncio.to_thread(
            webhook_task.attempt_delivery, db, delivery_id, allow_private=True
        )
        assert outcome.status == "delivered"
        assert len(receiver.requests) == 1
        req = receiver.requests[0]
        assert req["valid"]
        assert req["headers"]["X-FaceChain-Event"] == "job.succeeded"
        assert req["headers"]["X-FaceChain-Delivery"] == str(delivery_id)
        assert req["headers"]["X-FaceChain-Signature"].startswith("sha256=")
        body = json.loads(req["body"])
        assert body["id"] == delivery_id
        assert body["event"] == "job.succeeded"
        assert body["data"]["kind"] == "portrait"
        row = load(db, delivery_id)
        assert row.status == "delivered"
        assert row.attempts == 1
        assert row.last_status_code == 204
        assert row.delivered_at is not None
        # A redelivered task does nothing once delivered.
        again = await asyncio.to_thread(webhook_task.attempt_delivery, db, delivery_id)
        assert again.status == "delivered"
        assert len(receiver.requests) == 1

    async def test_retries_after_receiver_fails_twice(
        self, worker_db: Database, receiver: Receiver
    ) -> None:
        receiver.fail_first = 2
        delivery_id = emit_one(worker_db, receiver.url)
        # Eager apply runs each `self.retry` at once (countdown ignored); a worker would wait.
        await asyncio.to_thread(webhook_task.deliver_webhook.apply, args=[delivery_id])
        assert len(receiver.requests) == 3
        assert all(r["valid"] for r in receiver.requests)
        # Every attempt carries the same delivery id (receivers deduplicate on it).
        assert {r["headers"]["X-FaceChain-Delivery"] for r in receiver.requests} == {
            str(delivery_id)
        }
        row = load(worker_db, delivery_id)
        assert row.status == "delivered"
        assert row.attempts == 3
        assert row.last_status_code == 204
        assert row.last_error is None

    async def test_retry_countdown_follows_backoff(
        self, worker_db: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        receiver.fail_first = 10
        delivery_id = emit_one(worker_db, receiver.url)
        countdowns: list[float] = []

        class Retry(Exception):
            pass

        def fake_retry(*, countdown: float) -> Exception:
            countdowns.append(countdown)
            return Retry()

        monkeypatch.setattr(webhook_task.deliver_webhook, "retry", fake_retry)
        for _ in range(2):
            with pytest.raises(Retry):
                await asyncio.to_thread(webhook_task.deliver_webhook.run, delivery_id)
        assert countdowns == [10.0, 20.0]
        row = load(worker_db, delivery_id)
        assert row.status == "pending"
        assert row.attempts == 2
        assert row.last_status_code == 500
        # The status and our own words: never what the receiver answered (readable through
        # the admin API, it would let a token holder read internal services).
        assert row.last_error == "HTTP 500 Internal Server Error"

    async def test_marked_failed_after_last_attempt(
        self, worker_db: Database, receiver: Receiver
    ) -> None:
        receiver.fail_first = 100
        delivery_id = emit_one(worker_db, receiver.url)
        await asyncio.to_thread(webhook_task.deliver_webhook.apply, args=[delivery_id])
        assert len(receiver.requests) == webhooks.MAX_ATTEMPTS
        row = load(worker_db, delivery_id)
        assert row.status == "failed"
        assert row.attempts == webhooks.MAX_ATTEMPTS
        assert row.last_status_code == 500

    def test_connection_error_is_recorded(self, db: Database) -> None:
        delivery_id = emit_one(db, "http://127.0.0.1:1/hook")
        outcome = webhook_task.attempt_delivery(db, delivery_id, allow_private=True)
        assert outcome.status == "pending"
        assert outcome.status_code is None
        row = load(db, delivery_id)
        assert row.attempts == 1
        assert row.last_error == "ConnectError: could not connect"

    def test_disabled_endpoint_fails_without_request(self, db: Database) -> None:
        delivery_id = emit_one(db, "http://127.0.0.1:1/hook")

        def disable(session: Session) -> None:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            assert endpoint is not None
            endpoint.enabled = False

        db.call(disable)
        outcome = webhook_task.attempt_delivery(db, delivery_id)
        assert outcome.status == "failed"
        assert outcome.attempts == 0

    def test_resend_stale_deliveries(self, db: Database) -> None:
        from datetime import timedelta
        from unittest import mock

        from celery import Celery

        delivery_id = emit_one(db, "http://127.0.0.1:1/hook")
        celery = mock.create_autospec(Celery, instance=True)
        assert webhook_task.resend_stale_deliveries(celery, db, timedelta(seconds=-60)) == 1
        celery.send_task.assert_called_once_with(
            "webhooks.deliver", args=[delivery_id], queue="io"
        )
        assert webhook_task.resend_stale_deliveries(celery, db, timedelta(hours=1)) == 0


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Names this test resolves itself: each lookup takes the next answer (a list of
    addresses; the last answer stays); every other name goes to the system resolver."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return [info for address in answer for info in real(address, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


class TestDestinations:
    """Deliveries connect only to checked addresses: internal services are out of reach."""

    @pytest.mark.parametrize(
        ("address", "kind"),
        [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("10.0.0.5", "private"),
            ("172.16.3.4", "private"),
            ("192.168.1.1", "private"),
            ("fd00::5", "unique-local"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("100.64.0.1", "not publicly routable"),
            ("93.184.216.34", None),
            ("2606:2800:220:1:248:1893:25c8:1946", None),
        ],
    )
    def test_address_kinds(self, address: str, kind: str | None) -> None:
        assert webhooks.address_kind(address) == kind

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
            ("http://169.254.169.254/", "169.254.169.254 is a link-local address"),
            ("http://10.0.0.5/", "10.0.0.5 is a private address"),
            ("http://localhost:5432/", "localhost (127.0.0.1) is a loopback address"),
            ("http://127.1/", "127.1 (127.0.0.1) is a loopback address"),
            ("http://0x7f000001/", "is a loopback address"),
            ("http://0/", "(0.0.0.0) is a unspecified address"),
        ],
    )
    def test_registration_refuses_internal_destinations(self, url: str, reason: str) -> None:
        with pytest.raises(webhooks.DestinationRefused, match=re.escape(reason)) as info:
            webhooks.check_destination(url, allow_private=False)
        assert "WEBHOOKS_ALLOW_PRIVATE=true" in str(info.value)
        webhooks.check_destination(url, allow_private=True)

    def test_registration_accepts_public_and_unresolvable_hosts(
        self, dns: dict[str, list[list[str]]]
    ) -> None:
        dns["hooks.example.com"] = [["93.184.216.34"]]
        webhooks.check_destination("https://hooks.example.com/x", allow_private=False)
        webhooks.check_destination("https://93.184.216.34:8443/x", allow_private=False)
        # Not resolvable now: let through, the delivery resolves and checks again.
        webhooks.check_destination("https://nowhere.invalid/x", allow_private=False)
        webhooks.check_destination("https://" + "a" * 70 + ".example/x", allow_private=False)
        # One internal address among public ones is enough to refuse.
        dns["mixed.example.com"] = [["93.184.216.34", "127.0.0.1"]]
        with pytest.raises(webhooks.DestinationRefused):
            webhooks.check_destination("https://mixed.example.com/", allow_private=False)

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
    async def test_delivery_to_an_internal_address_is_refused_before_connecting(
        self, db: Database, receiver: Receiver, host: str
    ) -> None:
        url = receiver.url.replace("127.0.0.1", host)
        delivery_id = emit_one(db, url)
        outcome = await asyncio.to_thread(webhook_task.attempt_delivery, db, delivery_id)
        assert outcome.status == "pending"
        assert receiver.requests == []
        row = load(db, delivery_id)
        assert row.last_status_code is None
        assert row.last_error is not None
        assert row.last_error.startswith("refused: url's host ")
        assert "is a loopback address" in row.last_error

    async def test_a_name_rebound_to_loopback_after_registration_is_refused(
        self, db: Database, receiver: Receiver, dns: dict[str, list[list[str]]]
    ) -> None:
        # DNS rebinding: public when the endpoint is registered, loopback a moment later.
        dns["rebind.example.com"] = [["93.184.216.34"], ["127.0.0.1"]]
        url = receiver.url.replace("127.0.0.1", "rebind.example.com")
        webhooks.check_destination(url, allow_private=False)
        delivery_id = emit_one(db, url)
        await asyncio.to_thread(webhook_task.attempt_delivery, db, delivery_id)
        assert receiver.requests == []
        assert "rebind.example.com (127.0.0.1) is a loopback" in (
            load(db, delivery_id).last_error or ""
        )

    async def test_the_connection_goes_to_the_checked_address_under_the_host_name(
        self, db: Database, receiver: Receiver, dns: dict[str, list[list[str]]]
    ) -> None:
        # The name resolves once, at connect time, and the socket goes to that address (a
        # second lookup would answer an address where nothing listens); the request still
        # names the host (Host header, and TLS would verify that name).
        dns["hooks.example.com"] = [["127.0.0.1"], ["10.9.9.9"]]
        url = receiver.url.replace("127.0.0.1", "hooks.example.com")
        delivery_id = emit_one(db, url)
        outcome = await asyncio.to_thread(
            webhook_task.attempt_delivery, db, delivery_id, allow_private=True
        )
        assert outcome.status == "delivered"
        port = url.split(":")[2].split("/")[0]
        assert receiver.requests[0]["headers"]["Host"] == f"hooks.example.com:{port}"

    def test_the_worker_reads_the_setting(
        self, db: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        seen: list[bool] = []

        def attempt(_db: Database, _id: int, *, allow_private: bool) -> webhooks.DeliveryOutcome:
            seen.append(allow_private)
            return webhooks.DeliveryOutcome("delivered", 1)

        monkeypatch.setattr(webhook_task, "attempt_delivery", attempt)
        for allow in (False, True):
            config = SimpleNamespace(webhooks=WebhooksSettings(allow_private=allow))
            set_context(SimpleNamespace(db=db, config=config))  # type: ignore[arg-type]
            try:
                assert webhook_task.deliver_webhook.run(1) == "delivered"
            finally:
                set_context(None)
        assert seen == [False, True]
