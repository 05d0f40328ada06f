"""Outgoing webhooks: record a delivery per subscribed endpoint, then POST it from the io queue.

`emit_event` only inserts rows in the caller's transaction, so it never blocks a job; after the
commit the caller hands the returned ids to `enqueue_deliveries`. A delivery whose task was lost
(a crash between commit and publish) stays `pending` with no attempts and is re-sent by
`resend_stale_deliveries` from the periodic sweep. Each POST is signed with HMAC-SHA256 over
`f"{timestamp}.{body}"` (docs/WEBHOOKS.md); failures retry with exponential backoff, and the
delivery is marked `failed` after the last attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from celery import Celery, Task, shared_task
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import Job, WebhookDelivery, WebhookEndpoint
from db.repositories.webhooks import WebhookDeliveryRepository, WebhookEndpointRepository
from db.session import Database
from service.errors import ValidationFailed

logger = logging.getLogger(__name__)

EVENTS: tuple[str, ...] = (
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "style.trained",
    "broadcast.finished",
)
# Attempts in all (the first try plus retries); then the delivery is marked failed.
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 3600.0
REQUEST_TIMEOUT_SECONDS = 10.0
# Receivers should reject signatures older than this (replay protection).
SIGNATURE_TOLERANCE_SECONDS = 300
USER_AGENT = "FaceChainBot-Webhooks/1"
# Where emitted delivery ids wait in `Session.info` until the caller commits and enqueues them.
_EMITTED_KEY = "facechain_webhook_deliveries"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-FaceChain-Signature` value: `sha256=` + hex HMAC-SHA256 of `timestamp.body`."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a received delivery is authentic and fresh (what a receiver should check)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def backoff_seconds(attempts: int) -> float:
    """Delay before the next try after `attempts` failed ones: 10 s, 20 s, 40 s … capped at 1 h."""
    return float(min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS))


def check_events(events: list[str]) -> list[str]:
    """Validate an endpoint's event list; ValidationFailed names the unknown ones."""
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise ValidationFailed(
            "events must be a non-empty subset of " + ", ".join(EVENTS), unknown=unknown
        )
    return sorted(set(events), key=EVENTS.index)


def emit_event(session: Session, event: str, payload: dict[str, Any]) -> list[int]:
    """Create a pending delivery for every endpoint subscribed to `event`; return their ids."""
    if event not in EVENTS:
        raise ValidationFailed(f"unknown webhook event {event!r}", event=event)
    deliveries = WebhookDeliveryRepository(session)
    ids: list[int] = []
    for endpoint in WebhookEndpointRepository(session).subscribed(event):
        row = deliveries.add(
            WebhookDelivery(
                endpoint_id=endpoint.id, event=event, payload=payload, status="pending"
            )
        )
        ids.append(row.id)
    session.info.setdefault(_EMITTED_KEY, []).extend(ids)
    if ids:
        logger.info("webhook event %s: %d deliveries", event, len(ids))
    return ids


def take_emitted(session: Session) -> list[int]:
    """Delivery ids emitted on this session so far (then forgotten), to enqueue after commit."""
    ids: list[int] = session.info.pop(_EMITTED_KEY, [])
    return ids


def enqueue_deliveries(celery: Celery, delivery_ids: list[int]) -> None:
    """Publish `webhooks.deliver` for each id; call only after the rows are committed."""
    for delivery_id in delivery_ids:
        celery.send_task("webhooks.deliver", args=[delivery_id], queue="io")


def job_event_payload(job: Job) -> dict[str, Any]:
    """The `data` of a job.* event (no user-identifying bytes, only ids and outcome)."""
    return {
        "job_id": job.id,
        "kind": job.kind.value,
        "status": job.status.value,
        "user_id": job.user_id,
        "style_id": job.style_id,
        "template_id": job.template_id,
        "error_code": job.error_code,
        "images": len(job.result_blobs or []),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def delivery_body(delivery: WebhookDelivery) -> bytes:
    """The exact bytes POSTed (and signed) for a delivery."""
    envelope = {
        "id": delivery.id,
        "event": delivery.event,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class DeliveryOutcome:
    """What one attempt left behind: the delivery's status and attempt count."""

    status: str
    attempts: int
    status_code: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class _Request:
    url: str
    body: bytes
    headers: dict[str, str]


def _prepare(session: Session, delivery_id: int) -> _Request | DeliveryOutcome:
    delivery = WebhookDeliveryRepository(session).get(delivery_id)
    if delivery.status != "pending":
        return DeliveryOutcome(delivery.status, delivery.attempts)
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.enabled:
        delivery.status = "failed"
        delivery.last_error = "endpoint disabled or deleted"
        return DeliveryOutcome(delivery.status, delivery.attempts, error=delivery.last_error)
    body = delivery_body(delivery)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-FaceChain-Event": delivery.event,
        "X-FaceChain-Delivery": str(delivery.id),
        "X-FaceChain-Timestamp": str(timestamp),
        "X-FaceChain-Signature": sign(endpoint.secret, timestamp, body),
    }
    return _Request(endpoint.url, body, headers)


def _record(
    session: Session,
    delivery_id: int,
    status_code: int | None,
    error: str | None,
    max_attempts: int,
) -> DeliveryOutcome:
    delivery = WebhookDeliveryRepository(session).get_for_update(delivery_id)
    if delivery.status != "pending":
        # Another copy of the task finished it meanwhile.
        return DeliveryOutcome(delivery.status, delivery.attempts)
    delivery.attempts += 1
    delivery.last_status_code = status_code
    delivery.last_error = error
    if error is None:
        delivery.status = "delivered"
        delivery.delivered_at = utcnow()
    elif delivery.attempts >= max_attempts:
        delivery.status = "failed"
    return DeliveryOutcome(delivery.status, delivery.attempts, status_code, error)


def attempt_delivery(
    db: Database,
    delivery_id: int,
    *,
    client: httpx.Client | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> DeliveryOutcome:
    """POST a pending delivery once and record the result (no transaction held meanwhile)."""
    prepared = db.call(_prepare, delivery_id)
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
    outcome = db.call(_record, delivery_id, status_code, error, max_attempts)
    if outcome.status == "delivered":
        logger.info("webhook delivery %s delivered (HTTP %s)", delivery_id, status_code)
    else:
        logger.warning(
            "webhook delivery %s attempt %d failed: %s", delivery_id, outcome.attempts, error
        )
    return outcome


def resend_stale_deliveries(celery: Celery, db: Database, older_than: timedelta) -> int:
    """Re-publish pending deliveries never attempted (lost between commit and publish)."""
    ids = db.call(
        lambda s: [d.id for d in WebhookDeliveryRepository(s).stale_pending(utcnow() - older_than)]
    )
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
