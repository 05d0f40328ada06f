"""Outgoing webhooks: endpoints, events recorded as deliveries, signing, and each attempt's record.

`emit_event` only inserts rows in the caller's transaction (it never blocks a job) and notes
their ids in the outbox; after the commit the front end publishes `webhooks.deliver` for each.
A delivery whose task was lost stays `pending` with no attempts and is re-sent by the sweep
(`stale_delivery_ids`). Each POST is signed with HMAC-SHA256 over `f"{timestamp}.{body}"`
(docs/WEBHOOKS.md); the io worker POSTs, `record_attempt` keeps the outcome, and the delivery is
marked `failed` after `MAX_ATTEMPTS`."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from core.errors import ValidationFailed
from db.base import utcnow
from db.models import Job, WebhookDelivery, WebhookEndpoint
from db.repositories.webhooks import WebhookDeliveryRepository, WebhookEndpointRepository
from domain import outbox
from domain.audit import audit

logger = logging.getLogger(__name__)

EVENTS: tuple[str, ...] = (
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "style.trained",
    "broadcast.finished",
    "payment.succeeded",
    "payment.refunded",
    "safety.flagged",
)
# Attempts in all (the first try plus retries); then the delivery is marked failed.
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 3600.0
# Receivers should reject signatures older than this (replay protection).
SIGNATURE_TOLERANCE_SECONDS = 300
USER_AGENT = "FaceChainBot-Webhooks/1"


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


def check_events(events: Sequence[str]) -> list[str]:
    """Validate an endpoint's event list; ValidationFailed names the unknown ones."""
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise ValidationFailed(
            "events must be a non-empty subset of " + ", ".join(EVENTS), unknown=unknown
        )
    return sorted(set(events), key=EVENTS.index)


def check_url(url: str) -> str:
    """An endpoint's URL must be one a delivery can reach: http(s) with a host (and a port, if
    given, that parses); ValidationFailed otherwise (e.g. `http://[` with an unclosed IPv6
    bracket, which the pattern of the API document alone lets through)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationFailed(f"url is not a valid URL: {exc}", url=url) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("url must be http(s) with a host", url=url)
    if port == 0:
        raise ValidationFailed("url has port 0", url=url)
    return url


# ---- destinations ----

# fc00::/7: IPv6 unique-local addresses (Python files them under "private").
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
ALLOW_PRIVATE_HINT = "set WEBHOOKS_ALLOW_PRIVATE=true to allow it"


class DestinationRefused(ValidationFailed):
    """A webhook URL whose host is, or resolves to, an address deliveries may not reach."""


def address_kind(address: str) -> str | None:
    """Why deliveries may not go to this IP address ("loopback", "private", ...), or None for
    a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.version == 6 and ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_multicast:
        return "multicast"
    if not ip.is_global:
        return "not publicly routable"
    return None


def resolve_destination(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses a delivery to `host:port` may connect to: every address the name resolves
    to, checked. DestinationRefused if any is not public (unless `allow_private`), OSError
    (socket.gaierror) if the name does not resolve.

    A delivery connects only to an address this returned, so a name that resolves to a public
    address when checked and to an internal one a moment later (DNS rebinding) gains nothing."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            kind = address_kind(address)
            if kind is not None:
                shown = host if host == address else f"{host} ({address})"
                raise DestinationRefused(
                    f"url's host {shown} is a {kind} address; {ALLOW_PRIVATE_HINT}",
                    host=host,
                    address=address,
                )
    return addresses


def check_destination(url: str, *, allow_private: bool) -> None:
    """Refuse (DestinationRefused, 422) a URL whose host is or resolves to a loopback,
    link-local, private, unique-local or other non-public address, unless `allow_private`.

    Resolves the host name (blocking: run it in a thread). A name that does not resolve now is
    let through: every delivery resolves and checks again before it connects."""
    parts = urlsplit(check_url(url))
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        resolve_destination(host, port, allow_private=allow_private)
    except DestinationRefused:
        raise
    except (OSError, ValueError):
        # ValueError: a name the IDNA codec refuses (an empty or over-long label).
        logger.info("webhook host %s does not resolve now; checked again at delivery", host)


# ---- endpoints ----


def create_endpoint(
    session: Session, *, url: str, secret: str, events: Sequence[str], enabled: bool, actor: str
) -> WebhookEndpoint:
    """Register an endpoint for these events (the secret is stored, never shown again)."""
    checked = check_events(events)
    check_url(url)
    endpoint = WebhookEndpointRepository(session).add(
        WebhookEndpoint(url=url, secret=secret, events=checked, enabled=enabled)
    )
    audit(session, actor, "webhook.create", f"webhook:{endpoint.id}", url=url, events=checked)
    return endpoint


def delete_endpoint(session: Session, endpoint_id: int, actor: str) -> None:
    """Delete an endpoint; its pending deliveries fail at their next attempt."""
    repo = WebhookEndpointRepository(session)
    endpoint = repo.get(endpoint_id)
    repo.delete(endpoint)
    audit(session, actor, "webhook.delete", f"webhook:{endpoint_id}", url=endpoint.url)


def get_endpoint(session: Session, endpoint_id: int) -> WebhookEndpoint:
    """One endpoint (NotFound otherwise)."""
    return WebhookEndpointRepository(session).get(endpoint_id)


def endpoints_page(
    session: Session, *, limit: int, offset: int
) -> tuple[Sequence[WebhookEndpoint], int]:
    """Endpoints in creation order and how many there are."""
    repo = WebhookEndpointRepository(session)
    return repo.page(repo.query(), limit=limit, offset=offset)


def deliveries_page(
    session: Session, endpoint_id: int, *, status: str | None, limit: int, offset: int
) -> tuple[Sequence[WebhookDelivery], int]:
    """An endpoint's deliveries, newest first (NotFound for an unknown endpoint)."""
    WebhookEndpointRepository(session).get(endpoint_id)
    repo = WebhookDeliveryRepository(session)
    stmt = repo.query(endpoint_id=endpoint_id, status=status)
    return repo.page(stmt, limit=limit, offset=offset)


# ---- events ----


def emit_event(session: Session, event: str, payload: dict[str, Any]) -> list[int]:
    """Create a pending delivery for every endpoint subscribed to `event` (outboxed)."""
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
    outbox.pending(session).deliveries.extend(ids)
    if ids:
        logger.info("webhook event %s: %d deliveries", event, len(ids))
    return ids


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


def emit_job_event(session: Session, job: Job, event: str) -> list[int]:
    """Record the deliveries of a job.* event."""
    return emit_event(session, event, job_event_payload(job))


# ---- deliveries ----


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
class DeliveryRequest:
    """The signed POST of one attempt."""

    url: str
    body: bytes
    headers: dict[str, str]


def prepare_delivery(session: Session, delivery_id: int) -> DeliveryRequest | DeliveryOutcome:
    """The signed request for a pending delivery, or its outcome when there is nothing to send."""
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
    return DeliveryRequest(endpoint.url, body, headers)


def record_attempt(
    session: Session,
    delivery_id: int,
    status_code: int | None,
    error: str | None,
    max_attempts: int = MAX_ATTEMPTS,
) -> DeliveryOutcome:
    """Keep one attempt's result: delivered, still pending, or failed after the last attempt."""
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


def stale_delivery_ids(session: Session, older_than: timedelta) -> list[int]:
    """Pending deliveries never attempted (lost between commit and publish)."""
    repo = WebhookDeliveryRepository(session)
    return [d.id for d in repo.stale_pending(utcnow() - older_than)]
