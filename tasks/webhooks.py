"""io task `webhooks.deliver`: POST one signed delivery, record the attempt, retry with backoff.

What is sent and how an attempt is recorded is `domain.webhooks`; this module is the HTTP
client and the Celery task. No transaction is held while the POST is in flight."""

from __future__ import annotations

import logging
from datetime import timedelta

import httpx
from celery import Celery, Task, shared_task

from db.session import Database
from domain.webhooks import (
    MAX_ATTEMPTS,
    DeliveryOutcome,
    backoff_seconds,
    prepare_delivery,
    record_attempt,
    stale_delivery_ids,
)
from tasks.dispatch import enqueue_deliveries

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0


def attempt_delivery(
    db: Database,
    delivery_id: int,
    *,
    client: httpx.Client | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> DeliveryOutcome:
    """POST a pending delivery once and record the result."""
    prepared = db.call(prepare_delivery, delivery_id)
    if isinstance(prepared, DeliveryOutcome):
        return prepared
    status_code: int | None = None
    error: str | None = None
    own_client = client is None
    http = client or httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, follow_redirects=False)
    try:
        response = http.post(prepared.url, content=prepared.body, headers=prepared.headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if own_client:
            http.close()
    outcome = db.call(record_attempt, delivery_id, status_code, error, max_attempts)
    if outcome.status == "delivered":
        logger.info("webhook delivery %s delivered (HTTP %s)", delivery_id, status_code)
    else:
        logger.warning(
            "webhook delivery %s attempt %d failed: %s", delivery_id, outcome.attempts, error
        )
    return outcome


def resend_stale_deliveries(celery: Celery, db: Database, older_than: timedelta) -> int:
    """Re-publish pending deliveries never attempted (lost between commit and publish)."""
    ids = db.call(stale_delivery_ids, older_than)
    enqueue_deliveries(celery, ids)
    return len(ids)


def _database() -> Database:
    from tasks.context import get_context

    return get_context().db


@shared_task(name="webhooks.deliver", bind=True, queue="io", acks_late=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: int) -> str:
    """POST one webhook delivery; retry with backoff until delivered or out of attempts."""
    outcome = attempt_delivery(_database(), delivery_id)
    if outcome.status == "pending":
        # The attempt count lives in the row, so a redelivered message keeps the schedule.
        raise self.retry(countdown=backoff_seconds(outcome.attempts))
    return outcome.status
