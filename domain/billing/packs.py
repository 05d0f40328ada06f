"""The credit packs admins sell."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import NotFound, ValidationFailed
from db.models import Pack
from domain.audit import audit

logger = logging.getLogger(__name__)

MAX_PACK_CREDITS = 10_000
# Telegram's bounds for a Stars price.
MIN_STARS, MAX_STARS = 1, 10_000

# ---- packs (admins) ----


def list_packs(session: Session, *, enabled_only: bool = False) -> Sequence[Pack]:
    """Packs in shop order (position, then id)."""
    stmt = select(Pack).order_by(Pack.position, Pack.id)
    if enabled_only:
        stmt = stmt.where(Pack.enabled.is_(True))
    return session.scalars(stmt).all()


def get_pack(session: Session, pack_id: int) -> Pack:
    pack = session.get(Pack, pack_id)
    if pack is None:
        raise NotFound(f"pack {pack_id} not found", pack_id=pack_id)
    return pack


def _check_pack(title: str, credits: int, stars: int) -> None:
    if not title.strip() or len(title) > 32:
        raise ValidationFailed("a pack title is 1 to 32 characters")
    if not 1 <= credits <= MAX_PACK_CREDITS:
        raise ValidationFailed(f"credits must be between 1 and {MAX_PACK_CREDITS}")
    if not MIN_STARS <= stars <= MAX_STARS:
        raise ValidationFailed(f"the price must be between {MIN_STARS} and {MAX_STARS} Stars")


def create_pack(
    session: Session,
    *,
    title: str,
    credits: int,
    stars: int,
    actor: str,
    enabled: bool = True,
    position: int | None = None,
) -> Pack:
    """A new pack (last in the shop unless a position is given)."""
    _check_pack(title, credits, stars)
    if position is None:
        position = int(session.scalar(select(func.coalesce(func.max(Pack.position), 0))) or 0) + 1
    pack = Pack(
        title=title.strip(), credits=credits, stars=stars, enabled=enabled, position=position
    )
    session.add(pack)
    session.flush()
    audit(session, actor, "pack.create", f"pack:{pack.id}", credits=credits, stars=stars)
    return pack


def update_pack(session: Session, pack_id: int, changes: dict[str, Any], actor: str) -> Pack:
    """Change a pack's title, credits, price, enabled flag or position.

    Invoices already sent keep their terms; a changed price or credit count makes the
    pre-checkout refuse them, so nobody pays an old price for a new pack."""
    pack = session.get(Pack, pack_id, with_for_update=True, populate_existing=True)
    if pack is None:
        raise NotFound(f"pack {pack_id} not found", pack_id=pack_id)
    allowed = {"title", "credits", "stars", "enabled", "position"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationFailed("unknown pack fields: " + ", ".join(sorted(unknown)))
    title = str(changes.get("title", pack.title))
    credits = int(changes.get("credits", pack.credits))
    stars = int(changes.get("stars", pack.stars))
    _check_pack(title, credits, stars)
    previous = {k: getattr(pack, k) for k in changes}
    for key, value in changes.items():
        setattr(pack, key, value.strip() if key == "title" else value)
    audit(session, actor, "pack.update", f"pack:{pack_id}", changes=changes, previous=previous)
    return pack


def delete_pack(session: Session, pack_id: int, actor: str) -> None:
    """Delete a pack (its payments keep their own title, Stars and credits)."""
    pack = get_pack(session, pack_id)
    session.delete(pack)
    session.flush()
    audit(session, actor, "pack.delete", f"pack:{pack_id}", title=pack.title)
