"""Flagged pictures: an audit row each (a score, never the image), one `safety.flagged` webhook
event per check, the 24-hour count that alerts the admin chat once, and the /metrics figures."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import AuditEntry, User, WebhookDelivery
from domain import outbox, safety, stats, webhooks
from web.metrics import SnapshotCollector


def make_user(session: Session, telegram_id: int) -> User:
    user = User(telegram_id=telegram_id)
    session.add(user)
    session.flush()
    return user


class TestRecordFlagged:
    def test_rows_event_and_one_alert_when_the_threshold_is_crossed(
        self, session: Session
    ) -> None:
        webhooks.create_endpoint(
            session,
            url="http://hooks.invalid/",
            secret="s" * 32,
            events=["safety.flagged"],
            enabled=True,
            actor="api",
        )
        user = make_user(session, 61)
        first = safety.record_flagged(session, user.id, "portrait", [0.1, 0.2], 3, job_id=9)
        assert first == safety.Flagged(recent=2, alert=False)
        assert outbox.pending(session).deliveries
        second = safety.record_flagged(session, user.id, "selfie", [0.05], 3)
        assert second == safety.Flagged(recent=3, alert=True)
        third = safety.record_flagged(session, user.id, "pose", [0.3], 3)
        assert third == safety.Flagged(recent=4, alert=False)

        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.actor == "safety").order_by(AuditEntry.id)
        ).all()
        assert [r.action for r in rows] == [
            "safety.flagged.portrait",
            "safety.flagged.portrait",
            "safety.flagged.selfie",
            "safety.flagged.pose",
        ]
        assert rows[0].target == f"user:{user.id}"
        assert rows[0].details == {"kind": "portrait", "job_id": 9, "score": 0.1}
        events = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event == "safety.flagged")
        ).all()
        assert [e.payload["count"] for e in events] == [2, 1, 1]
        assert events[0].payload == {
            "user_id": user.id,
            "kind": "portrait",
            "count": 2,
            "job_id": 9,
            "scores": [0.1, 0.2],
        }

    def test_only_the_last_24_hours_count_and_per_user(self, session: Session) -> None:
        ann, bob = make_user(session, 62), make_user(session, 63)
        safety.record_flagged(session, ann.id, "selfie", [0.1, 0.1], 3)
        for row in session.scalars(select(AuditEntry).where(AuditEntry.actor == "safety")):
            row.created_at = utcnow() - timedelta(hours=25)
        session.flush()
        assert safety.flag_count(session, ann.id) == 0
        assert safety.record_flagged(session, bob.id, "selfie", [0.1], 3).recent == 1
        assert safety.flag_count(session, ann.id) == 0

    def test_metrics_figures_per_kind(self, session: Session) -> None:
        user = make_user(session, 64)
        safety.record_flagged(session, user.id, "portrait", [0.1, 0.1, 0.2], 9)
        safety.record_flagged(session, user.id, "training", [0.1], 9)
        snapshot = stats.read_snapshot(session)
        assert snapshot.safety_flagged["portrait"] == 3
        assert snapshot.safety_flagged["training"] == 1
        assert snapshot.safety_flagged["selfie"] == 0
        families = {m.name: m for m in SnapshotCollector(snapshot).collect()}
        samples = {
            s.labels["kind"]: s.value
            for s in families["facechain_safety_flagged_pictures"].samples
        }
        assert samples["portrait"] == 3
        assert set(samples) == set(safety.KINDS)
