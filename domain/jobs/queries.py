"""What the chat's job buttons, /history and the Mini App's "My portraits" show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from core.errors import ResultExpired
from db.models import Job, JobKind, JobStatus, Style, Template
from db.repositories.jobs import JobRepository
from domain.jobs.create import owned_job
from domain.privacy import results_expired

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
