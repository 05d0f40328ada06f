"""Process counters (Prometheus) that the bot and the admin web of one process share.

Counters live on a `Metrics` object with its own registry; `default_metrics()` is the one a
process uses unless a test builds its own. The bot counts handled updates by kind and errors by
code (`source="bot"`); the web counts requests and API errors. The admin web's `/metrics`
renders these counters followed by figures read from the database at scrape time."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter


class Metrics:
    """Process-local counters on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.updates_handled = Counter(
            "facechain_updates_handled",
            "Telegram updates handled by the bot, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_updates = Counter(
            "facechain_telegram_webhook_requests",
            "Requests to the Telegram webhook route by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.relay_dropped = Counter(
            "facechain_relay_updates_dropped",
            "Messages on the broker queue telegram.updates the bot dropped, by reason "
            "(unsigned, bad_signature, not_an_update)",
            ["reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "facechain_errors",
            "Errors by code and where they surfaced (bot, api)",
            ["code", "source"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "facechain_admin_http_requests",
            "Admin web requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.delivery_errors = Counter(
            "facechain_delivery_errors",
            "Telegram sends of the io worker that failed, by reason (undeliverable, "
            "maybe_delivered, rate_limited, retried, progress_dropped, preview_dropped)",
            ["reason"],
            registry=self.registry,
        )

        self.safety_checked = Counter(
            "facechain_safety_checked",
            "Pictures the safety checker looked at in this process, by kind (bot and admin web: "
            "selfie, pose, template_photo, training, sample; gpu workers: portrait, template, "
            "upscale)",
            ["kind"],
            registry=self.registry,
        )
        self.safety_flagged = Counter(
            "facechain_safety_flagged",
            "Pictures the safety checker flagged in this process, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.payments = Counter(
            "facechain_payments",
            "Telegram Stars payments by event (succeeded, duplicate, refunded)",
            ["event"],
            registry=self.registry,
        )
        self.payment_stars = Counter(
            "facechain_payment_stars",
            "Telegram Stars received and refunded",
            ["event"],
            registry=self.registry,
        )
        self.precheckouts = Counter(
            "facechain_precheckout_answers",
            "Pre-checkout answers: ok, or the refusal reason",
            ["outcome"],
            registry=self.registry,
        )

        self.payments_reconciled = Counter(
            "facechain_payments_reconciled",
            "Payments a reconciliation with Telegram credited (their successful_payment update "
            "was lost), by trigger (schedule, chat, api)",
            ["trigger"],
            registry=self.registry,
        )
        self.reconcile_runs = Counter(
            "facechain_payment_reconcile_runs",
            "Scheduled reconciliations by outcome (done, locked: another one was running, "
            "failed: Telegram out of reach)",
            ["outcome"],
            registry=self.registry,
        )

    def record_safety(self, kind: str, checked: int, flagged: int) -> None:
        """Pictures the safety checker looked at and flagged, by kind."""
        self.safety_checked.labels(kind=kind).inc(checked)
        self.safety_flagged.labels(kind=kind).inc(flagged)

    def record_payment(self, event: str, stars: int = 0) -> None:
        """Count one payment event and its Stars (none for a duplicate)."""
        self.payments.labels(event=event).inc()
        if stars:
            self.payment_stars.labels(event=event).inc(stars)

    def record_reconciled(
        self, trigger: str, credited_stars: list[int], refunded_stars: list[int]
    ) -> None:
        """Count what a reconciliation recorded: each payment credited and each refund debited
        (their Stars), and the credited ones by trigger (schedule, chat, api)."""
        for stars in credited_stars:
            self.record_payment("succeeded", stars)
        for stars in refunded_stars:
            self.record_payment("refunded", stars)
        if credited_stars:
            self.payments_reconciled.labels(trigger=trigger).inc(len(credited_stars))

    def record_delivery_error(self, reason: str) -> None:
        """Count one result or status message the io worker could not send, by reason."""
        self.delivery_errors.labels(reason=reason).inc()

    def record_error(self, code: str, source: str) -> None:
        """Count one error with its stable code."""
        self.errors.labels(code=code, source=source).inc()

    def record_update(self, kind: str) -> None:
        """Count one Telegram update the bot handled."""
        self.updates_handled.labels(kind=kind).inc()


def create_metrics() -> Metrics:
    """A fresh set of counters (tests, or a second app in one process)."""
    return Metrics()


@functools.cache
def default_metrics() -> Metrics:
    """The counters shared by the bot and the web server of this process."""
    return create_metrics()
