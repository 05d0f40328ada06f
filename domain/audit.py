"""The audit log: one entry per mutation an admin makes (API token or bot admin)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from db.models import AuditEntry
from db.repositories.audit import AuditRepository

logger = logging.getLogger(__name__)

# The actor of the admin API's bearer token; bot admins are `tg:<telegram id>`.
API_ACTOR = "api"


def bot_actor(telegram_id: int) -> str:
    """The actor string of a bot admin."""
    return f"tg:{telegram_id}"


def audit(
    session: Session, actor: str, action: str, target: str | None = None, **details: Any
) -> None:
    """Append an audit entry for a mutation done by `actor`."""
    AuditRepository(session).record(actor, action, target, **details)
    logger.info("audit: %s %s %s", actor, action, target or "")


def audit_page(
    session: Session, *, action: str | None, actor: str | None, limit: int, offset: int
) -> tuple[Sequence[AuditEntry], int]:
    """Entries newest first, optionally filtered, and how many match."""
    repo = AuditRepository(session)
    return repo.page(repo.query(action=action, actor=actor), limit=limit, offset=offset)
