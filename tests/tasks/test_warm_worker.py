"""Warm gpu workers (issue 14) and a worker that cannot build its engine (issue 12, item 2).

A gpu worker builds its engine before it consumes: it logs `engine ready in X s (...)` and its
probe reports the load; the first job loads nothing. A worker whose engine cannot be built
consumes nothing: the queue stays with the healthy workers, a job running elsewhere is left
alone, and the probe says why it is not ready."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.worker import state as worker_state

from core.blobstore import LocalBlobStore
from core.settings import AppConfig
from db.base import utcnow
from db.models import Job, JobStatus
from db.session import Database
from tasks import generate as generate_task
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.dispatch import CeleryPublisher
from tasks.warm import SoloTimeLimits, WarmReport, build_until_ready
from tests.tasks.test_upscale import worker_context
from tests.utils.factories import make_portrait_job, make_selfie, make_style, make_user
from tests.utils.redis_server import free_port
from tests.utils.workers import WorkerProcess, redis_available, redis_test_url, wait_for

ELSEWHERE = "gpu@healthy-node"


def _jobs(ctx: WorkerContext) -> tuple[int, int]:
    """A job running on another (healthy) worker and one still queued, same user."""
    blobs = LocalBlobStore(ctx.config.storage.blobs_path)
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=771)
        photo = make_selfie(s, blobs, user)
        style = make_style(s)
        running = make_portrait_job(s, user, photo, style)
        running.transition(JobStatus.RUNNING)
        running.worker = ELSEWHERE
        running.lease_owner = ELSEWHERE
        running.lease_expires_at = utcnow() + timedelta(minutes=10)
        queued = make_portrait_job(s, user, photo, style)
        return running.id, queued.id


def _row(db: Database, job_id: int) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    if not redis_available():
        pytest.skip("no Redis on 127.0.0.1:6379")
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "BROKER_URL": redis_test_url(),
        "ENGINE_NUM_CANDIDATES": "2",
        "ENGINE_STEPS": "2",
        "ENGINE_DEVICE": "cpu",
        "TELEGRAM_TOKEN": "123:test",
        "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        "PROBE_HOST": "127.0.0.1",
        "PROBE_PORT": str(free_port()),
    }


@pytest.fixture
def client(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, committed_db: Database
) -> WorkerContext:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = AppConfig()
    ctx = WorkerContext(config, create_celery(config))
    ctx.db = committed_db
    return ctx


@pytest.mark.slow
def test_a_worker_whose_engine_cannot_be_built_consumes_nothing(
    env: dict[str, str], client: WorkerContext, tmp_path: Path
) -> None:
    """Real profile, no weights: the two gpu messages stay queued, both jobs untouched."""
    running, queued = _jobs(client)
    for job_id in (running, queued):
        # The running job's message is a duplicate (a redelivery) of one a healthy node holds.
        client.celery.send_task("portrait.generate", args=[job_id], queue="gpu")
    broker = redis.Redis.from_url(env["BROKER_URL"])
    assert broker.llen("gpu") == 2

    empty = tmp_path / "no-models"
    empty.mkdir()
    worker = WorkerProcess(
        {**env, "ENGINE_PROFILE": "real", "ENGINE_MODELS_DIR": str(empty)},
        "gpu",
        tmp_path / "worker.log",
    )
    try:
        port = int(env["PROBE_PORT"])

        def settled() -> bool:
            touched = _row(client.db, queued).status is not JobStatus.QUEUED
            return touched or "engine build failed" in _readyz(port)[1].get("reason", "")

        wait_for(settled, 90, "the worker to fail its build or consume", worker)
        time.sleep(3)  # a consuming worker would have taken both messages by now
        assert broker.llen("gpu") == 2, worker.log()[-3000:]
        assert _row(client.db, queued).status is JobStatus.QUEUED
        elsewhere = _row(client.db, running)
        assert (elsewhere.status, elsewhere.error_code) == (JobStatus.RUNNING, None)
        assert elsewhere.lease_owner == ELSEWHERE
        status, body = _readyz(port)
        assert status == 503
        assert "weights_missing" in body["reason"]
        log = worker.log()
        assert "not consuming the gpu queue" in log
        assert worker.proc.poll() is None  # backing off, not crash-looping
        # The admin web's /readyz lists it, unready, with the reason.
        [listed] = CeleryPublisher(client.celery, client.db).workers()
        assert (listed.ready, listed.queues) == (False, ["gpu"])
        assert "engine build failed: [weights_missing]" in listed.reason
    finally:
        worker.stop()
    # SIGTERM while backing off: it exits at once, having consumed nothing.
    assert worker.proc.returncode not in (0, None)
    assert broker.llen("gpu") == 2


@pytest.mark.slow
def test_a_warm_worker_is_ready_before_it_consumes_and_the_first_job_loads_nothing(
    env: dict[str, str], client: WorkerContext, tmp_path: Path
) -> None:
    _, queued = _jobs(client)
    worker = WorkerProcess({**env, "ENGINE_PROFILE": "tiny"}, "gpu", tmp_path / "worker.log")
    try:
        port = int(env["PROBE_PORT"])
        wait_for(lambda: _readyz(port)[0] == 200, 180, "the worker to be ready", worker)
        _, body = _readyz(port)
        assert body["engine"]["profile"] == "tiny"
        assert body["engine"]["bases"] == ["film", "majic"]
        assert body["engine"]["controlnet"] is True
        assert body["engine"]["annotators"] == {"openpose": True, "fairface": True, "rrdb": True}
        assert body["engine"]["load_s"] > 0
        wait_for(
            lambda: [w for w in CeleryPublisher(client.celery, client.db).workers() if w.ready],
            30,
            "the worker's status in the broker",
            worker,
        )
        [listed] = CeleryPublisher(client.celery, client.db).workers()
        assert listed.engine_load_s == body["engine"]["load_s"]
        log = worker.log()
        assert re.search(r"engine ready in \d+\.\d\d s \(profile tiny, bases film\+majic", log)
        ready_at = len(log)

        client.celery.send_task("portrait.generate", args=[queued], queue="gpu")
        wait_for(
            lambda: _row(client.db, queued).status is JobStatus.SUCCEEDED,
            180,
            "the job to succeed",
            worker,
        )
        after = worker.log()[ready_at:]
        # Nothing was built for the first job: no engine, no base, no annotator, no upscaler.
        assert "building" not in after, after
        assert "loaded from" not in after, after
    finally:
        worker.stop()
    assert worker.proc.returncode == 0


def test_a_job_whose_engine_cannot_be_built_goes_back_to_the_queue(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    """The lazy path (a context without warm-up): requeue, stop consuming, touch no job."""
    ctx = worker_context(committed_db, database_url, tmp_path, profile="real")
    set_context(ctx)
    try:
        running, queued = _jobs(ctx)
        for job_id in (running, queued):
            with pytest.raises(Reject) as raised:
                generate_task.generate_portrait(job_id)
            assert raised.value.requeue is True
            assert worker_state.should_stop == 1
            worker_state.should_stop = None
        assert _row(ctx.db, queued).status is JobStatus.QUEUED
        elsewhere = _row(ctx.db, running)
        assert (elsewhere.status, elsewhere.error_code) == (JobStatus.RUNNING, None)
    finally:
        worker_state.should_stop = None
        set_context(None)


def test_build_until_ready_backs_off_and_reports_each_failure(tmp_path: Path) -> None:
    class Ctx:
        def __init__(self) -> None:
            self.resets = 0

        def reset_models(self) -> None:
            self.resets += 1

    import threading

    import tasks.warm as warm

    attempts: list[float] = []
    reasons: list[str] = []
    report = WarmReport(0.5, "tiny", ["film", "majic"], True, {"openpose": True})

    def flaky(ctx: Any) -> WarmReport:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("CUDA error: out of memory")
        return report

    ctx = Ctx()
    original = warm.warm_engine
    warm.warm_engine = flaky  # type: ignore[assignment]
    try:
        got = build_until_ready(
            ctx,  # type: ignore[arg-type]
            on_failure=reasons.append,
            stop=threading.Event(),
            first_retry=0.05,
            max_retry=0.1,
        )
    finally:
        warm.warm_engine = original  # type: ignore[assignment]
    assert got is report
    assert len(attempts) == 3
    assert ctx.resets == 2
    assert reasons == ["engine build failed: [RuntimeError] CUDA error: out of memory"] * 2
    assert attempts[2] - attempts[1] >= 0.09  # the back-off doubled
    assert report.line() == (
        "engine ready in 0.50 s (profile tiny, bases film+majic, controlnet openpose, "
        "annotators: openpose yes, safety: checked)"
    )


def test_solo_time_limits_raise_the_soft_limit_inside_the_task_and_end_a_hung_one() -> None:
    exits: list[int] = []
    limits = SoloTimeLimits(exit=exits.append)

    class Slow:
        name = "portrait.generate"
        soft_time_limit = 0.2
        time_limit = 0.6

    started = time.monotonic()
    limits._start(task=Slow(), task_id="t1")  # type: ignore[arg-type]
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            time.sleep(5)
        assert 0.15 < time.monotonic() - started < 1.0
        time.sleep(0.6)  # the task swallowed the soft limit and hangs on
        assert exits == [70]
    finally:
        limits._stop()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@pytest.mark.slow
def test_sigterm_is_a_warm_shutdown_the_job_in_hand_finishes(
    env: dict[str, str], client: WorkerContext, tmp_path: Path
) -> None:
    """A deploy stops the worker with SIGTERM: the running job completes, then it exits 0."""
    _, queued = _jobs(client)
    worker = WorkerProcess(
        {**env, "ENGINE_PROFILE": "tiny", "ENGINE_STEPS": "6"}, "gpu", tmp_path / "worker.log"
    )
    try:
        port = int(env["PROBE_PORT"])
        wait_for(lambda: _readyz(port)[0] == 200, 180, "the worker to be ready", worker)
        client.celery.send_task("portrait.generate", args=[queued], queue="gpu")
        wait_for(
            lambda: _row(client.db, queued).status is JobStatus.RUNNING,
            60,
            "the job to start",
            worker,
        )
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(120)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-3000:]
    assert _row(client.db, queued).status is JobStatus.SUCCEEDED
    assert "warm shutdown" in worker.log().lower()


@pytest.mark.slow
def test_sigterm_to_a_training_worker_checkpoints_and_hands_the_job_over(
    env: dict[str, str], client: WorkerContext, tmp_path: Path
) -> None:
    """A deploy stops the train worker mid-training: a checkpoint at the step it reached, the
    job given back (no outcome, no lease) and its message back on the queue; exit 0."""
    from db.models import JobKind, StyleTraining
    from tests.facechain.face_data import PORTRAITS, fixture_bytes

    blobs = LocalBlobStore(client.config.storage.blobs_path)
    with client.db.session() as s:
        user = make_user(s, telegram_id=772)
        training = StyleTraining(
            user_id=user.id,
            name="Ink wash",
            trigger_word="zkstyle",
            base_model="film",
            image_blobs=[blobs.put(fixture_bytes(name)) for name in PORTRAITS],
            captions=[],
            # Long enough to be stopped half-way; no periodic checkpoint before the stop.
            config={"rank": 4, "max_train_steps": 2000, "checkpointing_steps": 5000},
        )
        s.add(training)
        s.flush()
        job = Job(user_id=user.id, kind=JobKind.TRAINING, params={"training_id": training.id})
        s.add(job)
        s.flush()
        training.job_id = job.id
        job_id, training_id = job.id, training.id
    client.celery.send_task("style.train", args=[job_id], queue="train")
    worker = WorkerProcess({**env, "ENGINE_PROFILE": "tiny"}, "train", tmp_path / "worker.log")
    broker = redis.Redis.from_url(env["BROKER_URL"])
    try:
        wait_for(
            lambda: _row(client.db, job_id).progress > 0.05,
            240,
            "the training to be under way",
            worker,
        )
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(120)
    finally:
        worker.stop()
    log = worker.log()
    assert worker.proc.returncode == 0, log[-3000:]
    assert "checkpoint kept, job handed back" in log
    job_row = _row(client.db, job_id)
    assert (job_row.status, job_row.error_code, job_row.lease_owner) == (
        JobStatus.RUNNING,
        None,
        None,
    )
    with client.db.session() as s:
        folder = Path(s.get(StyleTraining, training_id).checkpoint_path)  # type: ignore[union-attr]
    steps = [p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")]
    assert len(steps) == 1, steps
    assert 0 < int(steps[0].split("-")[1]) < 2000
    assert broker.llen("train") == 1  # the message is back for the next training worker
