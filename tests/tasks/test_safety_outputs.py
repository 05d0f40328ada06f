"""HD results are checked like portraits: a flagged HD result fails the job (`safety_flagged`,
the operator's side, so nothing of it is kept and an audit row records its score)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from db.models import AuditEntry, JobStatus
from db.session import Database
from tasks import upscale as upscale_task
from tasks.context import set_context
from tests.tasks.test_upscale import hd_job, row, worker_context
from tests.utils.fake_safety import FlagChosen


def test_a_flagged_hd_result_fails_and_is_not_kept(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    ctx = worker_context(committed_db, database_url, tmp_path)
    set_context(ctx)
    try:
        _, job_id = hd_job(ctx)
        blobs_before = {p for p in ctx.blobs.root.rglob("*") if p.is_file()}
        ctx.engine.set_safety_checker(FlagChosen(every=True))
        assert upscale_task.upscale_portrait(job_id) == "failed"
        job = row(ctx, job_id)
        assert (job.status, job.error_code) == (JobStatus.FAILED, "safety_flagged")
        assert not job.result_blobs
        assert {p for p in ctx.blobs.root.rglob("*") if p.is_file()} == blobs_before
        with ctx.db.session() as s:
            [entry] = s.scalars(
                select(AuditEntry).where(AuditEntry.action == "safety.flagged.upscale")
            ).all()
            assert entry.details["job_id"] == job_id
    finally:
        set_context(None)


def test_a_safe_hd_result_is_checked_and_kept(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    ctx = worker_context(committed_db, database_url, tmp_path)
    set_context(ctx)
    try:
        _, job_id = hd_job(ctx)
        checker = FlagChosen()
        ctx.engine.set_safety_checker(checker)
        assert upscale_task.upscale_portrait(job_id) == "succeeded"
        assert checker.calls == [1]
        assert len(row(ctx, job_id).result_blobs) == 1
    finally:
        set_context(None)


def test_checked_hd_results_are_counted_on_the_worker_metrics(
    committed_db: Database, database_url: str, tmp_path: Path
) -> None:
    from core.metrics import default_metrics

    def counted(name: str) -> float:
        value = default_metrics().registry.get_sample_value(name, {"kind": "upscale"})
        return value or 0.0

    ctx = worker_context(committed_db, database_url, tmp_path)
    set_context(ctx)
    try:
        _, job_id = hd_job(ctx)
        ctx.engine.set_safety_checker(FlagChosen(every=True))
        before = (
            counted("facechain_safety_checked_total"),
            counted("facechain_safety_flagged_total"),
        )
        upscale_task.upscale_portrait(job_id)
        after = (
            counted("facechain_safety_checked_total"),
            counted("facechain_safety_flagged_total"),
        )
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    finally:
        set_context(None)
