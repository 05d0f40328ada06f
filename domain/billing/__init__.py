"""Paid generations in Telegram Stars, and the one accounting of what a job costs.

Charging. Every job creation decides its charge under the user's row lock (`plan_charge`, from
`domain.jobs.check_can_start`) and applies it with the job (`apply_charge`): an admin, a style
training and an HD upscale priced 0 cost nothing; a portrait or template job takes a slot of
today's free daily quota while one is left, and beyond it (payments on) `PAYMENTS_PRICE_*`
credits with a SPEND ledger row; otherwise the user is refused (`QuotaExceeded`, or
`CreditsNeeded` with a Buy button when payments are on). An upscale priced above 0 always
costs credits. `Job.charge`/`charge_credits` keep what was charged.

Give-back. A job's charge is given back exactly once when it ends through no fault of the user:
failed with an error code that does not blame the user's input (`core.errors.caused_by_user`),
or cancelled before generation started (still queued, never claimed by a worker). A job
cancelled once it ran keeps its charge, free slot or credits: the GPU worked for it (otherwise
cancelling just before the end would paint for free, without limit). The paths that end a
job call `settle_ended` where it ends (the worker's finish, the claim, the sweep's failures in
`domain.lifecycle`; the cancel buttons and commands in `domain.jobs`). Every final transition,
whatever path a future change adds, is also flushed through a Session, and the `before_flush`
listener `charges._settle_on_flush` (registered on import; `domain/__init__.py` imports this
package) calls `settle_ended` for each job whose status changed to a final one: a job settled
already is left alone. `settle` stamps `Job.charge_returned_at` (the free slot no longer
counts toward the quota) and, for credits, appends a GIVEBACK row; the stamp and the ledger's
unique (kind, job) make it idempotent. Credits a refund already counted as spent (its
shortfall: the job was charged before the refund) go to that refund instead of back to the
user, who has their Stars back.

Ledger. Credits move only through `ledger._move`: one atomic `UPDATE users SET credits =
credits + d` (a debit only `WHERE credits >= amount`, so a balance never goes negative) plus one
append-only `LedgerEntry` with the balance after it, in the same transaction. Nothing updates or
deletes ledger rows except /forget (`forget_billing`), which removes them and zeroes the balance
together. `ledger_mismatches` proves balance and ledger agree.

Payments. `/buy` shows the enabled packs; every invoice is a row (`issue_invoice`) whose
payload names only that row; the pre-checkout answer (`check_checkout`) and `record_payment`
credit from the row only (payer, Stars, currency, paid once), exactly once per Telegram charge
id; a payment that matches no invoice we issued is kept with the reason, credits nothing and is
audited (`payment.unmatched`); old `pk:` payloads match during the upgrade's grace period only
(`LEGACY_INVOICES`); a refund
(`refund_payment`, from an admin or a `refunded_payment` update) debits the payment's credits as
far as the user has not spent them and records the shortfall the admin is shown.

The modules, each importing only those before it: `ledger` (`_move`, `ledger_mismatches`,
grants, /forget), `charges` (charging, give-back, the listener, the balance), `packs`,
`invoices` (invoices, payloads, pre-checkout), `payments` (`record_payment`), `refunds`,
`reconcile` (Telegram's Star transactions) and `reports` (the admin's views). This package
re-exports their public names: callers use `billing.X`."""

from domain.billing.charges import (
    FREE,
    QUOTA_KINDS,
    Balance,
    Charge,
    apply_charge,
    balance,
    daily_quota,
    gives_back,
    plan_charge,
    quota_used,
    settle,
    settle_ended,
)
from domain.billing.invoices import (
    INVOICE_PREFIX,
    LEGACY_INVOICES,
    PAYLOAD_PREFIX,
    UNMATCHED_REASONS,
    Payload,
    check_checkout,
    find_invoice,
    invoice_payload,
    issue_invoice,
    parse_payload,
)
from domain.billing.ledger import (
    CURRENCY,
    MAX_GRANT,
    day_start,
    forget_billing,
    grant_credits,
    ledger_mismatches,
)
from domain.billing.packs import (
    MAX_PACK_CREDITS,
    MAX_STARS,
    MIN_STARS,
    create_pack,
    delete_pack,
    get_pack,
    list_packs,
    update_pack,
)
from domain.billing.payments import (
    PaymentResult,
    payment_payload,
    record_payment,
)
from domain.billing.reconcile import (
    STAR_CURSOR,
    Reconciled,
    StarCursor,
    StarPayment,
    reconcile_payments,
    save_star_cursor,
    star_cursor,
)
from domain.billing.refunds import (
    UNRECORDED_REFUND,
    RefundResult,
    RefundTarget,
    record_unrecorded_refund,
    refund_payment,
    refund_target,
)
from domain.billing.reports import (
    RevenueDay,
    ledger_page,
    payments_of,
    payments_page,
    revenue_by_day,
)

__all__ = [
    "CURRENCY",
    "FREE",
    "INVOICE_PREFIX",
    "LEGACY_INVOICES",
    "MAX_GRANT",
    "MAX_PACK_CREDITS",
    "MAX_STARS",
    "MIN_STARS",
    "PAYLOAD_PREFIX",
    "QUOTA_KINDS",
    "STAR_CURSOR",
    "UNMATCHED_REASONS",
    "UNRECORDED_REFUND",
    "Balance",
    "Charge",
    "Payload",
    "PaymentResult",
    "Reconciled",
    "RefundResult",
    "RefundTarget",
    "RevenueDay",
    "StarCursor",
    "StarPayment",
    "apply_charge",
    "balance",
    "check_checkout",
    "create_pack",
    "daily_quota",
    "day_start",
    "delete_pack",
    "find_invoice",
    "forget_billing",
    "get_pack",
    "gives_back",
    "grant_credits",
    "invoice_payload",
    "issue_invoice",
    "ledger_mismatches",
    "ledger_page",
    "list_packs",
    "parse_payload",
    "payment_payload",
    "payments_of",
    "payments_page",
    "plan_charge",
    "quota_used",
    "reconcile_payments",
    "record_payment",
    "record_unrecorded_refund",
    "refund_payment",
    "refund_target",
    "revenue_by_day",
    "save_star_cursor",
    "settle",
    "settle_ended",
    "star_cursor",
    "update_pack",
]
