"""Admin operations shared by the admin web API and the bot's admin commands.

Each function takes the caller's `Session` (it never commits) and an `actor` string
("api" for the bearer token, "tg:<telegram id>" for a bot admin), and writes one AuditEntry
per mutation. Webhook events they emit are collected on the session: after the commit the
caller publishes them with `tasks.webhooks.enqueue_deliveries(celery, ids)` where `ids` came
from `tasks.webhooks.take_emitted(session)` before the session closed. A retried job must be
dispatched after the commit (`tasks.dispatch.dispatch_job`); the outbox sweep covers a crash."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ACTIVE_STATUSES, Job, JobStatus, Photo, Style, StyleOrigin, Template, User
from db.repositories.audit import AuditRepository
from db.repositories.jobs import JobRepository
from db.repositories.stats import StatsRepository
from db.repositories.templates import TemplateRepository
from db.repositories.users import UserRepository
from facechain.errors import NoFace
from service.blobstore import BlobStore
from service.errors import AppError, Forbidden, IllegalTransition, NotFound, ValidationFailed
from service.ordering import put_first
from tasks.webhooks import emit_event, job_event_payload

logger = logging.getLogger(__name__)

# Daily quotas above this are surely a typo (the column is a 32-bit integer).
MAX_QUOTA = 1_000_000
WORKER_WINDOW = timedelta(hours=1)
STATS_WINDOW = timedelta(hours=24)


def audit(
    session: Session, actor: str, action: str, target: str | None = None, **details: Any
) -> None:
    """Append an audit entry for a mutation done by `actor`."""
    AuditRepository(session).record(actor, action, target, **details)
    logger.info("audit: %s %s %s", actor, action, target or "")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest-rank) of values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def stats(session: Session) -> dict[str, Any]:
    """Users, jobs by status and kind, queue depth, run-time average/p95 and workers seen."""
    now = utcnow()
    repo = StatsRepository(session)
    by_status: dict[str, int] = {s.value: 0 for s in JobStatus}
    by_kind: dict[str, dict[str, int]] = {}
    for status, kind, n in repo.jobs_by_status_and_kind():
        by_status[status] = by_status.get(status, 0) + n
        by_kind.setdefault(kind, {})[status] = n
    durations = repo.recent_durations(now - STATS_WINDOW)
    return {
        "users": repo.user_counts(now - STATS_WINDOW),
        "jobs": {"by_status": by_status, "by_kind": by_kind},
        "queue_depth": by_status[JobStatus.QUEUED.value],
        "running": by_status[JobStatus.RUNNING.value],
        "durations_24h": {
            "count": len(durations),
            "avg_seconds": sum(durations) / len(durations) if durations else None,
            "p95_seconds": percentile(durations, 95),
        },
        "failures_by_code": repo.failures_by_code(),
        "workers_seen": repo.workers_seen(now - WORKER_WINDOW),
        "generated_at": now.isoformat(),
    }


def _user(session: Session, telegram_id: int) -> User:
    user = UserRepository(session).by_telegram_id(telegram_id)
    if user is None:
        raise NotFound(f"user {telegram_id} not found", telegram_id=telegram_id)
    return user


def ban_user(session: Session, telegram_id: int, actor: str) -> User:
    """Ban a user by Telegram id (they are told once, then ignored)."""
    user = _user(session, telegram_id)
    if not user.is_banned:
        user.is_banned = True
        user.ban_notified = False
    audit(session, actor, "user.ban", f"user:{telegram_id}")
    return user


def unban_user(session: Session, telegram_id: int, actor: str) -> User:
    """Lift a user's ban."""
    user = _user(session, telegram_id)
    user.is_banned = False
    user.ban_notified = False
    audit(session, actor, "user.unban", f"user:{telegram_id}")
    return user


def set_quota(session: Session, telegram_id: int, quota: int | None, actor: str) -> User:
    """Set a user's daily quota; None restores the configured default."""
    if quota is not None and not 0 <= quota <= MAX_QUOTA:
        raise ValidationFailed(f"quota must be between 0 and {MAX_QUOTA}", quota=quota)
    user = _user(session, telegram_id)
    previous = user.daily_quota
    user.daily_quota = quota
    audit(session, actor, "user.quota", f"user:{telegram_id}", quota=quota, previous=previous)
    return user


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    """Cancel a job: a queued one at once, a running one at its next progress step."""
    job = JobRepository(session).get_for_update(job_id)
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.CANCELLED)
        job.error_code = "cancelled"
        emit_event(session, "job.cancelled", job_event_payload(job))
    elif job.status is JobStatus.RUNNING:
        # The worker owns a running job; it sees the flag, stops and records the cancellation.
        job.cancel_requested = True
    else:
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}; only queued or running jobs can be cancelled",
            job_id=job_id,
            current=job.status.value,
        )
    audit(session, actor, "job.cancel", f"job:{job_id}", status=job.status.value)
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """Put a failed or cancelled job back in the queue (dispatch it after the commit)."""
    job = JobRepository(session).get_for_update(job_id)
    previous = job.status.value
    job.transition(JobStatus.QUEUED)
    audit(session, actor, "job.retry", f"job:{job_id}", previous=previous)
    return job


# ---- templates (styles are managed by service.styles) ----


def _template(session: Session, template_id: int) -> Template:
    template = session.get(Template, template_id, with_for_update=True)
    if template is None:
        raise NotFound(f"template {template_id} not found", id=template_id)
    return template


def _template_order(session: Session) -> list[Template]:
    return list(session.scalars(TemplateRepository(session).ordered()).all())


def reorder_templates(session: Session, template_ids: Sequence[int], actor: str) -> list[Template]:
    """Put these templates first, in this order (positions from 1); the rest keep their order."""
    ordered = put_first(_template_order(session), template_ids, "template")
    audit(session, actor, "template.reorder", "templates", first=list(template_ids))
    return ordered


def update_template(
    session: Session,
    template_id: int,
    actor: str,
    *,
    enabled: bool | None = None,
    position: int | None = None,
    names: dict[str, str] | None = None,
    category: str | None = None,
) -> Template:
    """Show/hide, move (1-based position), rename (merged per language) or recategorise."""
    template = _template(session, template_id)
    changes: dict[str, Any] = {}
    if enabled is not None and enabled != template.enabled:
        template.enabled = changes["enabled"] = enabled
    if names:
        merged = {**template.names, **names}
        if merged != template.names:
            template.names = changes["names"] = merged
    if category is not None and category != template.category:
        template.category = changes["category"] = category
    if position is not None:
        ids = [t.id for t in _template_order(session) if t.id != template_id]
        ids.insert(max(0, min(len(ids), position - 1)), template_id)
        reorder_templates(session, ids, actor)
        changes["position"] = position
    if changes:
        audit(session, actor, "template.update", f"template:{template_id}", **changes)
    return template


def _blob_in_use(session: Session, key: str) -> bool:
    """Whether any style, template or photo still points at this blob."""
    checks = (
        select(Style.id).where(or_(Style.lora_blob == key, Style.thumbnail_blob == key)),
        select(Template.id).where(or_(Template.image_blob == key, Template.thumbnail_blob == key)),
        select(Photo.id).where(Photo.sha256 == key),
    )
    return any(session.scalar(stmt.limit(1)) is not None for stmt in checks)


def delete_template(session: Session, template_id: int, actor: str) -> list[str]:
    """Delete an uploaded template; return blob keys nothing else uses (delete them after commit).

    Raises:
        Forbidden: catalog templates come back on the next import; disable them instead.
        InUse: queued or running jobs still use it.
    """
    template = _template(session, template_id)
    if template.origin is StyleOrigin.CATALOG:
        raise Forbidden(f"template {template.slug!r} is from the catalog; disable it instead")
    active = session.scalar(
        select(func.count(Job.id)).where(
            Job.template_id == template_id, Job.status.in_(ACTIVE_STATUSES)
        )
    )
    if active:
        raise InUse(f"template {template_id} has {active} active jobs; cancel them first")
    keys = [k for k in (template.image_blob, template.thumbnail_blob) if k]
    TemplateRepository(session).delete(template)
    audit(session, actor, "template.delete", f"template:{template_id}", slug=template.slug)
    return [k for k in keys if not _blob_in_use(session, k)]


class InUse(AppError):
    """A catalog item still has queued or running jobs."""

    code = "conflict"


@dataclass(frozen=True)
class TemplateImage:
    """An uploaded template photo, decoded and analysed (CPU work, done before the transaction)."""

    data: bytes
    thumbnail: bytes
    width: int
    height: int
    faces: list[dict[str, Any]]


def analyse_template_image(data: bytes, *, max_bytes: int, max_pixels: int) -> TemplateImage:
    """Decode an uploaded template and find its faces (NotAnImage, ImageTooLarge, NoFace)."""
    from facechain.imageio import downscale, load_image
    from service.catalog import TEMPLATE_THUMBNAIL_SIDE, detect_template_faces

    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    faces = detect_template_faces(image)
    if not faces:
        raise NoFace("no face found in the template photo")
    buf = io.BytesIO()
    downscale(image, TEMPLATE_THUMBNAIL_SIDE).save(buf, format="JPEG", quality=90)
    return TemplateImage(data, buf.getvalue(), image.width, image.height, faces)


def add_uploaded_template(
    session: Session,
    blobs: BlobStore,
    image: TemplateImage,
    *,
    names: dict[str, str],
    category: str,
    actor: str,
    slug: str | None = None,
) -> Template:
    """Register an analysed template photo as a new enabled template at the end of the list."""
    from service.catalog import slugify

    repo = TemplateRepository(session)
    if not names.get("en"):
        raise ValidationFailed("a template needs an English name")
    if slug is None:
        base = f"uploaded-{slugify(names['en'])}"[:90].strip("-") or "template"
        slug, n = base, 2
        while repo.by_slug(slug) is not None:
            slug, n = f"{base}-{n}", n + 1
    elif repo.by_slug(slug) is not None:
        raise ValidationFailed(f"slug {slug!r} is taken", slug=slug)
    template = repo.add(
        Template(
            slug=slug,
            names=dict(names),
            category=category,
            image_blob=blobs.put(image.data),
            thumbnail_blob=blobs.put(image.thumbnail),
            width=image.width,
            height=image.height,
            faces=image.faces,
            enabled=True,
            position=repo.next_position(),
            origin=StyleOrigin.UPLOADED,
            owner_id=None,
        )
    )
    audit(
        session,
        actor,
        "template.create",
        f"template:{template.id}",
        slug=slug,
        faces=len(image.faces),
    )
    return template
