"""The worker side of the job lease: the heartbeat thread keeps it through phases that report no
progress, a takeover elsewhere reads as a cancel, and `run_gpu_job` then abandons the job without
writing an outcome or queueing a delivery."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core.blobstore import LocalBlobStore
from core.settings import AppConfig, BrokerSettings, DatabaseSettings, StorageSettings
from db.base import db_now
from db.models import Job, JobKind, JobStatus
from db.session import Database
from domain import lifecycle
from domain.lifecycle import JobOutcome, JobSnapshot
from facechain.errors import Cancelled
from tasks.celery_app import create_celery
from tasks.context import set_context
from tasks.dispatch import CeleryPublisher
from tasks.jobs import Lease, ProgressReporter, run_gpu_job
from tests.bot.conftest import published
from tests.utils.factories import make_user

LEASE_SECONDS = 3
TASK = SimpleNamespace(request=SimpleNamespace(hostname="gpu-a@host-1"))


@pytest.fixture
def ctx(committed_db: Database, database_url: str, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A worker context on the real (committing) database, a 3 s lease, an in-memory broker."""
    config = AppConfig(
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://", job_lease_seconds=LEASE_SECONDS),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
    )
    celery = create_celery(config)
    for queue in ("gpu", "io"):
        published(celery, queue)
    context = SimpleNamespace(
        config=config,
        db=committed_db,
        celery=celery,
        publisher=CeleryPublisher(celery, committed_db),
        blobs=LocalBlobStore(tmp_path / "blobs"),
    )
    set_context(context)  # type: ignore[arg-type]
    yield context
    set_context(None)


def new_job(db: Database) -> int:
    with db.session() as s:
        user = make_user(s, telegram_id=7401)
        job = Job(user_id=user.id, kind=JobKind.PORTRAIT, params={}, chat_id=7401)
        s.add(job)
        s.flush()
        return job.id


def job_row(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def take_over(db: Database, job_id: int) -> str:
    """What the sweep and another worker do once this worker's lease expired."""
    with db.session() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=db_now(s) - timedelta(1))
        )
    limits = {"outbox_grace": timedelta(seconds=30), "time_limit": timedelta(minutes=16)}
    assert db.call(lifecycle.sweep, **limits).resend == [job_id]
    claim = db.call(lifecycle.claim, job_id, "gpu-b@host-2", timedelta(seconds=60))
    assert claim.owner is not None
    return claim.owner


def wait_for(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


class TestHeartbeat:
    def test_keeps_the_lease_through_a_silent_phase(self, ctx: SimpleNamespace) -> None:
        job_id = new_job(ctx.db)
        claim = ctx.db.call(lifecycle.claim, job_id, "gpu-a@host-1", timedelta(seconds=3))
        assert claim.owner is not None
        with Lease(ctx, job_id, claim.owner) as lease:  # type: ignore[arg-type]
            # Twice the lease with no progress write at all (a model load, say).
            time.sleep(2 * LEASE_SECONDS)
            with ctx.db.session() as s:
                job = s.get(Job, job_id)
                assert job is not None
                assert job.lease_expires_at is not None
                assert job.lease_expires_at > db_now(s)
                assert job.lease_owner == claim.owner
            assert not lease.lost

    def test_a_takeover_reads_as_a_cancel(self, ctx: SimpleNamespace) -> None:
        job_id = new_job(ctx.db)
        claim = ctx.db.call(lifecycle.claim, job_id, "gpu-a@host-1", timedelta(seconds=3))
        assert claim.owner is not None
        with Lease(ctx, job_id, claim.owner) as lease:  # type: ignore[arg-type]
            reporter = ProgressReporter(ctx, job_id, lease)  # type: ignore[arg-type]
            reporter.report(0.1)
            assert not reporter.cancelled()
            take_over(ctx.db, job_id)
            # The next heartbeat (a third of the lease) finds the lease gone.
            assert wait_for(lambda: lease.lost, LEASE_SECONDS)
            assert reporter.cancelled()
            assert not reporter.still_ours()


class TestRunGpuJob:
    def test_a_worker_that_lost_its_lease_writes_nothing(self, ctx: SimpleNamespace) -> None:
        job_id = new_job(ctx.db)
        taken: list[str] = []

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            # This worker stalls (say, its database link hangs) long enough to be replaced.
            reporter.report(0.5)
            taken.append(take_over(ctx.db, job.id))
            for _ in range(200):
                reporter.report(0.6)
                if reporter.cancelled():
                    raise Cancelled("stopped")
                time.sleep(0.05)
            return JobOutcome(result_blobs=["should-never-be-written"])

        assert run_gpu_job(TASK, job_id, work, needs_engine=False) is None  # type: ignore[arg-type]

        job = job_row(ctx.db, job_id)
        assert job.status is JobStatus.RUNNING
        assert job.result_blobs == []
        assert job.lease_owner == taken[0]
        assert job.attempts == 2
        io = [name for name, _ in published(ctx.celery, "io") if name != "delivery.progress"]
        assert io == []

    def test_the_holder_finishes_and_releases_its_lease(self, ctx: SimpleNamespace) -> None:
        job_id = new_job(ctx.db)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            reporter.report(0.5)
            return JobOutcome(result_blobs=["album"])

        status = run_gpu_job(TASK, job_id, work, needs_engine=False)  # type: ignore[arg-type]

        assert status is JobStatus.SUCCEEDED
        job = job_row(ctx.db, job_id)
        assert (job.result_blobs, job.lease_owner, job.lease_expires_at) == (["album"], None, None)
        assert ("delivery.send_result", [job_id]) in published(ctx.celery, "io")

    def test_an_outcome_the_sweep_already_ended_is_delivered_once(
        self, ctx: SimpleNamespace
    ) -> None:
        """The worker stalled past its lease with a cancel asked: the sweep records the cancel
        and queues its notice. The worker then comes back with an outcome: nothing is written
        and it queues no second delivery of the same job (two sends of one notice)."""
        from tasks.sweep import sweep_once

        job_id = new_job(ctx.db)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            with ctx.db.session() as s:
                s.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(cancel_requested=True, lease_expires_at=db_now(s) - timedelta(1))
                )
            assert sweep_once(
                outbox_grace=timedelta(seconds=30), time_limit=timedelta(minutes=16)
            )["failed"]
            late.append(ctx.blobs.put(b"a portrait nobody will record"))
            return JobOutcome(result_blobs=late)

        late: list[str] = []
        run_gpu_job(TASK, job_id, work, needs_engine=False)  # type: ignore[arg-type]

        job = job_row(ctx.db, job_id)
        assert (job.status, job.result_blobs) == (JobStatus.CANCELLED, [])
        sends = [a for name, a in published(ctx.celery, "io") if name == "delivery.send_result"]
        assert sends == [[job_id]]
        # Its files go too: no row records them, so nothing else (/forget) ever would.
        assert not ctx.blobs.exists(late[0])

    def test_files_a_recorded_row_points_at_stay(self, ctx: SimpleNamespace) -> None:
        """Content-addressed: the same bytes recorded by another job are kept when this job's
        outcome is dropped."""
        shared = ctx.blobs.put(b"the same portrait twice")
        with ctx.db.session() as s:
            owner = make_user(s, telegram_id=7402)
            s.add(
                Job(
                    user_id=owner.id,
                    kind=JobKind.PORTRAIT,
                    params={},
                    status=JobStatus.SUCCEEDED,
                    result_blobs=[shared],
                )
            )
        job_id = new_job(ctx.db)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            take_over(ctx.db, job.id)
            return JobOutcome(result_blobs=[shared])

        assert run_gpu_job(TASK, job_id, work, needs_engine=False) is None  # type: ignore[arg-type]
        assert ctx.blobs.exists(shared)


def unreachable() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


class DatabaseSwitch:
    """Cuts the worker's database link (every `db.call` raises as psycopg does when the server
    cannot be reached) until it is restored."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = threading.Event()
        real = db.call

        def call(*args: object, **kwargs: object) -> object:
            if self.down.is_set():
                raise unreachable()
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(db, "call", call)

    def restore_after(self, seconds: float) -> None:
        threading.Timer(seconds, self.down.clear).start()


class TestDatabaseOutage:
    """A database that cannot be reached for a while at the end of a job costs a wait, not a
    rerun: the work is done and stored, and its outcome is recorded once the database is back
    (tests/fault/test_outages.py does the same with a real cut connection)."""

    @pytest.fixture(autouse=True)
    def quick_retries(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("tasks.jobs.FINISH_RETRY_DELAYS_S", (0.05, 0.1, 0.2))

    def test_the_outcome_waits_for_the_database(
        self, ctx: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job_id = new_job(ctx.db)
        switch = DatabaseSwitch(ctx.db, monkeypatch)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            reporter.report(0.5)
            switch.down.set()
            reporter.report(1.0)  # not recorded: best effort
            assert not reporter.cancelled_now()  # the last answer, not an error
            switch.restore_after(0.5)
            return JobOutcome(result_blobs=["album"])

        status = run_gpu_job(TASK, job_id, work, needs_engine=False)  # type: ignore[arg-type]

        assert status is JobStatus.SUCCEEDED
        job = job_row(ctx.db, job_id)
        assert (job.status, job.attempts, job.result_blobs) == (JobStatus.SUCCEEDED, 1, ["album"])
        assert ("delivery.send_result", [job_id]) in published(ctx.celery, "io")

    def test_past_one_lease_the_job_is_left_to_the_sweep(
        self, ctx: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        job_id = new_job(ctx.db)
        switch = DatabaseSwitch(ctx.db, monkeypatch)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            switch.down.set()
            return JobOutcome(result_blobs=["album"])

        started = time.monotonic()
        with pytest.raises(OperationalError):
            run_gpu_job(TASK, job_id, work, needs_engine=False)  # type: ignore[arg-type]
        assert time.monotonic() - started <= LEASE_SECONDS + 1
        switch.down.clear()
        job = job_row(ctx.db, job_id)
        assert (job.status, job.attempts) == (JobStatus.RUNNING, 1)

    def test_an_outage_during_the_work_fails_nothing(
        self, ctx: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The work itself meets the outage (reading the selfies, say): that is not the job's
        fault, so no failure is recorded; the job runs again once its lease expired."""
        job_id = new_job(ctx.db)

        def work(_: object, job: JobSnapshot, reporter: ProgressReporter) -> JobOutcome:
            raise unreachable()

        assert run_gpu_job(TASK, job_id, work, needs_engine=False) is None  # type: ignore[arg-type]

        job = job_row(ctx.db, job_id)
        assert (job.status, job.error_code, job.attempts) == (JobStatus.RUNNING, None, 1)
        assert [n for n, _ in published(ctx.celery, "io") if n == "delivery.send_result"] == []
        with ctx.db.session() as s:
            expired = db_now(s) - timedelta(seconds=1)
            s.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=expired))
        limits = {"outbox_grace": timedelta(seconds=30), "time_limit": timedelta(minutes=16)}
        assert ctx.db.call(lifecycle.sweep, **limits).resend == [job_id]
