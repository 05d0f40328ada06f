"""Jobs and their state machine (the one place that decides which status changes are legal)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.errors import IllegalTransition
from db.base import Base, JSONType, TimestampMixin, UTCDateTime, str_enum, utcnow


class JobKind(enum.StrEnum):
    PORTRAIT = "portrait"
    TEMPLATE = "template"
    TRAINING = "training"
    UPSCALE = "upscale"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# queued → running → succeeded | failed | cancelled; final states stay final (delivery to the
# chat is recorded apart: `delivered_at`, `delivery_attempts`, `delivery_error`).
# running → running is a takeover once the job's lease expired (its worker died; attempts
# counts the claims);
# failed/cancelled → queued is an explicit retry (admin API).
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
}

ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(TimestampMixin, Base):
    """One unit of GPU work for a user: a portrait set, a template, a style training."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[JobKind] = mapped_column(str_enum(JobKind))
    status: Mapped[JobStatus] = mapped_column(
        str_enum(JobStatus), default=JobStatus.QUEUED, index=True
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    # Results: blob keys of the images, and per-image facts (similarity, seed).
    result_blobs: Mapped[list[str]] = mapped_column(JSONType, default=list)
    result_meta: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    style_id: Mapped[int | None] = mapped_column(ForeignKey("styles.id", ondelete="SET NULL"))
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("templates.id", ondelete="SET NULL")
    )
    chat_id: Mapped[int | None] = mapped_column(BigInteger)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Outbox: set once the task reached the broker; the sweep re-sends rows where it is null.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Delivery to the chat, recorded apart from the outcome: when it reached the chat, how many
    # sends were tried, and why it was given up (a terminal Bot API error, or out of attempts).
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    delivery_error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    # The lease of an active job (docs/ARCHITECTURE.md, "Job lease"): the claim that holds it
    # (null: the broker, once published) and until when, by the database clock; renewed by the
    # worker's heartbeat; an expired lease lets the sweep re-queue the job.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # What creating the job cost the user (`ChargeKind` value: a free-quota slot or credits;
    # None: nothing) and when that was given back (a failure that was not the user's, or a
    # cancel before it ran: `domain.billing`); set once, never cleared.
    charge: Mapped[str | None] = mapped_column(String(8))
    charge_credits: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    charge_returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The Telegram update that created the job (None: the API or an admin): a replayed update
    # (the bot died before it was marked done) finds its job instead of creating a second one.
    update_id: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    # The delivery lease (docs/ARCHITECTURE.md, "Delivery lease"): the io task sending the
    # outcome and until when, renewed while it sends; the sweep sends again once it expired.
    # `delivery_step` counts the outcome's send calls that returned, so a second delivery goes
    # on after the last one recorded instead of repeating it.
    delivery_owner: Mapped[str | None] = mapped_column(String(128))
    delivery_lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    delivery_step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def delivery_done(self) -> bool:
        """Whether the chat got the outcome, or its delivery was given up for good."""
        return self.delivered_at is not None or self.delivery_error is not None

    def transition(self, to: JobStatus, *, now: datetime | None = None) -> None:
        """Move to `to`, stamping the time; IllegalTransition if the machine forbids it."""
        if to not in ALLOWED_TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"job {self.id}: {self.status.value} -> {to.value} is not allowed",
                job_id=self.id,
                current=self.status.value,
                requested=to.value,
            )
        now = now or utcnow()
        if to is JobStatus.RUNNING:
            self.attempts += 1
            self.started_at = now
        elif to is JobStatus.QUEUED:
            # A retry starts afresh and must be dispatched again.
            self.error_code = None
            self.error_detail = None
            self.progress = 0.0
            self.finished_at = None
            self.dispatched_at = None
            self.cancel_requested = False
            self.delivered_at = None
            self.delivery_attempts = 0
            self.delivery_error = None
            self.delivery_owner = None
            self.delivery_lease_expires_at = None
            self.delivery_step = 0
            self.lease_owner = None
            self.lease_expires_at = None
        elif to in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            self.finished_at = now
            # Nobody holds a finished job (a worker still at it finds its lease gone and stops).
            self.lease_owner = None
            self.lease_expires_at = None
            if to is JobStatus.SUCCEEDED:
                self.progress = 1.0
        self.status = to

    def fail(self, code: str, detail: str | None = None, *, now: datetime | None = None) -> None:
        """Mark failed with an error code the bot can translate."""
        self.transition(JobStatus.FAILED, now=now)
        self.error_code = code
        self.error_detail = (detail or "")[:2000] or None
