"""The OpenAPI document, service stats and the audit log."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel

from domain import audit, stats
from web.api.common import page_of
from web.http import Call
from web.keys import OPENAPI
from web.openapi import API_PREFIX, Route
from web.schemas import AuditOut, AuditQuery, Page, StatsOut


async def get_openapi(call: Call) -> web.Response:
    return web.json_response(call.app[OPENAPI])


async def get_stats(call: Call) -> StatsOut:
    """Users, jobs, queue depth, durations and workers."""
    return StatsOut.model_validate(await call.db.run(stats.stats))


async def list_audit(call: Call) -> BaseModel:
    q = call.query_as(AuditQuery)
    rows, total = await call.db.run(
        audit.audit_page, action=q.action, actor=q.actor, limit=q.limit, offset=q.offset
    )
    return page_of(AuditOut, rows, total, q)


def routes() -> list[Route]:
    p = API_PREFIX
    return [
        Route("GET", f"{p}/openapi.json", get_openapi, "This OpenAPI document", "meta"),
        Route(
            "GET",
            f"{p}/stats",
            get_stats,
            "Users, jobs, queue depth, durations, workers",
            "stats",
            response=StatsOut,
        ),
        Route(
            "GET",
            f"{p}/audit",
            list_audit,
            "Audit log, newest first",
            "stats",
            query=AuditQuery,
            response=Page[AuditOut],
        ),
    ]
