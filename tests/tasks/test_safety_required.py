"""A gpu worker without the safety checker's weights and SAFETY_REQUIRED=true (the default)
builds no engine: it consumes nothing and its /readyz says why; a worker that paints unchecked
(SAFETY_OUTPUTS=off, or the weights missing with SAFETY_REQUIRED=false) says so in its ready
line and /readyz (issue 21)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from db.models import JobStatus
from db.session import Database
from tasks.context import WorkerContext
from tests.tasks.test_warm_worker import _jobs, _readyz, _row, client, env  # noqa: F401
from tests.utils.workers import WorkerProcess, wait_for


@pytest.mark.slow
def test_a_worker_without_the_required_checker_takes_no_job_and_says_why(
    env: dict[str, str],  # noqa: F811
    client: WorkerContext,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, queued = _jobs(client)
    client.celery.send_task("portrait.generate", args=[queued], queue="gpu")
    broker = redis.Redis.from_url(env["BROKER_URL"])
    before = broker.llen("gpu")
    empty = tmp_path / "no-models"
    empty.mkdir()
    worker = WorkerProcess(
        {
            **env,
            "ENGINE_PROFILE": "real",
            "ENGINE_MODELS_DIR": str(empty),
            "SAFETY_REQUIRED": "true",
        },
        "gpu",
        tmp_path / "worker.log",
    )
    try:
        port = int(env["PROBE_PORT"])
        wait_for(
            lambda: "engine build failed" in _readyz(port)[1].get("reason", ""),
            90,
            "the worker to report its failed build",
            worker,
        )
        time.sleep(2)
        status, body = _readyz(port)
        assert status == 503
        assert "safety checker is required (SAFETY_REQUIRED=true)" in body["reason"]
        assert "safety_checker" in body["reason"]
        assert broker.llen("gpu") == before
        assert _row(client.db, queued).status is JobStatus.QUEUED
    finally:
        worker.stop()


def test_the_ready_report_says_whether_outputs_are_checked(
    committed_db: Database, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.warm import warm_engine
    from tests.tasks.test_upscale import worker_context

    ctx = worker_context(committed_db, database_url, tmp_path)
    report = warm_engine(ctx)
    assert report.safety == "checked"
    assert report.line().endswith("safety: checked)")
    ctx.engine.set_safety_checker(None)
    ctx.config.safety.outputs = "off"
    report = warm_engine(ctx)
    assert report.details()["engine"]["safety"] == "off (SAFETY_OUTPUTS=off)"
    ctx.config.safety.outputs = "block"
    assert warm_engine(ctx).safety.startswith("NOT checked")
