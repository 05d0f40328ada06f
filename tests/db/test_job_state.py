"""The job state machine: every legal move works, every other one is refused."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy.orm import Session

from core.errors import IllegalTransition
from db.models import Job, JobKind, JobStatus, User
from db.models.job import ALLOWED_TRANSITIONS


def make_job(session: Session, status: JobStatus = JobStatus.QUEUED) -> Job:
    user = User(telegram_id=1000 + session.query(User).count())
    session.add(user)
    session.flush()
    job = Job(user_id=user.id, kind=JobKind.PORTRAIT, params={}, status=status)
    session.add(job)
    session.flush()
    return job


class TestTransitions:
    @pytest.mark.parametrize(
        ("start", "to"), list(itertools.product(list(JobStatus), list(JobStatus)))
    )
    def test_matrix(self, session: Session, start: JobStatus, to: JobStatus) -> None:
        job = make_job(session, start)
        if to in ALLOWED_TRANSITIONS[start]:
            job.transition(to)
            assert job.status is to
        else:
            with pytest.raises(IllegalTransition):
                job.transition(to)
            assert job.status is start

    def test_happy_path_stamps_times(self, session: Session) -> None:
        job = make_job(session)
        job.transition(JobStatus.RUNNING)
        assert job.attempts == 1
        assert job.started_at is not None
        job.transition(JobStatus.SUCCEEDED)
        assert job.finished_at is not None
        assert job.progress == 1.0
        session.flush()
        session.expire_all()
        reloaded = session.get(Job, job.id)
        assert reloaded is not None
        assert reloaded.status is JobStatus.SUCCEEDED
        assert reloaded.finished_at is not None
        assert reloaded.finished_at.tzinfo is not None

    def test_redelivery_counts_attempts(self, session: Session) -> None:
        job = make_job(session)
        job.transition(JobStatus.RUNNING)
        job.transition(JobStatus.RUNNING)
        assert job.attempts == 2

    def test_fail_records_code_and_retry_clears_it(self, session: Session) -> None:
        job = make_job(session)
        job.transition(JobStatus.RUNNING)
        job.fail("no_face", "x" * 5000)
        assert job.error_code == "no_face"
        assert job.error_detail is not None
        assert len(job.error_detail) == 2000
        job.dispatched_at = job.finished_at
        job.transition(JobStatus.QUEUED)
        assert job.error_code is None
        assert job.dispatched_at is None

    def test_done_job_cannot_be_cancelled(self, session: Session) -> None:
        job = make_job(session, JobStatus.SUCCEEDED)
        with pytest.raises(IllegalTransition, match="succeeded -> cancelled"):
            job.transition(JobStatus.CANCELLED)
