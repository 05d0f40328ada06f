"""Admin operations shared by the web API and the bot: effects and audit rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

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
from service import admin
from service.errors import Forbidden, IllegalTransition, NotFound, ValidationFailed
from tasks.webhooks import take_emitted


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
        stats = admin.stats(session)
        assert stats["users"] == {"total": 2, "banned": 1, "active_24h": 1}
        assert stats["jobs"]["by_status"]["succeeded"] == 5
        assert stats["jobs"]["by_kind"]["template"] == {"queued": 1}
        assert stats["queue_depth"] == 2
        assert stats["durations_24h"]["count"] == 5
        assert stats["durations_24h"]["avg_seconds"] == pytest.approx(40.0)
        assert stats["durations_24h"]["p95_seconds"] == pytest.approx(100.0)
        assert stats["failures_by_code"] == {"no_face": 1}
        assert [w["name"] for w in stats["workers_seen"]] == ["gpu@host1"]

    def test_percentile(self) -> None:
        assert admin.percentile([], 95) is None
        assert admin.percentile([3.0], 95) == 3.0
        assert admin.percentile([float(i) for i in range(1, 101)], 95) == 95.0


class TestUsers:
    def test_ban_unban_and_quota_are_audited(self, session: Session) -> None:
        make_user(session)
        user = admin.ban_user(session, 42, "tg:1")
        assert user.is_banned
        assert not user.ban_notified
        assert admin.unban_user(session, 42, "api").is_banned is False
        assert admin.set_quota(session, 42, 5, "api").daily_quota == 5
        assert admin.set_quota(session, 42, None, "api").daily_quota is None
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
            admin.ban_user(session, 999, "api")
        make_user(session)
        with pytest.raises(ValidationFailed):
            admin.set_quota(session, 42, -1, "api")
        assert audit_rows(session, "user.quota") == []


class TestJobs:
    def test_cancel_queued_emits_event(self, session: Session) -> None:
        session.add(
            WebhookEndpoint(url="http://x.invalid", secret="s" * 16, events=["job.cancelled"])
        )
        job = make_job(session)
        admin.cancel_job(session, job.id, "api")
        assert job.status is JobStatus.CANCELLED
        (delivery_id,) = take_emitted(session)
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert delivery.payload["status"] == "cancelled"
        assert audit_rows(session, "job.cancel")[0].target == f"job:{job.id}"

    def test_cancel_running_sets_flag(self, session: Session) -> None:
        job = make_job(session, JobStatus.RUNNING)
        admin.cancel_job(session, job.id, "api")
        assert job.status is JobStatus.RUNNING
        assert job.cancel_requested

    def test_cancel_finished_is_illegal(self, session: Session) -> None:
        job = make_job(session, JobStatus.SUCCEEDED)
        with pytest.raises(IllegalTransition):
            admin.cancel_job(session, job.id, "api")

    def test_retry_failed(self, session: Session) -> None:
        job = make_job(session, JobStatus.FAILED, error_code="internal")
        admin.retry_job(session, job.id, "api")
        assert job.status is JobStatus.QUEUED
        assert job.error_code is None
        assert job.dispatched_at is None
        assert audit_rows(session, "job.retry")[0].details == {"previous": "failed"}
        with pytest.raises(IllegalTransition):
            admin.retry_job(session, job.id, "api")
        with pytest.raises(NotFound):
            admin.retry_job(session, 10**6, "api")


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
        admin.update_template(session, a.id, "api", enabled=False, names={"ru": "А"})
        assert not a.enabled
        assert a.names == {"en": "a", "ru": "А"}
        admin.reorder_templates(session, [c.id, a.id], "api")
        assert [t.position for t in (c, a, b)] == [1, 2, 3]
        admin.update_template(session, b.id, "api", position=1)
        assert [t.position for t in (b, c, a)] == [1, 2, 3]
        with pytest.raises(NotFound):
            admin.reorder_templates(session, [c.id, 10**6], "api")
        with pytest.raises(ValidationFailed):
            admin.reorder_templates(session, [c.id, c.id], "api")
        actions = [e.action for e in session.scalars(select(AuditEntry))]
        assert actions.count("template.update") == 2
        assert "template.reorder" in actions

    def test_delete_rules_and_blobs(self, session: Session) -> None:
        shared, own = "a" * 64, "b" * 64
        catalog = make_template(session, "cat", 1, origin=StyleOrigin.CATALOG)
        with pytest.raises(Forbidden):
            admin.delete_template(session, catalog.id, "api")
        busy = make_template(session, "busy", 2)
        job = Job(kind=JobKind.TEMPLATE, status=JobStatus.QUEUED, params={}, template_id=busy.id)
        session.add(job)
        session.flush()
        with pytest.raises(admin.InUse):
            admin.delete_template(session, busy.id, "api")
        first = make_template(session, "x", 3, image_blob=shared, thumbnail_blob=own)
        second = make_template(session, "y", 4, image_blob=shared)
        assert admin.delete_template(session, first.id, "api") == [own]
        assert admin.delete_template(session, second.id, "api") == [shared]
        assert session.get(Template, first.id) is None
        assert len(audit_rows(session, "template.delete")) == 2
