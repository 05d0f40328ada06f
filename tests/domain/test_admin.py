"""Admin use cases shared by the web API and the bot: effects and audit rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.errors import Forbidden, IllegalTransition, InUse, NotFound, ValidationFailed
from db.base import utcnow
from db.models import (
    AuditEntry,
    Job,
    JobKind,
    JobStatus,
    StyleOrigin,
    Template,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)
from domain import jobs, outbox, stats, templates, users


def audit_rows(session: Session, action: str) -> list[AuditEntry]:
    return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def make_user(session: Session, telegram_id: int = 42, **kw: object) -> User:
    user = User(telegram_id=telegram_id, username=f"u{telegram_id}", **kw)
    session.add(user)
    session.flush()
    return user


def make_job(session: Session, status: JobStatus = JobStatus.QUEUED, **kw: object) -> Job:
    job = Job(kind=kw.pop("kind", JobKind.PORTRAIT), status=status, params={}, **kw)
    session.add(job)
    session.flush()
    return job


class TestStats:
    def test_counts_durations_and_workers(self, session: Session) -> None:
        now = utcnow()
        user = make_user(session, last_seen_at=now)
        make_user(session, 43, is_banned=True)
        for seconds in (10, 20, 30, 40, 100):
            make_job(
                session,
                JobStatus.SUCCEEDED,
                user_id=user.id,
                started_at=now - timedelta(seconds=seconds),
                finished_at=now,
                worker="gpu@host1",
            )
        make_job(session, JobStatus.QUEUED, user_id=user.id)
        make_job(session, JobStatus.QUEUED, kind=JobKind.TEMPLATE)
        make_job(session, JobStatus.FAILED, error_code="no_face")
        figures = stats.stats(session)
        assert figures["users"] == {"total": 2, "banned": 1, "active_24h": 1}
        assert figures["jobs"]["by_status"]["succeeded"] == 5
        assert figures["jobs"]["by_kind"]["template"] == {"queued": 1}
        assert figures["queue_depth"] == 2
        assert figures["durations_24h"]["count"] == 5
        assert figures["durations_24h"]["avg_seconds"] == pytest.approx(40.0)
        assert figures["durations_24h"]["p95_seconds"] == pytest.approx(100.0)
        assert figures["failures_by_code"] == {"no_face": 1}
        assert [w["name"] for w in figures["workers_seen"]] == ["gpu@host1"]

    def test_percentile(self) -> None:
        assert stats.percentile([], 95) is None
        assert stats.percentile([3.0], 95) == 3.0
        assert stats.percentile([float(i) for i in range(1, 101)], 95) == 95.0


class TestUsers:
    def test_ban_unban_and_quota_are_audited(self, session: Session) -> None:
        make_user(session)
        user = users.ban_user(session, 42, "tg:1")
        assert user.is_banned
        assert not user.ban_notified
        assert users.unban_user(session, 42, "api").is_banned is False
        assert users.set_quota(session, 42, 5, "api").daily_quota == 5
        assert users.set_quota(session, 42, None, "api").daily_quota is None
        (ban,) = audit_rows(session, "user.ban")
        assert (ban.actor, ban.target) == ("tg:1", "user:42")
        assert len(audit_rows(session, "user.unban")) == 1
        quotas = audit_rows(session, "user.quota")
        assert [q.details for q in sorted(quotas, key=lambda q: q.id)] == [
            {"quota": 5, "previous": None},
            {"quota": None, "previous": 5},
        ]

    def test_unknown_user_and_bad_quota(self, session: Session) -> None:
        with pytest.raises(NotFound):
            users.ban_user(session, 999, "api")
        make_user(session)
        with pytest.raises(ValidationFailed):
            users.set_quota(session, 42, -1, "api")
        assert audit_rows(session, "user.quota") == []


class TestJobs:
    def test_cancel_queued_emits_event(self, session: Session) -> None:
        session.add(
            WebhookEndpoint(url="http://x.invalid", secret="s" * 16, events=["job.cancelled"])
        )
        job = make_job(session)
        jobs.cancel_job(session, job.id, "api")
        assert job.status is JobStatus.CANCELLED
        (delivery_id,) = outbox.take(session).deliveries
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert delivery.payload["status"] == "cancelled"
        assert audit_rows(session, "job.cancel")[0].target == f"job:{job.id}"

    def test_cancel_running_sets_flag(self, session: Session) -> None:
        job = make_job(session, JobStatus.RUNNING)
        jobs.cancel_job(session, job.id, "api")
        assert job.status is JobStatus.RUNNING
        assert job.cancel_requested

    def test_cancel_finished_is_illegal(self, session: Session) -> None:
        job = make_job(session, JobStatus.SUCCEEDED)
        with pytest.raises(IllegalTransition):
            jobs.cancel_job(session, job.id, "api")

    def test_retry_failed(self, session: Session) -> None:
        job = make_job(session, JobStatus.FAILED, error_code="internal")
        jobs.retry_job(session, job.id, "api")
        assert job.status is JobStatus.QUEUED
        assert job.error_code is None
        assert job.dispatched_at is None
        assert outbox.take(session).jobs == [job.id]
        assert audit_rows(session, "job.retry")[0].details == {"previous": "failed"}
        with pytest.raises(IllegalTransition):
            jobs.retry_job(session, job.id, "api")
        with pytest.raises(NotFound):
            jobs.retry_job(session, 10**6, "api")


def make_template(session: Session, slug: str, position: int, **kw: object) -> Template:
    template = Template(
        slug=slug,
        names={"en": slug},
        image_blob=kw.pop("image_blob", "c" * 64),
        width=10,
        height=10,
        faces=[],
        origin=kw.pop("origin", StyleOrigin.UPLOADED),
        position=position,
        **kw,
    )
    session.add(template)
    session.flush()
    return template


class TestTemplates:
    def test_update_and_reorder(self, session: Session) -> None:
        a = make_template(session, "a", 1)
        b = make_template(session, "b", 2)
        c = make_template(session, "c", 3)
        templates.update_template(session, a.id, "api", enabled=False, names={"ru": "А"})
        assert not a.enabled
        assert a.names == {"en": "a", "ru": "А"}
        templates.reorder_templates(session, [c.id, a.id], "api")
        assert [t.position for t in (c, a, b)] == [1, 2, 3]
        templates.update_template(session, b.id, "api", position=1)
        assert [t.position for t in (b, c, a)] == [1, 2, 3]
        with pytest.raises(NotFound):
            templates.reorder_templates(session, [c.id, 10**6], "api")
        with pytest.raises(ValidationFailed):
            templates.reorder_templates(session, [c.id, c.id], "api")
        actions = [e.action for e in session.scalars(select(AuditEntry))]
        assert actions.count("template.update") == 2
        assert "template.reorder" in actions

    def test_delete_rules_and_blobs(self, session: Session, blobs: LocalBlobStore) -> None:
        shared, own = blobs.put(b"shared image"), blobs.put(b"own thumbnail")
        catalog = make_template(session, "cat", 1, origin=StyleOrigin.CATALOG)
        with pytest.raises(Forbidden):
            templates.delete_template(session, blobs, catalog.id, "api")
        busy = make_template(session, "busy", 2)
        job = Job(kind=JobKind.TEMPLATE, status=JobStatus.QUEUED, params={}, template_id=busy.id)
        session.add(job)
        session.flush()
        with pytest.raises(InUse):
            templates.delete_template(session, blobs, busy.id, "api")
        first = make_template(session, "x", 3, image_blob=shared, thumbnail_blob=own)
        second = make_template(session, "y", 4, image_blob=shared)
        templates.delete_template(session, blobs, first.id, "api")
        session.commit()
        assert (blobs.exists(shared), blobs.exists(own)) == (True, False)
        templates.delete_template(session, blobs, second.id, "api")
        session.commit()
        assert not blobs.exists(shared)
        assert session.get(Template, first.id) is None
        assert len(audit_rows(session, "template.delete")) == 2
