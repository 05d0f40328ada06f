"""Outgoing webhooks: register, list, show, delete, and an endpoint's deliveries."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from domain import webhooks
from web.api.common import page_of
from web.http import Call
from web.openapi import API_PREFIX, Route
from web.schemas import DeliveryOut, DeliveryQuery, Page, PageQuery, WebhookIn, WebhookOut


async def create_webhook(call: Call) -> WebhookOut:
    body = call.body_as(WebhookIn)
    # Resolves the host: in a thread, and before the transaction opens.
    await asyncio.to_thread(
        webhooks.check_destination,
        body.url,
        allow_private=call.config.webhooks.allow_private,
    )
    endpoint = await call.db.run(
        webhooks.create_endpoint,
        url=body.url,
        secret=body.secret,
        events=list(body.events),
        enabled=body.enabled,
        actor=call.actor,
    )
    return WebhookOut.model_validate(endpoint)


async def list_webhooks(call: Call) -> BaseModel:
    q = call.query_as(PageQuery)
    rows, total = await call.db.run(webhooks.endpoints_page, limit=q.limit, offset=q.offset)
    return page_of(WebhookOut, rows, total, q)


async def get_webhook(call: Call) -> WebhookOut:
    endpoint = await call.db.run(webhooks.get_endpoint, call.path_int("webhook_id"))
    return WebhookOut.model_validate(endpoint)


async def delete_webhook(call: Call) -> None:
    await call.db.run(webhooks.delete_endpoint, call.path_int("webhook_id"), call.actor)


async def list_deliveries(call: Call) -> BaseModel:
    q = call.query_as(DeliveryQuery)
    rows, total = await call.db.run(
        webhooks.deliveries_page,
        call.path_int("webhook_id"),
        status=q.status,
        limit=q.limit,
        offset=q.offset,
    )
    return page_of(DeliveryOut, rows, total, q)


def routes() -> list[Route]:
    p = API_PREFIX
    return [
        Route(
            "POST",
            f"{p}/webhooks",
            create_webhook,
            "Register an outgoing webhook",
            "webhooks",
            body=WebhookIn,
            response=WebhookOut,
            status=201,
        ),
        Route(
            "GET",
            f"{p}/webhooks",
            list_webhooks,
            "List webhooks (secrets never shown)",
            "webhooks",
            query=PageQuery,
            response=Page[WebhookOut],
        ),
        Route(
            "GET",
            f"{p}/webhooks/{{webhook_id}}",
            get_webhook,
            "One webhook",
            "webhooks",
            response=WebhookOut,
        ),
        Route(
            "DELETE",
            f"{p}/webhooks/{{webhook_id}}",
            delete_webhook,
            "Delete a webhook",
            "webhooks",
            status=204,
        ),
        Route(
            "GET",
            f"{p}/webhooks/{{webhook_id}}/deliveries",
            list_deliveries,
            "A webhook's deliveries, newest first",
            "webhooks",
            query=DeliveryQuery,
            response=Page[DeliveryOut],
        ),
    ]
