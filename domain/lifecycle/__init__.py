"""A job's life on the workers: claimed under a lease, running with progress, heartbeat and
cancellation, finished, delivered; and the sweep that re-queues jobs whose lease expired.

One mechanism decides who may work on a job: its lease (`Job.lease_owner`, `lease_expires_at`,
compared with the database's clock). A published job is leased to the broker (no owner) for
`REQUEUE_AFTER`; a claim leases it to one worker attempt for `lease` (60 s by default), which
that worker's heartbeat renews. A message for a job under a live worker lease is a duplicate and
is dropped; a job whose lease expired (its worker died, or its message was lost) is re-queued by
the sweep and taken over by whichever worker claims it next (`attempts` counts the claims).
Results are written only while the lease is still the writer's. Every change happens under the
job's row lock; the io work (sending results, progress edits) is the caller's, after the commit.
See docs/ARCHITECTURE.md, "Job lease".

The modules: `leases` (claim, lease, progress, cancellation, finish), `sweep` and `delivery`
(the outcome's delivery lease and the pose preview). This package re-exports their public
names: callers use `lifecycle.X`."""

from domain.lifecycle.delivery import (
    Delivery,
    PosePreview,
    delivery,
    mark_delivered,
    mark_undeliverable,
    pose_preview,
    record_delivery_step,
    renew_delivery,
    start_delivery,
)
from domain.lifecycle.leases import (
    DEFAULT_LEASE,
    DELIVERY_LEASE,
    MAX_ATTEMPTS,
    MAX_DELIVERY_ATTEMPTS,
    REDELIVER_AFTER,
    REQUEUE_AFTER,
    TIME_GRACE,
    Claim,
    JobOutcome,
    JobSnapshot,
    cancel_requested,
    claim,
    dispatchable_kind,
    fail_unclaimed,
    finish,
    hand_back,
    lease_owner_id,
    mark_dispatched,
    record_pose_map,
    record_progress,
    renew_lease,
    worker_name,
)
from domain.lifecycle.sweep import (
    SweepPlan,
    sweep,
)

__all__ = [
    "DEFAULT_LEASE",
    "DELIVERY_LEASE",
    "MAX_ATTEMPTS",
    "MAX_DELIVERY_ATTEMPTS",
    "REDELIVER_AFTER",
    "REQUEUE_AFTER",
    "TIME_GRACE",
    "Claim",
    "Delivery",
    "JobOutcome",
    "JobSnapshot",
    "PosePreview",
    "SweepPlan",
    "cancel_requested",
    "claim",
    "delivery",
    "dispatchable_kind",
    "fail_unclaimed",
    "finish",
    "hand_back",
    "lease_owner_id",
    "mark_delivered",
    "mark_dispatched",
    "mark_undeliverable",
    "pose_preview",
    "record_delivery_step",
    "record_pose_map",
    "record_progress",
    "renew_delivery",
    "renew_lease",
    "start_delivery",
    "sweep",
    "worker_name",
]
