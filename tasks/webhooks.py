"""io task `webhooks.deliver`: POST one signed delivery, record the attempt, retry with backoff.

What is sent and how an attempt is recorded is `domain.webhooks`; this module is the HTTP
client and the Celery task. No transaction is held while the POST is in flight."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

import httpcore
import httpx
from celery import Celery, Task, shared_task
from httpcore import SOCKET_OPTION

from db.session import Database
from domain.webhooks import (
    MAX_ATTEMPTS,
    DeliveryOutcome,
    DestinationRefused,
    backoff_seconds,
    prepare_delivery,
    record_attempt,
    resolve_destination,
    stale_delivery_ids,
)
from tasks.dispatch import enqueue_deliveries

if TYPE_CHECKING:
    from tasks.context import WorkerContext

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0

# Our own words for a failed attempt: `last_error` is readable through the admin API, so it never
# holds what the receiver (or whatever answered at that address) sent back.
_TRANSPORT_ERRORS: tuple[tuple[type[httpx.HTTPError], str], ...] = (
    (httpx.ConnectTimeout, "connection timed out"),
    (httpx.ConnectError, "could not connect"),
    (httpx.TimeoutException, "no answer in time"),
    (httpx.RemoteProtocolError, "the answer was not valid HTTP"),
    (httpx.NetworkError, "the connection failed"),
    (httpx.HTTPError, "the request failed"),
)


class CheckedBackend(httpcore.SyncBackend):
    """Connects only to addresses `resolve_destination` checked: the host is resolved once,
    every address it resolves to is checked, and the socket goes to one of those addresses
    (TLS still verifies the certificate against the host name)."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve_destination(host, port, allow_private=self.allow_private)
        except DestinationRefused:
            raise
        except (OSError, ValueError):
            raise httpcore.ConnectError(f"{host} does not resolve") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure


def checked_client(*, allow_private: bool) -> httpx.Client:
    """An HTTP client whose connections go only to checked addresses (no redirects, no proxy
    from the environment: a proxy would make the proxy's address the one checked)."""
    transport = httpx.HTTPTransport(trust_env=False)
    # httpx builds its httpcore pool itself and offers no argument for the network backend.
    transport._pool._network_backend = CheckedBackend(allow_private=allow_private)
    return httpx.Client(
        transport=transport,
        timeout=REQUEST_TIMEOUT_SECONDS,
        follow_redirects=False,
        trust_env=False,
    )


def attempt_delivery(
    db: Database,
    delivery_id: int,
    *,
    client: httpx.Client | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    allow_private: bool = False,
) -> DeliveryOutcome:
    """POST a pending delivery once and record the result.

    The destination is resolved and checked as the connection is made (`CheckedBackend`);
    `last_error` gets the status and our own reason, never the receiver's answer."""
    prepared = db.call(prepare_delivery, delivery_id)
    if isinstance(prepared, DeliveryOutcome):
        return prepared
    status_code: int | None = None
    error: str | None = None
    own_client = client is None
    http = client or checked_client(allow_private=allow_private)
    try:
        response = http.post(prepared.url, content=prepared.body, headers=prepared.headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code} {httpx.codes.get_reason_phrase(status_code)}".rstrip()
    except DestinationRefused as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        reason = next(text for kind, text in _TRANSPORT_ERRORS if isinstance(exc, kind))
        error = f"{type(exc).__name__}: {reason}"
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


def _context() -> WorkerContext:
    from tasks.context import get_context

    return get_context()


@shared_task(name="webhooks.deliver", bind=True, queue="io", acks_late=True, max_retries=None)
def deliver_webhook(self: Task, delivery_id: int) -> str:
    """POST one webhook delivery; retry with backoff until delivered or out of attempts."""
    ctx = _context()
    outcome = attempt_delivery(
        ctx.db, delivery_id, allow_private=ctx.config.webhooks.allow_private
    )
    if outcome.status == "pending":
        # The attempt count lives in the row, so a redelivered message keeps the schedule.
        raise self.retry(countdown=backoff_seconds(outcome.attempts))
    return outcome.status
