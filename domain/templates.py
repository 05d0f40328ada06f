"""Templates administration: list, show/hide, move, rename, upload and delete.

Each mutation takes the caller's `Session` (it never commits) and an `actor` ("api" for the
bearer token, "tg:<telegram id>" for a bot admin), and writes one AuditEntry."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.errors import (
    Conflict,
    Forbidden,
    InUse,
    NotFound,
    TemplateUnavailable,
    ValidationFailed,
)
from db.models import ACTIVE_STATUSES, Job, StyleOrigin, Template
from db.repositories.templates import TemplateRepository
from domain.audit import audit
from domain.blobs import release
from domain.catalog import TEMPLATE_THUMBNAIL_SIDE, detect_template_faces, slugify
from domain.ordering import put_first
from facechain.errors import NoFace
from facechain.imageio import clean_image, downscale, load_image

logger = logging.getLogger(__name__)


def templates_page(
    session: Session, *, enabled: bool | None, category: str | None, limit: int, offset: int
) -> tuple[Sequence[Template], int]:
    """Templates in display order, optionally filtered, and how many match."""
    repo = TemplateRepository(session)
    stmt = repo.ordered()
    if enabled is not None:
        stmt = stmt.where(Template.enabled.is_(enabled))
    if category is not None:
        stmt = stmt.where(Template.category == category)
    return repo.page(stmt, limit=limit, offset=offset)


def get_template(session: Session, template_id: int) -> Template:
    """One template (NotFound otherwise)."""
    return TemplateRepository(session).get(template_id)


def _template(session: Session, template_id: int) -> Template:
    template = session.get(Template, template_id, with_for_update=True)
    if template is None:
        raise NotFound(f"template {template_id} not found", id=template_id)
    return template


def _template_order(session: Session) -> list[Template]:
    return list(session.scalars(TemplateRepository(session).ordered()).all())


def reorder_templates(session: Session, template_ids: Sequence[int], actor: str) -> list[Template]:
    """Put these templates first, in this order (positions from 1); the rest keep their order."""
    ordered = put_first(_template_order(session), template_ids, "template")
    audit(session, actor, "template.reorder", "templates", first=list(template_ids))
    return ordered


def update_template(
    session: Session,
    template_id: int,
    actor: str,
    *,
    enabled: bool | None = None,
    position: int | None = None,
    names: dict[str, str] | None = None,
    category: str | None = None,
) -> Template:
    """Show/hide, move (1-based position), rename (merged per language) or recategorise."""
    template = _template(session, template_id)
    changes: dict[str, Any] = {}
    if enabled is not None and enabled != template.enabled:
        template.enabled = changes["enabled"] = enabled
    if names:
        merged = {**template.names, **names}
        if merged != template.names:
            template.names = changes["names"] = merged
    if category is not None and category != template.category:
        template.category = changes["category"] = category
    if position is not None:
        ids = [t.id for t in _template_order(session) if t.id != template_id]
        ids.insert(max(0, min(len(ids), position - 1)), template_id)
        reorder_templates(session, ids, actor)
        changes["position"] = position
    if changes:
        audit(session, actor, "template.update", f"template:{template_id}", **changes)
    return template


def delete_template(session: Session, blobs: BlobStore, template_id: int, actor: str) -> None:
    """Delete an uploaded template and the blobs nothing else uses.

    Raises:
        Forbidden: catalog templates come back on the next import; disable them instead.
        InUse: queued or running jobs still use it.
    """
    template = _template(session, template_id)
    if template.origin is StyleOrigin.CATALOG:
        raise Forbidden(f"template {template.slug!r} is from the catalog; disable it instead")
    active = session.scalar(
        select(func.count(Job.id)).where(
            Job.template_id == template_id, Job.status.in_(ACTIVE_STATUSES)
        )
    )
    if active:
        raise InUse(f"template {template_id} has {active} active jobs; cancel them first")
    keys = [k for k in (template.image_blob, template.thumbnail_blob) if k]
    TemplateRepository(session).delete(template)
    audit(session, actor, "template.delete", f"template:{template_id}", slug=template.slug)
    release(session, blobs, keys)


@dataclass(frozen=True)
class TemplateImage:
    """An uploaded template photo, decoded and analysed (CPU work, done before the transaction)."""

    data: bytes
    thumbnail: bytes
    width: int
    height: int
    faces: list[dict[str, Any]]


def analyse_template_image(data: bytes, *, max_bytes: int, max_pixels: int) -> TemplateImage:
    """Decode an uploaded template and find its faces (NotAnImage, ImageTooLarge, NoFace)."""
    image = load_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    faces = detect_template_faces(image)
    if not faces:
        raise NoFace("no face found in the template photo")
    buf = io.BytesIO()
    downscale(image, TEMPLATE_THUMBNAIL_SIDE).save(buf, format="JPEG", quality=90)
    # Stored without its metadata (EXIF, XMP), orientation applied.
    clean = clean_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return TemplateImage(clean, buf.getvalue(), image.width, image.height, faces)


def add_uploaded_template(
    session: Session,
    blobs: BlobStore,
    image: TemplateImage,
    *,
    names: dict[str, str],
    category: str,
    actor: str,
    slug: str | None = None,
) -> Template:
    """Register an analysed template photo as a new enabled template at the end of the list."""
    repo = TemplateRepository(session)
    if not names.get("en"):
        raise ValidationFailed("a template needs an English name")
    if slug is None:
        base = f"uploaded-{slugify(names['en'])}"[:90].strip("-") or "template"
        slug, n = base, 2
        while repo.by_slug(slug) is not None:
            slug, n = f"{base}-{n}", n + 1
    elif repo.by_slug(slug) is not None:
        raise Conflict(f"slug {slug!r} is taken", slug=slug)
    template = repo.add(
        Template(
            slug=slug,
            names=dict(names),
            category=category,
            image_blob=blobs.put(image.data),
            thumbnail_blob=blobs.put(image.thumbnail),
            width=image.width,
            height=image.height,
            faces=image.faces,
            enabled=True,
            position=repo.next_position(),
            origin=StyleOrigin.UPLOADED,
            owner_id=None,
        )
    )
    audit(
        session,
        actor,
        "template.create",
        f"template:{template.id}",
        slug=slug,
        faces=len(image.faces),
    )
    return template


# ---- the chat's template picker ----


@dataclass(frozen=True)
class TemplateCard:
    """What the picker shows of one template."""

    id: int
    name: str
    faces: int
    thumbnail_blob: str | None


def template_cards(session: Session, user_id: int, language: str) -> list[TemplateCard]:
    """The templates this user may use, in display order."""
    return [
        TemplateCard(
            t.id, t.name_for(language), len(t.faces or []), t.thumbnail_blob or t.image_blob
        )
        for t in TemplateRepository(session).visible_to(user_id)
    ]


def usable_template(session: Session, user_id: int, template_id: int) -> Template:
    """The template if it is enabled and visible to the user; TemplateUnavailable otherwise."""
    template = session.get(Template, template_id)
    if template is None or not template.enabled or template.owner_id not in (None, user_id):
        raise TemplateUnavailable(f"template {template_id} is not available")
    return template


def template_faces(session: Session, user_id: int, template_id: int) -> tuple[str, list[Any]]:
    """A usable template's image blob and its face boxes (TemplateUnavailable otherwise)."""
    template = usable_template(session, user_id, template_id)
    return template.image_blob, [f["box"] for f in template.faces or []]
