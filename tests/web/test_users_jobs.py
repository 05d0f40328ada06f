"""Users and jobs over HTTP: pagination, search, ban/quota, cancel/retry, audit rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEntry, Job, JobKind, JobStatus, User, WebhookEndpoint
from domain import lifecycle
from tests.utils.factories import make_user
from tests.web.conftest import AUTH

Client = TestClient[Any, Any]


def audit(session: Session, action: str) -> list[AuditEntry]:
    session.expire_all()
    return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def make_job(session: Session, user: User | None = None, **kw: Any) -> Job:
    job = Job(
        user_id=user.id if user else None,
        kind=kw.pop("kind", JobKind.PORTRAIT),
        status=kw.pop("status", JobStatus.QUEUED),
        params={},
        **kw,
    )
    session.add(job)
    session.flush()
    return job


class TestUsers:
    async def test_list_paginates_and_searches(self, client: Client, session: Session) -> None:
        for i in range(5):
            make_user(session, 1000 + i, username=f"alice{i}" if i < 3 else f"bob{i}")
        r = await client.get("/api/v1/users?limit=2&offset=1", headers=AUTH)
        assert r.status == 200
        page = await r.json()
        assert page["total"] == 5
        assert (page["limit"], page["offset"]) == (2, 1)
        assert [u["telegram_id"] for u in page["items"]] == [1003, 1002]
        r = await client.get("/api/v1/users", params={"q": "alice"}, headers=AUTH)
        assert (await r.json())["total"] == 3
        r = await client.get("/api/v1/users", params={"q": "1004"}, headers=AUTH)
        assert [u["username"] for u in (await r.json())["items"]] == ["bob4"]

    async def test_search_with_non_ascii_digits(self, client: Client, session: Session) -> None:
        make_user(session, 2000, first_name="Ann²")
        r = await client.get("/api/v1/users", params={"q": "²"}, headers=AUTH)
        assert r.status == 200
        assert [u["telegram_id"] for u in (await r.json())["items"]] == [2000]

    async def test_bad_pagination_is_422_with_reasons(self, client: Client) -> None:
        r = await client.get("/api/v1/users?limit=0&offset=-1", headers=AUTH)
        assert r.status == 422
        errors = (await r.json())["error"]["details"]["errors"]
        assert {e["loc"] for e in errors} == {"limit", "offset"}

    async def test_get_ban_unban_quota(self, client: Client, session: Session) -> None:
        make_user(session, 77, username="carol")
        r = await client.get("/api/v1/users/77", headers=AUTH)
        assert (await r.json())["username"] == "carol"
        r = await client.post("/api/v1/users/77/ban", headers=AUTH)
        assert r.status == 200
        assert (await r.json())["is_banned"] is True
        r = await client.get("/api/v1/users", params={"banned": "true"}, headers=AUTH)
        assert [u["telegram_id"] for u in (await r.json())["items"]] == [77]
        r = await client.post("/api/v1/users/77/unban", headers=AUTH)
        assert (await r.json())["is_banned"] is False
        r = await client.put("/api/v1/users/77/quota", json={"daily_quota": 3}, headers=AUTH)
        assert (await r.json())["daily_quota"] == 3
        (ban,) = audit(session, "user.ban")
        assert (ban.actor, ban.target) == ("api", "user:77")
        assert len(audit(session, "user.unban")) == 1
        assert audit(session, "user.quota")[0].details == {"quota": 3, "previous": None}

    async def test_quota_validation(self, client: Client, session: Session) -> None:
        make_user(session, 78)
        r = await client.put("/api/v1/users/78/quota", json={"daily_quota": -5}, headers=AUTH)
        assert r.status == 422
        r = await client.put("/api/v1/users/78/quota", json={"quota": 5}, headers=AUTH)
        assert r.status == 422
        r = await client.put(
            "/api/v1/users/78/quota",
            data=b"{not json",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert r.status == 400
        r = await client.put("/api/v1/users/78/quota", data=b"daily_quota=1", headers=AUTH)
        assert r.status == 415
        assert audit(session, "user.quota") == []

    async def test_unknown_user_is_404(self, client: Client) -> None:
        r = await client.post("/api/v1/users/123456789/ban", headers=AUTH)
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
        # Ids are integers: any other path segment names no user.
        r = await client.get("/api/v1/users/abc", headers=AUTH)
        assert r.status == 404


class TestJobs:
    async def test_list_filters(self, client: Client, session: Session) -> None:
        alice = make_user(session, 501)
        bob = make_user(session, 502)
        make_job(session, alice)
        make_job(session, alice, status=JobStatus.FAILED, error_code="no_face")
        make_job(session, bob, kind=JobKind.TEMPLATE)
        r = await client.get("/api/v1/jobs", params={"user": "501"}, headers=AUTH)
        assert (await r.json())["total"] == 2
        r = await client.get("/api/v1/jobs", params={"status": "failed"}, headers=AUTH)
        items = (await r.json())["items"]
        assert [j["error_code"] for j in items] == ["no_face"]
        r = await client.get("/api/v1/jobs", params={"kind": "template"}, headers=AUTH)
        assert [j["user_id"] for j in (await r.json())["items"]] == [bob.id]
        r = await client.get("/api/v1/jobs", params={"kind": "video"}, headers=AUTH)
        assert r.status == 422

    async def test_get_and_404(self, client: Client, session: Session) -> None:
        job = make_job(session)
        r = await client.get(f"/api/v1/jobs/{job.id}", headers=AUTH)
        assert (await r.json())["status"] == "queued"
        r = await client.get("/api/v1/jobs/999999", headers=AUTH)
        assert r.status == 404
        r = await client.get(f"/api/v1/jobs/{2**40}", headers=AUTH)
        assert r.status == 404

    async def test_a_running_job_shows_its_lease(self, client: Client, session: Session) -> None:
        job = make_job(session)
        claim = lifecycle.claim(session, job.id, "gpu-a@host-1")
        session.flush()
        r = await client.get(f"/api/v1/jobs/{job.id}", headers=AUTH)
        body = await r.json()
        assert body["status"] == "running"
        assert body["lease_owner"] == claim.owner
        expires = datetime.fromisoformat(body["lease_expires_at"])
        assert expires > datetime.fromisoformat(body["started_at"])
        r = await client.get("/api/v1/jobs", params={"status": "running"}, headers=AUTH)
        [item] = (await r.json())["items"]
        assert item["lease_owner"] == claim.owner
        document = await (await client.get("/api/v1/openapi.json", headers=AUTH)).json()
        fields = document["components"]["schemas"]["JobOut"]["properties"]
        assert {"lease_owner", "lease_expires_at"} <= set(fields)

    async def test_cancel_queued_publishes_webhook(
        self, client: Client, session: Session, celery: Any
    ) -> None:
        session.add(
            WebhookEndpoint(url="http://x.invalid/", secret="s" * 16, events=["job.cancelled"])
        )
        job = make_job(session, chat_id=4242, status_message_id=17)
        r = await client.post(f"/api/v1/jobs/{job.id}/cancel", headers=AUTH)
        assert r.status == 200
        assert (await r.json())["status"] == "cancelled"
        # The webhook, and the chat told (the io worker edits the job's status message).
        hook, told = celery.send_task.call_args_list
        assert hook.args == ("webhooks.deliver",)
        assert hook.kwargs["queue"] == "io"
        assert told.args == ("delivery.send_result",)
        assert told.kwargs == {"args": [job.id], "queue": "io", "countdown": None}
        assert audit(session, "job.cancel")[0].target == f"job:{job.id}"
        r = await client.post(f"/api/v1/jobs/{job.id}/cancel", headers=AUTH)
        assert r.status == 409
        assert (await r.json())["error"]["code"] == "illegal_transition"

    async def test_retry_requeues_and_dispatches(
        self, client: Client, session: Session, celery: Any
    ) -> None:
        job = make_job(session, status=JobStatus.FAILED, error_code="internal")
        r = await client.post(f"/api/v1/jobs/{job.id}/retry", headers=AUTH)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["status"] == "queued"
        assert body["error_code"] is None
        assert body["dispatched_at"] is not None
        celery.send_task.assert_called_once_with("portrait.generate", args=[job.id], queue="gpu")
        assert audit(session, "job.retry")[0].details == {"previous": "failed"}
        r = await client.post(f"/api/v1/jobs/{job.id}/retry", headers=AUTH)
        assert r.status == 409

    async def test_retry_with_broker_down_leaves_job_for_the_sweep(
        self, client: Client, session: Session, celery: Any
    ) -> None:
        from kombu.exceptions import OperationalError

        celery.send_task.side_effect = OperationalError("broker down")
        job = make_job(session, status=JobStatus.CANCELLED)
        r = await client.post(f"/api/v1/jobs/{job.id}/retry", headers=AUTH)
        assert r.status == 200
        body = await r.json()
        assert body["status"] == "queued"
        assert body["dispatched_at"] is None


class TestStatsAndAudit:
    async def test_stats(self, client: Client, session: Session) -> None:
        make_job(session)
        r = await client.get("/api/v1/stats", headers=AUTH)
        body = await r.json()
        assert body["queue_depth"] == 1
        assert body["jobs"]["by_status"]["queued"] == 1

    async def test_audit_listing(self, client: Client, session: Session) -> None:
        make_user(session, 90)
        await client.post("/api/v1/users/90/ban", headers=AUTH)
        r = await client.get("/api/v1/audit", params={"action": "user.ban"}, headers=AUTH)
        page = await r.json()
        assert page["total"] == 1
        assert page["items"][0]["target"] == "user:90"
