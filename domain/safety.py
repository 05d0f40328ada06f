"""What happens when the safety checker flags a picture: one audit row per picture (no image is
kept, only its score), a `safety.flagged` webhook event, and the count that tells when a user
has been flagged often enough for the admin chat to hear of it.

The check itself runs where the pictures are: the gpu worker checks what it paints
(`facechain.engine`), and the front ends check what users send (`screen` in each, one function
per front end) before anything is stored or queued."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy.orm import Session

from db.base import utcnow
from db.repositories.audit import AuditRepository
from domain.audit import audit
from domain.webhooks import emit_event

logger = logging.getLogger(__name__)

# Outputs: portrait (incl. "more like this"), template, upscale; inputs: the upload kinds.
Kind = Literal[
    "portrait", "template", "upscale", "selfie", "pose", "template_photo", "training", "sample"
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
ACTOR = "safety"
ACTION_PREFIX = "safety.flagged."
EVENT = "safety.flagged"
ALERT_WINDOW = timedelta(hours=24)


def _target(user_id: int | None) -> str | None:
    return f"user:{user_id}" if user_id is not None else None


@dataclass(frozen=True)
class Flagged:
    """What `record_flagged` recorded: the user's flags in the alert window, and whether this
    call crossed the alert threshold (the admin chat is told once per crossing)."""

    recent: int
    alert: bool


def record_flagged(
    session: Session,
    user_id: int | None,
    kind: Kind,
    scores: Sequence[float],
    alert_after: int,
    job_id: int | None = None,
) -> Flagged:
    """Record flagged pictures of one check (an audit row each, one webhook event)."""
    if not scores:
        return Flagged(recent=flag_count(session, user_id), alert=False)
    for score in scores:
        audit(
            session,
            ACTOR,
            ACTION_PREFIX + kind,
            _target(user_id),
            kind=kind,
            job_id=job_id,
            score=round(float(score), 4),
        )
    emit_event(
        session,
        EVENT,
        {
            "user_id": user_id,
            "kind": kind,
            "count": len(scores),
            "job_id": job_id,
            "scores": [round(float(s), 4) for s in scores],
        },
    )
    session.flush()
    recent = flag_count(session, user_id)
    before = recent - len(scores)
    alert = user_id is not None and before < alert_after <= recent
    logger.warning(
        "safety: %d %s picture(s) of user %s flagged (%d in 24 h)",
        len(scores),
        kind,
        user_id,
        recent,
    )
    return Flagged(recent=recent, alert=alert)


def flag_count(session: Session, user_id: int | None) -> int:
    """Pictures of `user_id` flagged in the last 24 hours."""
    target = _target(user_id)
    if target is None:
        return 0
    return AuditRepository(session).count_since(ACTION_PREFIX, target, utcnow() - ALERT_WINDOW)


def flagged_totals(session: Session) -> dict[str, int]:
    """Flagged pictures ever recorded, per kind (every kind present, zero when none)."""
    totals = dict.fromkeys(KINDS, 0)
    for action, count in AuditRepository(session).counts_by_action(ACTION_PREFIX).items():
        totals[action[len(ACTION_PREFIX) :]] = count
    return totals
