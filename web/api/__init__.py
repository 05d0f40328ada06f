"""The admin API under /api/v1/, one module per resource, each with its route table.

Handlers are thin: the route table parses and validates the request, the handler calls one
use case of `domain` (through `call.transact`, which publishes what it outboxed after the
commit), and the response model presents the result. Every mutating use case writes an
AuditEntry."""

from __future__ import annotations

from core.settings import AppConfig
from web.api import billing, broadcasts, jobs, meta, styles, templates, users, webhooks
from web.openapi import Route


def api_routes(config: AppConfig) -> list[Route]:
    """The admin API's route table."""
    return [
        *meta.routes(),
        *users.routes(),
        *styles.routes(config),
        *templates.routes(config),
        *jobs.routes(),
        *broadcasts.routes(),
        *webhooks.routes(),
        *billing.routes(),
    ]
