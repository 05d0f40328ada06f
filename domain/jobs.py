"""Jobs as users and admins see them: create (with ban, active-job and quota/credit checks),
release to the workers, cancel, retry, and the queries behind the chat's job buttons and
/history.

Every creation first locks the user's row, so the active-job and quota checks and the credit
spend (`domain.billing`) hold even when two updates (or two bot replicas) race. A created job
is committed as queued and published only when `release_job` (after the chat showed its status
message) or `retry_job` puts it in the outbox; the sweep publishes queued jobs that were never
released."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.errors import (
    ActiveJobExists,
    IllegalTransition,
    NotFound,
    ResultExpired,
    ResultUnavailable,
    SelfieRequired,
    TemplateUnavailable,
    UserBanned,
    ValidationFailed,
)
from core.settings import LimitsSettings, PaymentsSettings
from db.base import utcnow
from db.models import (
    Job,
    JobKind,
    JobStatus,
    Photo,
    PhotoKind,
    Style,
    StyleTraining,
    Template,
    User,
)
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository
from domain import billing, outbox, uploads
from domain.audit import audit
from domain.privacy import results_expired
from domain.styles import usable_style
from domain.templates import usable_template
from domain.trainings import valid_name, valid_trigger
from domain.webhooks import emit_job_event

# Without history, assume a job takes this long (the tiny profile is faster, real is ~1 min).
DEFAULT_JOB_SECONDS = 60.0
# Payments off: the free daily quota only (the charge rules are in `domain.billing`).
NO_PAYMENTS = PaymentsSettings(enabled=False)
# FaceChain's HD size for SD1.5's 512 px portraits (×4); smaller images stay plain ×4.
HD_SIZE = 2048


@dataclass(frozen=True)
class CreatedJob:
    """A committed-to-be job and what its status message shows."""

    job_id: int
    position: int
    eta_minutes: int
    # Set when the update that creates it was handled before (a replay after the bot died):
    # the job that run created, and the status message it had shown, if any.
    replayed: bool = False
    status_message_id: int | None = None


@dataclass(frozen=True)
class PoseUpload:
    """A pose photo the user sent with a portrait request, not stored yet."""

    blobs: BlobStore
    data: bytes

    def store(self, session: Session, user_id: int, limits: LimitsSettings) -> str:
        """Count its bytes against the user's day (UploadLimitReached), then store it."""
        uploads.count_upload(session, user_id, len(self.data), limits)
        return self.blobs.put(self.data)


def _lock_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id, with_for_update=True, populate_existing=True)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def check_can_start(
    session: Session,
    user: User,
    limits: LimitsSettings,
    *,
    is_admin: bool,
    kind: JobKind,
    payments: PaymentsSettings | None = None,
) -> billing.Charge:
    """What a new job of `kind` will cost this user; raises the typed error that stops them
    from starting it now, if any (the caller holds the user's row lock)."""
    if user.is_banned:
        raise UserBanned("banned")
    jobs = JobRepository(session)
    if len(jobs.active_for_user(user.id)) >= limits.active_jobs_per_user:
        raise ActiveJobExists("a job is already running")
    return billing.plan_charge(
        session, user, kind, limits, payments or NO_PAYMENTS, is_admin=is_admin
    )


def _selfies(session: Session, user_id: int, limits: LimitsSettings) -> list[Photo]:
    photos = list(PhotoRepository(session).usable_selfies(user_id, utcnow(), limits.max_selfies))
    if not photos:
        raise SelfieRequired("no usable selfie")
    return photos


def _eta_minutes(session: Session, position: int) -> int:
    durations = JobRepository(session).finished_durations(utcnow() - timedelta(days=1))
    average = sum(durations) / len(durations) if durations else DEFAULT_JOB_SECONDS
    return max(1, math.ceil((position + 1) * average / 60.0))


def _created_by(session: Session, update_id: int | None) -> CreatedJob | None:
    """The job a Telegram update already created (its handler ran before the bot died and
    the update is replayed): found, never created or charged twice."""
    if update_id is None:
        return None
    job = session.scalar(select(Job).where(Job.update_id == update_id))
    if job is None:
        return None
    position = JobRepository(session).queue_position(job)
    return CreatedJob(
        job.id,
        position,
        _eta_minutes(session, position),
        replayed=True,
        status_message_id=job.status_message_id,
    )


def _add(
    session: Session,
    job: Job,
    charge: billing.Charge = billing.FREE,
    update_id: int | None = None,
) -> CreatedJob:
    repo = JobRepository(session)
    job.update_id = update_id
    repo.add(job)
    billing.apply_charge(session, job, charge)
    position = repo.queue_position(job)
    return CreatedJob(job.id, position, _eta_minutes(session, position))


def create_portrait_job(
    session: Session,
    user_id: int,
    *,
    style_id: int,
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    num_images: int,
    seed: int | None = None,
    pose: PoseUpload | None = None,
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued portrait job from the user's selfies in a style (checks limits first).

    A pose photo is stored only once every check passed (a refused job leaves no blob), and
    counts against the user's daily upload bytes. A replay of the update that created a job
    (`update_id`) finds that job instead of making a second one."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.PORTRAIT, payments=payments
    )
    style = usable_style(session, user_id, style_id)
    photos = _selfies(session, user_id, limits)
    pose_blob = pose.store(session, user_id, limits) if pose is not None else None
    params: dict[str, Any] = {
        "photo_ids": [p.id for p in photos],
        "style_id": style.id,
        "num_images": num_images,
        "seed": seed,
        "pose_blob": pose_blob,
        # The user's /subject choice at creation (None: FairFace decides on the worker).
        "subject": user.subject,
    }
    return _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.PORTRAIT,
            params=params,
            style_id=style.id,
            chat_id=chat_id,
        ),
        charge,
        update_id,
    )


def create_template_job(
    session: Session,
    user_id: int,
    *,
    faces: list[int],
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    template_id: int | None = None,
    template_photo_id: int | None = None,
    seed: int | None = None,
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued template job; `faces` are 0-based indices of the template's faces."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.TEMPLATE, payments=payments
    )
    if template_id is not None:
        count = len(usable_template(session, user_id, template_id).faces or [])
    else:
        assert template_photo_id is not None
        photo = PhotoRepository(session).owned(user_id, template_photo_id, PhotoKind.TEMPLATE)
        if photo is None:
            raise TemplateUnavailable("the template photo is gone")
        count = len(photo.faces or [])
    chosen = sorted(set(faces))
    if not chosen or any(not 0 <= i < count for i in chosen):
        raise ValidationFailed("no valid face chosen")
    selfie = _selfies(session, user_id, limits)[0]
    params: dict[str, Any] = {
        # The user's newest selfie goes into every chosen face.
        "photo_ids": [selfie.id] * len(chosen),
        "template_id": template_id,
        "template_photo_id": template_photo_id,
        "faces": [i + 1 for i in chosen],
        "seed": seed,
        "subject": user.subject,
    }
    return _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.TEMPLATE,
            params=params,
            template_id=template_id,
            chat_id=chat_id,
        ),
        charge,
        update_id,
    )


def create_training_job(
    session: Session,
    user_id: int,
    *,
    name: str,
    trigger_word: str,
    photo_ids: list[int],
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    update_id: int | None = None,
) -> CreatedJob:
    """A StyleTraining row and its queued training job."""
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    if not (valid_name(name) and valid_trigger(trigger_word)):
        raise ValidationFailed("a training needs a name and a trigger word")
    user = _lock_user(session, user_id)
    check_can_start(session, user, limits, is_admin=is_admin, kind=JobKind.TRAINING)
    repo = PhotoRepository(session)
    photos = [repo.owned(user_id, pid, PhotoKind.TRAINING) for pid in photo_ids]
    blobs = [p.sha256 for p in photos if p is not None]
    if len(blobs) < limits.training_min_images:
        raise ValidationFailed("too few training images")
    training = StyleTraining(
        user_id=user_id, name=name, trigger_word=trigger_word, image_blobs=blobs, captions=[]
    )
    session.add(training)
    session.flush()
    created = _add(
        session,
        Job(
            user_id=user_id,
            kind=JobKind.TRAINING,
            params={"training_id": training.id},
            chat_id=chat_id,
        ),
        update_id=update_id,
    )
    training.job_id = created.job_id
    return created


def create_upscale_job(
    session: Session,
    user_id: int,
    *,
    source_job_id: int,
    index: int,
    size: int,
    chat_id: int,
    limits: LimitsSettings,
    is_admin: bool,
    payments: PaymentsSettings | None = None,
    update_id: int | None = None,
) -> CreatedJob:
    """A queued HD (×4) job for portrait `index` (0-based) of the user's finished portrait job.

    HD does not count against the daily quota: it costs about 1% of a generation (one RRDB
    pass against 30 denoising steps for several candidates) and only enlarges a portrait the
    user already has; with payments on it costs PAYMENTS_PRICE_UPSCALE credits (0: free). The
    one-active-job rule still applies, so it cannot flood the gpu queue.
    """
    if (replayed := _created_by(session, update_id)) is not None:
        return replayed
    user = _lock_user(session, user_id)
    charge = check_can_start(
        session, user, limits, is_admin=is_admin, kind=JobKind.UPSCALE, payments=payments
    )
    source = owned_job(session, user_id, source_job_id)
    if source is not None and results_expired(source):
        raise ResultExpired(f"job {source_job_id}'s images expired")
    if (
        source is None
        or source.kind is not JobKind.PORTRAIT
        or source.status is not JobStatus.SUCCEEDED
        or not 0 <= index < len(source.result_blobs or [])
    ):
        raise ResultUnavailable(f"job {source_job_id} has no portrait {index}")
    params: dict[str, Any] = {"source_job_id": source.id, "index": index, "size": size}
    return _add(
        session,
        Job(user_id=user_id, kind=JobKind.UPSCALE, params=params, chat_id=chat_id),
        charge,
        update_id,
    )


def release_job(session: Session, job_id: int, status_message_id: int | None = None) -> None:
    """Hand a created job to the workers (after the commit), remembering its status message so
    workers can edit it."""
    job = session.get(Job, job_id)
    if job is None:
        return
    if status_message_id is not None:
        job.status_message_id = status_message_id
    outbox.pending(session).jobs.append(job_id)


def owned_job(session: Session, user_id: int, job_id: int) -> Job | None:
    """The job if it belongs to the user."""
    job = session.get(Job, job_id)
    return job if job is not None and job.user_id == user_id else None


class CancelOutcome:
    CANCELLED = "cancelled"
    REQUESTED = "requested"
    FINISHED = "finished"
    MISSING = "missing"


def _cancel(session: Session, job: Job, *, shown: bool) -> str:
    """Cancel a queued job at once (emitting job.cancelled); flag a running one for its worker.

    `shown`: the caller tells the chat itself (the user's Cancel button edits the status
    message), so the cancellation counts as delivered; otherwise the io worker tells the chat
    after the commit (and the sweep again if that message is lost)."""
    if job.status is JobStatus.QUEUED:
        job.transition(JobStatus.CANCELLED)
        job.error_code = "cancelled"
        emit_job_event(session, job, "job.cancelled")
        if shown:
            job.delivered_at = job.finished_at
        elif job.chat_id is not None:
            outbox.pending(session).results.append(job.id)
        return CancelOutcome.CANCELLED
    if job.status is JobStatus.RUNNING:
        # The worker owns a running job; it sees the flag, stops and records the cancellation.
        job.cancel_requested = True
        return CancelOutcome.REQUESTED
    return CancelOutcome.FINISHED


def cancel_for_user(session: Session, user_id: int, job_id: int) -> str:
    """The user's Cancel button: a `CancelOutcome` (missing if the job is not theirs)."""
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.user_id != user_id:
        return CancelOutcome.MISSING
    return _cancel(session, job, shown=True)


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    """An admin's cancel: a queued job at once, a running one at its next progress step."""
    job = JobRepository(session).get_for_update(job_id)
    if _cancel(session, job, shown=False) == CancelOutcome.FINISHED:
        raise IllegalTransition(
            f"job {job_id} is {job.status.value}; only queued or running jobs can be cancelled",
            job_id=job_id,
            current=job.status.value,
        )
    audit(session, actor, "job.cancel", f"job:{job_id}", status=job.status.value)
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """Put a failed or cancelled job back in the queue (published after the commit).

    The job keeps what it was charged; a charge already given back is not taken again (the
    operator retries at their own cost)."""
    job = JobRepository(session).get_for_update(job_id)
    previous = job.status.value
    job.transition(JobStatus.QUEUED)
    audit(session, actor, "job.retry", f"job:{job_id}", previous=previous)
    outbox.pending(session).jobs.append(job_id)
    return job


def jobs_page(
    session: Session,
    *,
    status: JobStatus | None,
    kind: JobKind | None,
    telegram_id: int | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Job], int]:
    """Jobs newest first, filtered by status, kind and the user's Telegram id."""
    return JobRepository(session).page(
        JobRepository(session).search(status=status, kind=kind, telegram_id=telegram_id),
        limit=limit,
        offset=offset,
    )


def get_job(session: Session, job_id: int) -> Job:
    """One job (NotFound otherwise)."""
    return JobRepository(session).get(job_id)


# ---- what the chat's buttons and /history need ----

SHOWABLE = (JobStatus.SUCCEEDED,)


@dataclass(frozen=True)
class JobFacts:
    """What "more like this" and friends need to start a similar job."""

    kind: JobKind
    style_id: int | None
    template_id: int | None
    template_photo_id: int | None
    faces: list[int]


def job_facts(session: Session, user_id: int, job_id: int) -> JobFacts | None:
    """The user's job's inputs (0-based faces); None if it is not theirs."""
    job = owned_job(session, user_id, job_id)
    if job is None:
        return None
    params = job.params or {}
    return JobFacts(
        kind=job.kind,
        style_id=job.style_id if job.style_id is not None else params.get("style_id"),
        template_id=params.get("template_id"),
        template_photo_id=params.get("template_photo_id"),
        faces=[int(f) - 1 for f in params.get("faces", [])],
    )


@dataclass(frozen=True)
class HistoryRow:
    """One line of /history."""

    job_id: int
    kind: JobKind
    status: JobStatus
    created: str
    title: str
    results: int


def history(
    session: Session, user_id: int, language: str, offset: int, page: int
) -> tuple[list[HistoryRow], bool]:
    """One page of the user's jobs, newest first, and whether older ones follow."""
    found = JobRepository(session).for_user(user_id, limit=page + 1, offset=offset)
    rows = []
    for job in found[:page]:
        title = ""
        if job.style_id is not None:
            style = session.get(Style, job.style_id)
            title = style.name_for(language) if style else ""
        elif job.template_id is not None:
            template = session.get(Template, job.template_id)
            title = template.name_for(language) if template else ""
        rows.append(
            HistoryRow(
                job.id,
                job.kind,
                job.status,
                job.created_at.strftime("%Y-%m-%d %H:%M"),
                title,
                len(job.result_blobs or []),
            )
        )
    return rows, len(found) > page


@dataclass(frozen=True)
class JobResults:
    """A finished job's images, to send them again."""

    keys: list[str]
    style_id: int | None
    kind: JobKind
    filename: str


def job_results(session: Session, user_id: int, job_id: int) -> JobResults | None:
    """The user's finished job's result blobs; None if not theirs or not finished."""
    job = owned_job(session, user_id, job_id)
    if job is None or job.status not in SHOWABLE:
        return None
    if results_expired(job):
        raise ResultExpired(f"job {job_id}'s images expired")
    meta = job.result_meta or {}
    return JobResults(
        list(job.result_blobs or []),
        job.style_id,
        job.kind,
        str(meta.get("filename") or f"result-{job.id}.png"),
    )


# ---- what the Mini App's "My portraits" shows ----

# Finished sets listed at most (newest first); /history pages further back.
OVERVIEW_SETS = 30


@dataclass(frozen=True)
class ActiveJob:
    """A queued or running job: where it stands."""

    job_id: int
    kind: JobKind
    status: JobStatus
    position: int
    progress: float
    title: str


@dataclass(frozen=True)
class FinishedSet:
    """A finished portrait or template set and its pictures."""

    job_id: int
    kind: JobKind
    title: str
    created: datetime
    result_blobs: list[str]


@dataclass(frozen=True)
class Overview:
    """The user's jobs in progress and their latest finished sets."""

    active: list[ActiveJob]
    finished: list[FinishedSet]


def _title(session: Session, job: Job, language: str) -> str:
    if job.style_id is not None:
        style = session.get(Style, job.style_id)
        return style.name_for(language) if style else ""
    if job.template_id is not None:
        template = session.get(Template, job.template_id)
        return template.name_for(language) if template else ""
    return ""


def overview(
    session: Session, user_id: int, language: str, limit: int = OVERVIEW_SETS
) -> Overview:
    """Jobs in progress (queue position, progress) and the finished portrait and template sets,
    newest first."""
    repo = JobRepository(session)
    active = [
        ActiveJob(
            job.id,
            job.kind,
            job.status,
            repo.queue_position(job) if job.status is JobStatus.QUEUED else 0,
            float(job.progress or 0.0),
            _title(session, job, language),
        )
        for job in sorted(repo.active_for_user(user_id), key=lambda j: j.id)
    ]
    finished = [
        FinishedSet(
            job.id,
            job.kind,
            _title(session, job, language),
            job.created_at,
            list(job.result_blobs),
        )
        for job in repo.finished_sets(user_id, (JobKind.PORTRAIT, JobKind.TEMPLATE), limit)
    ]
    return Overview(active, finished)
