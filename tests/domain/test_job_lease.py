"""One lease per running job (issue 12, item 1): a duplicate message never touches a job under a
live lease, however long its row went unwritten; an expired lease is re-queued by the sweep and
taken over (counted in `attempts`); the old owner's renewal and its outcome are refused; the
sweep never overwrites a final state committed concurrently; and every failure or cancel the
claim or the sweep decides emits its webhook event."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import db_now
from db.models import Job, JobKind, JobStatus, User, WebhookDelivery
from db.session import Database
from domain import jobs, lifecycle
from domain.lifecycle import JobOutcome
from domain.outbox import take
from domain.webhooks import create_endpoint
from tests.utils.factories import make_user

LIMITS = {"outbox_grace": timedelta(seconds=30), "time_limit": timedelta(minutes=16)}
NODE_A = "gpu-a@host-1"
NODE_B = "gpu-b@host-2"


def new_job(session: Session, **fields: object) -> int:
    user = session.scalar(select(User).where(User.telegram_id == 7301))
    user = user or make_user(session, telegram_id=7301)
    job = Job(
        **{"user_id": user.id, "kind": JobKind.PORTRAIT, "params": {}, "chat_id": 7301, **fields}
    )
    session.add(job)
    session.flush()
    return job.id


def claimed_by(session: Session, node: str, **fields: object) -> int:
    """A job claimed (running) by a worker on `node`."""
    job_id = new_job(session, **fields)
    claim = lifecycle.claim(session, job_id, node)
    assert claim.snapshot is not None
    session.flush()
    return job_id


def row(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def set_row(session: Session, job_id: int, **values: object) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.expire_all()


def expire_lease(session: Session, job_id: int, ago: timedelta = timedelta(seconds=1)) -> None:
    """The owner stopped renewing: its lease ran out `ago`; the row itself was just touched
    (a dispatch stamp, say), which must not make the owner look alive."""
    now = db_now(session)
    set_row(session, job_id, lease_expires_at=now - ago, updated_at=now)


def subscribe(session: Session, *events: str) -> None:
    create_endpoint(
        session,
        url="https://hooks.example.com/facechain",
        secret="s3cret-s3cret-s3cret",
        events=list(events),
        enabled=True,
        actor="test",
    )


def events_of(session: Session) -> list[tuple[str, int]]:
    rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id))
    return [(d.event, d.payload["job_id"]) for d in rows]


class TestClaim:
    def test_claim_leases_the_job_to_one_attempt(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        job = row(session, job_id)
        now = db_now(session)
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        assert job.lease_owner is not None
        assert job.lease_owner.startswith(f"{NODE_A}:")
        assert job.lease_expires_at is not None
        assert now < job.lease_expires_at <= now + lifecycle.DEFAULT_LEASE

    def test_duplicate_under_a_live_lease_is_dropped_however_old_the_row(
        self, session: Session
    ) -> None:
        job_id = claimed_by(session, NODE_A)
        owner = row(session, job_id).lease_owner
        # A long phase without progress writes (a LoRA download, a training's data loading):
        # only the heartbeat keeps the lease, the row's updated_at is ten minutes old.
        now = db_now(session)
        set_row(session, job_id, updated_at=now - timedelta(minutes=10))
        assert lifecycle.renew_lease(session, job_id, str(owner), timedelta(seconds=60))
        set_row(session, job_id, updated_at=now - timedelta(minutes=10))

        duplicate = lifecycle.claim(session, job_id, NODE_B)

        assert duplicate.snapshot is None
        assert not duplicate.ended
        job = row(session, job_id)
        assert (job.status, job.attempts, job.lease_owner) == (JobStatus.RUNNING, 1, owner)

    def test_expired_lease_is_taken_over_by_a_duplicate(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        old = row(session, job_id).lease_owner
        expire_lease(session, job_id)

        takeover = lifecycle.claim(session, job_id, NODE_B)

        assert takeover.snapshot is not None
        assert takeover.snapshot.attempts == 2
        job = row(session, job_id)
        assert job.attempts == 2
        assert job.lease_owner == takeover.owner != old
        assert str(job.lease_owner).startswith(f"{NODE_B}:")

    def test_hand_backs_on_shutdown_never_use_up_the_attempts(self, session: Session) -> None:
        # A training handed back by one warm shutdown after another (several deploys in a day)
        # is resumed every time; only lost workers count towards MAX_ATTEMPTS.
        job_id = claimed_by(session, NODE_A)
        for deploy in range(lifecycle.MAX_ATTEMPTS + 2):
            owner = str(row(session, job_id).lease_owner)
            assert lifecycle.hand_back(session, job_id, owner)
            assert row(session, job_id).lease_owner is None
            node = NODE_B if deploy % 2 == 0 else NODE_A
            resumed = lifecycle.claim(session, job_id, node)
            assert resumed.snapshot is not None, f"deploy {deploy}: {row(session, job_id).status}"
            session.flush()
        job = row(session, job_id)
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)
        # A lost worker still counts.
        expire_lease(session, job_id)
        assert lifecycle.claim(session, job_id, NODE_B).snapshot is not None
        assert row(session, job_id).attempts == 2

    def test_out_of_attempts_fails_as_worker_lost_with_webhook(self, session: Session) -> None:
        subscribe(session, "job.failed")
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, attempts=lifecycle.MAX_ATTEMPTS)
        expire_lease(session, job_id)

        verdict = lifecycle.claim(session, job_id, NODE_B)

        assert verdict.snapshot is None
        assert verdict.ended
        job = row(session, job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "worker_lost")
        assert job.lease_owner is None
        assert events_of(session) == [("job.failed", job_id)]
        assert take(session).deliveries  # published after the commit

    def test_cancel_seen_at_claim_emits_job_cancelled(self, session: Session) -> None:
        subscribe(session, "job.cancelled")
        job_id = new_job(session, cancel_requested=True)

        verdict = lifecycle.claim(session, job_id, NODE_A)

        assert verdict.ended
        assert row(session, job_id).status is JobStatus.CANCELLED
        assert events_of(session) == [("job.cancelled", job_id)]

    def test_engine_failure_never_fails_a_job_running_elsewhere(self, session: Session) -> None:
        subscribe(session, "job.failed")
        job_id = claimed_by(session, NODE_A)
        # A duplicate message reached a worker whose models cannot be built.
        assert lifecycle.fail_unclaimed(session, job_id, "weights_missing", "no weights") is None
        assert row(session, job_id).status is JobStatus.RUNNING
        # A queued job it fails, with the event.
        other = new_job(session)
        status = lifecycle.fail_unclaimed(session, other, "weights_missing", "no weights")
        assert status is JobStatus.FAILED
        assert events_of(session) == [("job.failed", other)]

    def test_final_and_retried_jobs_hold_no_lease(self, session: Session) -> None:
        job_id = new_job(session)
        lifecycle.mark_dispatched(session, job_id)  # the broker's lease
        job = row(session, job_id)
        assert job.lease_expires_at is not None
        job.transition(JobStatus.CANCELLED)  # the user cancelled it while queued
        assert (job.lease_owner, job.lease_expires_at) == (None, None)
        job.transition(JobStatus.QUEUED)  # an admin retry starts without one
        assert (job.lease_owner, job.lease_expires_at) == (None, None)


class TestDatabaseClock:
    def test_a_worker_with_a_slow_clock_is_not_timed_out_early(
        self, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The claiming worker's clock is 10 minutes behind the database's: the attempt's start
        (which the sweep's time limit is measured from, by the database clock) and its end
        (durations, redelivery) are stamped by the database clock, never the worker's."""
        import db.models.job as job_model

        skew = timedelta(minutes=10)
        real = job_model.utcnow
        monkeypatch.setattr(job_model, "utcnow", lambda: real() - skew)
        job_id = claimed_by(session, NODE_A)
        started = row(session, job_id).started_at
        assert started is not None
        assert abs(started - db_now(session)) < timedelta(seconds=30)

        # Well inside its 5-minute limit by any clock but the worker's.
        plan = lifecycle.sweep(session, **{**LIMITS, "time_limit": timedelta(minutes=5)})
        assert plan.failed == []
        assert row(session, job_id).status is JobStatus.RUNNING

        owner = str(row(session, job_id).lease_owner)
        assert lifecycle.finish(session, job_id, JobOutcome(["album"]), None, owner=owner) is (
            JobStatus.SUCCEEDED
        )
        finished = row(session, job_id).finished_at
        assert finished is not None
        assert abs(finished - db_now(session)) < timedelta(seconds=30)


class TestRenewal:
    def test_the_old_owner_is_refused_after_a_takeover(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        old = str(row(session, job_id).lease_owner)
        lease = timedelta(seconds=60)
        assert lifecycle.renew_lease(session, job_id, old, lease)
        expire_lease(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).resend == [job_id]
        new = lifecycle.claim(session, job_id, NODE_B)
        assert new.owner is not None

        # The old worker wakes up: its heartbeat, its progress and its outcome are refused.
        assert not lifecycle.renew_lease(session, job_id, old, lease)
        assert lifecycle.record_progress(session, job_id, 0.9, old, lease) is None
        stale = JobOutcome(result_blobs=["old-result"])
        assert lifecycle.finish(session, job_id, stale, None, owner=old) is None
        job = row(session, job_id)
        assert (job.status, job.result_blobs, job.lease_owner) == (
            JobStatus.RUNNING,
            [],
            new.owner,
        )

        # The new owner's outcome is the one recorded, and its lease is released.
        fresh = JobOutcome(result_blobs=["new-result"])
        assert lifecycle.finish(session, job_id, fresh, None, owner=new.owner) is (
            JobStatus.SUCCEEDED
        )
        job = row(session, job_id)
        assert job.result_blobs == ["new-result"]
        assert (job.lease_owner, job.lease_expires_at) == (None, None)

    def test_progress_renews_the_lease(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        job = row(session, job_id)
        owner, before = str(job.lease_owner), job.lease_expires_at
        assert before is not None
        assert lifecycle.record_progress(session, job_id, 0.5, owner, timedelta(minutes=10)) is (
            False
        )
        after = row(session, job_id).lease_expires_at
        assert after is not None
        assert after > before + timedelta(minutes=5)


class TestSweep:
    def test_expired_lease_is_requeued_and_counted_on_takeover(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        expire_lease(session, job_id)

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.resend == [job_id]
        assert take(session).jobs == [job_id]  # published through the outbox
        job = row(session, job_id)
        assert job.status is JobStatus.RUNNING
        assert job.lease_owner is None
        # Once published, the broker holds it; any worker's claim takes it over.
        lifecycle.mark_dispatched(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).resend == []
        takeover = lifecycle.claim(session, job_id, NODE_B)
        assert takeover.snapshot is not None
        assert row(session, job_id).attempts == 2

    def test_live_lease_is_left_alone(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, updated_at=db_now(session) - timedelta(hours=1))
        plan = lifecycle.sweep(session, **LIMITS)
        assert plan.resend == []
        assert plan.failed == []
        assert row(session, job_id).lease_owner is not None

    def test_unpublished_requeue_is_retried_by_the_next_sweep(self, session: Session) -> None:
        job_id = claimed_by(session, NODE_A)
        expire_lease(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).resend == [job_id]
        # The broker was down: no `mark_dispatched`; the next sweep publishes it again.
        assert lifecycle.sweep(session, **LIMITS).resend == [job_id]

    def test_lost_broker_message_is_requeued_once_the_broker_lease_expires(
        self, session: Session
    ) -> None:
        job_id = new_job(session)
        lifecycle.mark_dispatched(session, job_id)
        job = row(session, job_id)
        assert job.lease_owner is None
        assert job.lease_expires_at is not None
        assert lifecycle.sweep(session, **LIMITS).resend == []
        expire_lease(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).resend == [job_id]

    def test_lease_expired_too_many_times_fails_with_webhook(self, session: Session) -> None:
        subscribe(session, "job.failed")
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, attempts=lifecycle.MAX_ATTEMPTS)
        expire_lease(session, job_id)

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.failed == [job_id]
        assert plan.resend == []
        job = row(session, job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "worker_lost")
        assert events_of(session) == [("job.failed", job_id)]

    def test_timed_out_fails_with_webhook(self, session: Session) -> None:
        subscribe(session, "job.failed")
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, started_at=db_now(session) - timedelta(minutes=20))

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.failed == [job_id]
        job = row(session, job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "timed_out")
        assert job.lease_owner is None
        assert events_of(session) == [("job.failed", job_id)]

    def test_a_worker_that_ran_out_of_time_and_died_is_not_rerun(self, session: Session) -> None:
        """The hard time limit ended the worker: its lease expires, and another attempt would
        only run out of time again, so the job fails as timed_out instead of being re-queued."""
        job_id = claimed_by(session, NODE_A)
        started = db_now(session) - LIMITS["time_limit"] - timedelta(seconds=30)
        set_row(session, job_id, started_at=started)
        # Past the limit but within its grace, under a live lease: the worker's own limit acts.
        assert lifecycle.sweep(session, **LIMITS).failed == []
        expire_lease(session, job_id)

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.failed == [job_id]
        assert plan.resend == []
        assert row(session, job_id).error_code == "timed_out"

    def test_a_requeued_job_waiting_in_the_queue_is_never_timed_out(
        self, session: Session
    ) -> None:
        """A job re-queued after its worker died waits for a free worker (a backlog, a training
        queued behind another): its previous attempt's start says nothing about this wait, so
        neither time-limit rule ends it; the next claim runs it with a fresh start."""
        job_id = claimed_by(session, NODE_A)
        expire_lease(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).resend == [job_id]
        lifecycle.mark_dispatched(session, job_id)  # the broker holds it now
        # Long past the limit (and its grace) since the dead attempt started.
        set_row(session, job_id, started_at=db_now(session) - timedelta(hours=1))

        plan = lifecycle.sweep(session, **LIMITS)  # the broker's lease is live
        assert plan.failed == []
        expire_lease(session, job_id)  # the broker lost the message: published again
        plan = lifecycle.sweep(session, **LIMITS)
        assert plan.failed == []
        assert plan.resend == [job_id]
        assert row(session, job_id).status is JobStatus.RUNNING
        takeover = lifecycle.claim(session, job_id, NODE_B)
        assert takeover.snapshot is not None

    def test_a_training_handed_back_near_its_limit_is_resumed(self, session: Session) -> None:
        """A deploy stops a training 5 h 59 min 50 s into its 6 h: it is handed back
        (checkpoint saved) and the next training worker resumes it; the sweep running in
        between (20 s later) must re-queue it, not fail it as timed_out (no attempt ran out of
        time)."""
        limits = {**LIMITS, "train_time_limit": timedelta(hours=6)}
        job_id = claimed_by(session, NODE_A, kind=JobKind.TRAINING)
        owner = str(row(session, job_id).lease_owner)
        # As the sweep sees it: started 6 h 10 s ago, handed back 20 s ago.
        set_row(session, job_id, started_at=db_now(session) - timedelta(hours=6, seconds=10))
        assert lifecycle.hand_back(session, job_id, owner)
        session.flush()
        time.sleep(0.01)  # the handed-back lease (expiring now) is in the past

        plan = lifecycle.sweep(session, **limits)

        assert plan.failed == []
        assert plan.resend == [job_id]
        assert row(session, job_id).status is JobStatus.RUNNING
        assert lifecycle.claim(session, job_id, NODE_B).snapshot is not None

    def test_cancel_with_a_dead_worker_is_recorded_with_webhook(self, session: Session) -> None:
        subscribe(session, "job.cancelled")
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, cancel_requested=True)
        expire_lease(session, job_id)

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.failed == [job_id]
        assert row(session, job_id).status is JobStatus.CANCELLED
        assert events_of(session) == [("job.cancelled", job_id)]

    def test_a_sweep_cancel_whose_notice_was_lost_is_told_again(self, session: Session) -> None:
        """The sweep's own cancellation goes to delivery once; if that message is lost (the io
        worker died, the broker lost it), a later sweep finds the untold cancellation and sends
        it again, as it does for albums and failures."""
        job_id = claimed_by(session, NODE_A)
        set_row(session, job_id, cancel_requested=True)
        expire_lease(session, job_id)
        assert lifecycle.sweep(session, **LIMITS).failed == [job_id]
        set_row(session, job_id, finished_at=db_now(session) - lifecycle.REDELIVER_AFTER)

        plan = lifecycle.sweep(session, **LIMITS)

        assert plan.undelivered == [job_id]
        lifecycle.mark_delivered(session, job_id)
        assert job_id not in lifecycle.sweep(session, **LIMITS).undelivered

    def test_the_users_own_cancel_is_shown_not_redelivered(self, session: Session) -> None:
        """The Cancel button edits the status message itself: the cancellation counts as told,
        and no sweep sends it again."""
        job_id = new_job(session)
        user_id = row(session, job_id).user_id
        assert user_id is not None
        assert jobs.cancel_for_user(session, user_id, job_id) == jobs.CancelOutcome.CANCELLED
        assert row(session, job_id).delivered_at is not None
        assert take(session).results == []
        set_row(session, job_id, finished_at=db_now(session) - lifecycle.REDELIVER_AFTER)

        assert job_id not in lifecycle.sweep(session, **LIMITS).undelivered

    def test_an_admin_cancel_of_a_queued_job_is_told_to_the_chat(self, session: Session) -> None:
        """An admin's cancel happens outside the chat: the io worker tells it after the commit
        (the outbox), and the sweep again if that message is lost."""
        job_id = new_job(session)

        jobs.cancel_job(session, job_id, "admin:test")

        assert row(session, job_id).status is JobStatus.CANCELLED
        assert row(session, job_id).delivered_at is None
        assert take(session).results == [job_id]
        set_row(session, job_id, finished_at=db_now(session) - lifecycle.REDELIVER_AFTER)
        assert job_id in lifecycle.sweep(session, **LIMITS).undelivered


def test_sweep_never_overwrites_a_success_committed_meanwhile(committed_db: Database) -> None:
    """The worker finishes (row locked, SUCCEEDED not yet committed) while the sweep runs on a
    job it would otherwise fail: the sweep skips the locked row (PostgreSQL), or waits for the
    worker's commit before it reads (SQLite: the whole file is locked, `db.base.lock_for_write`),
    and the success stands."""
    with committed_db.session() as s:
        job_id = claimed_by(s, NODE_A)
        owner = str(row(s, job_id).lease_owner)
        now = db_now(s)
        # Past its time limit, out of attempts and with an expired lease: every sweep rule
        # would end it, were it not being finished right now.
        set_row(
            s,
            job_id,
            attempts=lifecycle.MAX_ATTEMPTS,
            started_at=now - timedelta(minutes=30),
            lease_expires_at=now - timedelta(seconds=5),
        )
        s.commit()

    plans: list[lifecycle.SweepPlan] = []
    with committed_db.session() as worker:
        status = lifecycle.finish(
            worker, job_id, JobOutcome(result_blobs=["album"]), None, owner=owner
        )
        assert status is JobStatus.SUCCEEDED
        worker.flush()  # the row is locked and updated, not committed
        sweeper = threading.Thread(
            target=lambda: plans.append(committed_db.call(lifecycle.sweep, **LIMITS))
        )
        sweeper.start()
        time.sleep(1.0)
        worker.commit()
    sweeper.join(30)
    assert not sweeper.is_alive()

    with committed_db.session() as s:
        job = row(s, job_id)
        assert (job.status, job.result_blobs, job.error_code) == (
            JobStatus.SUCCEEDED,
            ["album"],
            None,
        )
    [plan] = plans
    assert job_id not in plan.failed
    assert job_id not in plan.resend
