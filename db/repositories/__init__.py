"""Per-entity repositories: all queries live here; none of them commit."""

from db.repositories.audit import AuditRepository
from db.repositories.base import RepositoryBase
from db.repositories.blobs import BlobReferenceRepository
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.jobs import JobRepository
from db.repositories.photos import PhotoRepository
from db.repositories.stats import StatsRepository
from db.repositories.styles import StyleRepository, StyleTrainingRepository
from db.repositories.templates import TemplateRepository
from db.repositories.users import UserRepository, UserSessionRepository
from db.repositories.webhooks import WebhookDeliveryRepository, WebhookEndpointRepository

__all__ = [
    "AuditRepository",
    "BlobReferenceRepository",
    "BroadcastRepository",
    "JobRepository",
    "PhotoRepository",
    "RepositoryBase",
    "StatsRepository",
    "StyleRepository",
    "StyleTrainingRepository",
    "TemplateRepository",
    "UserRepository",
    "UserSessionRepository",
    "WebhookDeliveryRepository",
    "WebhookEndpointRepository",
]
