"""All models, imported so the metadata is complete for Alembic and create_all."""

from db.models.audit import AuditEntry
from db.models.billing import ChargeKind, Invoice, LedgerEntry, LedgerKind, Pack, Payment
from db.models.broadcast import Broadcast
from db.models.job import ACTIVE_STATUSES, FINAL_STATUSES, Job, JobKind, JobStatus
from db.models.photo import Photo, PhotoKind
from db.models.state import ServiceState
from db.models.style import BaseModelName, Style, StyleOrigin
from db.models.template import Template
from db.models.training import StyleTraining
from db.models.update import InboundUpdate
from db.models.user import User, UserSession
from db.models.webhook import WebhookDelivery, WebhookEndpoint

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_STATUSES",
    "AuditEntry",
    "BaseModelName",
    "Broadcast",
    "ChargeKind",
    "InboundUpdate",
    "Invoice",
    "Job",
    "JobKind",
    "JobStatus",
    "LedgerEntry",
    "LedgerKind",
    "Pack",
    "Payment",
    "Photo",
    "PhotoKind",
    "ServiceState",
    "Style",
    "StyleOrigin",
    "StyleTraining",
    "Template",
    "User",
    "UserSession",
    "WebhookDelivery",
    "WebhookEndpoint",
]
