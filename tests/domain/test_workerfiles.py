"""Which worker-local checkpoint folders are pruned: those of trainings that are gone or ended
for good; a running or failed training (a retry resumes) keeps its checkpoints."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db.models import Job, JobKind, JobStatus, StyleTraining
from domain.workerfiles import (
    checkpoint_ids,
    checkpoints_dir,
    finished_trainings,
    remove_checkpoints,
)
from tests.utils.factories import make_style, make_user


def _training(session: Session, user_id: int, status: JobStatus, *, style: bool = False) -> int:
    training = StyleTraining(
        user_id=user_id,
        name=f"t-{status.value}-{style}",
        trigger_word="zk",
        base_model="film",
        image_blobs=[],
        captions=[],
        config={},
    )
    session.add(training)
    session.flush()
    job = Job(user_id=user_id, kind=JobKind.TRAINING, params={"training_id": training.id})
    session.add(job)
    session.flush()
    if status is not JobStatus.QUEUED:
        job.transition(JobStatus.RUNNING)
        if status is JobStatus.FAILED:
            job.fail("internal", "boom")
        elif status is not JobStatus.RUNNING:
            job.transition(status)
    training.job_id = job.id
    if style:
        training.style_id = make_style(session, f"trained-{training.id}").id
    session.flush()
    return training.id


def test_only_ended_or_deleted_trainings_lose_their_checkpoints(
    session: Session, tmp_path: Path
) -> None:
    user = make_user(session, 7501)
    running = _training(session, user.id, JobStatus.RUNNING)
    failed = _training(session, user.id, JobStatus.FAILED)
    cancelled = _training(session, user.id, JobStatus.CANCELLED)
    stored = _training(session, user.id, JobStatus.SUCCEEDED, style=True)
    deleted = 999_999  # its row went with /forget
    for training_id in (running, failed, cancelled, stored, deleted):
        (checkpoints_dir(tmp_path) / str(training_id) / "checkpoint-0000002").mkdir(parents=True)
    ended = finished_trainings(session, checkpoint_ids(tmp_path))
    assert ended == {cancelled, stored, deleted}
    assert remove_checkpoints(tmp_path, ended) == 3
    assert sorted(checkpoint_ids(tmp_path)) == sorted([running, failed])
