"""Jobs: list, one job, cancel, retry."""

from __future__ import annotations

from pydantic import BaseModel

from domain import jobs
from web.api.common import page_of
from web.http import Call
from web.openapi import API_PREFIX, Route
from web.schemas import JobOut, JobQuery, Page


async def list_jobs(call: Call) -> BaseModel:
    q = call.query_as(JobQuery)
    rows, total = await call.db.run(
        jobs.jobs_page,
        status=q.status,
        kind=q.kind,
        telegram_id=q.user,
        limit=q.limit,
        offset=q.offset,
    )
    return page_of(JobOut, rows, total, q)


async def get_job(call: Call) -> JobOut:
    return JobOut.model_validate(await call.db.run(jobs.get_job, call.path_int("job_id")))


async def cancel_job(call: Call) -> JobOut:
    job = await call.transact(jobs.cancel_job, call.path_int("job_id"), call.actor)
    return JobOut.model_validate(job)


async def retry_job(call: Call) -> JobOut:
    job_id = call.path_int("job_id")
    # Committed as queued first, then published; if publishing fails, the sweep re-sends it.
    await call.transact(jobs.retry_job, job_id, call.actor)
    return JobOut.model_validate(await call.db.run(jobs.get_job, job_id))


def routes() -> list[Route]:
    p = API_PREFIX
    return [
        Route(
            "GET",
            f"{p}/jobs",
            list_jobs,
            "List jobs, newest first",
            "jobs",
            query=JobQuery,
            response=Page[JobOut],
        ),
        Route("GET", f"{p}/jobs/{{job_id}}", get_job, "One job", "jobs", response=JobOut),
        Route(
            "POST",
            f"{p}/jobs/{{job_id}}/cancel",
            cancel_job,
            "Cancel a queued or running job",
            "jobs",
            response=JobOut,
            errors=(409,),
        ),
        Route(
            "POST",
            f"{p}/jobs/{{job_id}}/retry",
            retry_job,
            "Re-queue a failed or cancelled job",
            "jobs",
            response=JobOut,
            errors=(409,),
        ),
    ]
