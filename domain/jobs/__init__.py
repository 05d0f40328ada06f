"""Jobs as users and admins see them: create (with ban, active-job and quota/credit checks),
release to the workers, cancel, retry, and the queries behind the chat's job buttons and
/history.

Every creation first locks the user's row, so the active-job and quota checks and the credit
spend (`domain.billing`) hold even when two updates (or two bot replicas) race. A created job
is committed as queued and published only when `release_job` (after the chat showed its status
message) or `retry_job` puts it in the outbox; the sweep publishes queued jobs that were never
released.

The modules: `create` (one function per kind, and the checks before it), `control` (release,
cancel, retry, the admin's list) and `queries` (the chat's job buttons, /history, the Mini App's
"My portraits"). This package re-exports their public names: callers use `jobs.X`."""

from domain.jobs.control import (
    CancelOutcome,
    cancel_for_user,
    cancel_job,
    get_job,
    jobs_page,
    release_job,
    retry_job,
)
from domain.jobs.create import (
    DEFAULT_JOB_SECONDS,
    HD_SIZE,
    NO_PAYMENTS,
    CreatedJob,
    PoseUpload,
    check_can_start,
    create_portrait_job,
    create_template_job,
    create_training_job,
    create_upscale_job,
    owned_job,
)

# tests/tasks/test_deliver.py checks the ETA of an empty queue.
from domain.jobs.create import _eta_minutes as _eta_minutes
from domain.jobs.queries import (
    OVERVIEW_SETS,
    SHOWABLE,
    ActiveJob,
    FinishedSet,
    HistoryRow,
    JobFacts,
    JobResults,
    Overview,
    history,
    job_facts,
    job_results,
    overview,
)

__all__ = [
    "DEFAULT_JOB_SECONDS",
    "HD_SIZE",
    "NO_PAYMENTS",
    "OVERVIEW_SETS",
    "SHOWABLE",
    "ActiveJob",
    "CancelOutcome",
    "CreatedJob",
    "FinishedSet",
    "HistoryRow",
    "JobFacts",
    "JobResults",
    "Overview",
    "PoseUpload",
    "cancel_for_user",
    "cancel_job",
    "check_can_start",
    "create_portrait_job",
    "create_template_job",
    "create_training_job",
    "create_upscale_job",
    "get_job",
    "history",
    "job_facts",
    "job_results",
    "jobs_page",
    "overview",
    "owned_job",
    "release_job",
    "retry_job",
]
