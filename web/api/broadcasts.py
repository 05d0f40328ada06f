"""Broadcasts: send a message to every user, list them, follow and stop one."""

from __future__ import annotations

from pydantic import BaseModel

from domain import broadcasts
from web.api.common import page_of
from web.http import Call
from web.openapi import API_PREFIX, Route
from web.schemas import BroadcastIn, BroadcastOut, Page, PageQuery


async def create_broadcast(call: Call) -> BroadcastOut:
    text = call.body_as(BroadcastIn).text
    broadcast = await call.transact(broadcasts.create_broadcast, text, call.actor)
    return BroadcastOut.model_validate(broadcasts.progress(broadcast))


async def list_broadcasts(call: Call) -> BaseModel:
    q = call.query_as(PageQuery)
    rows, total = await call.db.run(broadcasts.broadcasts_page, limit=q.limit, offset=q.offset)
    return page_of(BroadcastOut, rows, total, q)


async def get_broadcast(call: Call) -> BroadcastOut:
    view = await call.db.run(broadcasts.get_progress, call.path_int("broadcast_id"))
    return BroadcastOut.model_validate(view)


async def cancel_broadcast(call: Call) -> BroadcastOut:
    broadcast = await call.db.run(
        broadcasts.cancel_broadcast, call.path_int("broadcast_id"), call.actor
    )
    return BroadcastOut.model_validate(broadcasts.progress(broadcast))


def routes() -> list[Route]:
    p = API_PREFIX
    return [
        Route(
            "POST",
            f"{p}/broadcasts",
            create_broadcast,
            "Send a message to every user (throttled)",
            "broadcasts",
            body=BroadcastIn,
            response=BroadcastOut,
            status=202,
        ),
        Route(
            "GET",
            f"{p}/broadcasts",
            list_broadcasts,
            "List broadcasts",
            "broadcasts",
            query=PageQuery,
            response=Page[BroadcastOut],
        ),
        Route(
            "GET",
            f"{p}/broadcasts/{{broadcast_id}}",
            get_broadcast,
            "A broadcast's progress",
            "broadcasts",
            response=BroadcastOut,
        ),
        Route(
            "POST",
            f"{p}/broadcasts/{{broadcast_id}}/cancel",
            cancel_broadcast,
            "Stop a broadcast",
            "broadcasts",
            response=BroadcastOut,
            errors=(409,),
        ),
    ]
