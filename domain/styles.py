"""Styles administration (admin API, bot admin commands) and trained styles' registration.

Each mutation takes the caller's `Session` (it never commits) and an `actor` ("api" for the
bearer token, "tg:<telegram id>" for a bot admin), and writes one AuditEntry. An uploaded LoRA
is checked by `domain.loras.validate_lora_bytes` before anything is stored."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from core.errors import Forbidden, InvalidStyleUpload, NotFound, StyleUnavailable
from db.models import BaseModelName, Style, StyleOrigin
from db.repositories.styles import StyleRepository
from domain.audit import audit
from domain.blobs import release
from domain.catalog import category_name, slugify
from domain.loras import validate_lora_bytes
from domain.ordering import put_first
from facechain.errors import FaceChainError
from facechain.imageio import downscale, load_image

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 512
TRAINED_STYLE_WEIGHT = 0.8
LANGUAGES = ("en", "zh", "ru")
MAX_NAME_CHARS = 96
MAX_PROMPT_CHARS = 2000
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def _clean_names(names: dict[str, str]) -> dict[str, str]:
    cleaned = {}
    for lang, value in names.items():
        if lang not in LANGUAGES:
            raise InvalidStyleUpload(f"unknown name language {lang!r}; use {', '.join(LANGUAGES)}")
        text = " ".join(str(value).split())
        if len(text) > MAX_NAME_CHARS:
            raise InvalidStyleUpload(f"the {lang} name is longer than {MAX_NAME_CHARS} characters")
        if text:
            cleaned[lang] = text
    if not cleaned:
        raise InvalidStyleUpload("a style needs a name")
    return cleaned


def _clean_prompt(prompt: str) -> str:
    text = " ".join(prompt.split())
    if not text:
        raise InvalidStyleUpload("a style needs a prompt fragment")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidStyleUpload(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    return text


def _clean_weight(weight: float) -> float:
    if not 0.0 < weight <= 1.0:
        raise InvalidStyleUpload(f"the LoRA weight must be in (0, 1], got {weight}")
    return float(weight)


def _clean_category(category: str) -> str:
    if not _CATEGORY.match(category):
        raise InvalidStyleUpload(
            "a category is 1-32 lower-case letters, digits, '-' or '_', starting with a letter "
            "or digit"
        )
    return category


def _base_model(value: BaseModelName | str) -> BaseModelName:
    try:
        return BaseModelName(value)
    except ValueError:
        raise InvalidStyleUpload(
            f"unknown base model {value!r}; use {', '.join(m.value for m in BaseModelName)}"
        ) from None


def thumbnail_jpeg(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """Decode untrusted image bytes and re-encode them as a JPEG of at most `side` px."""
    try:
        image = load_image(data)
    except FaceChainError as exc:
        raise InvalidStyleUpload(f"the thumbnail cannot be used: {exc}") from exc
    return _jpeg(downscale(image, side))


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Re-encoding drops metadata (EXIF location) along with any payload in the upload.
    image.save(buf, format="JPEG", quality=90, optimize=True)
    return buf.getvalue()


def _unique_slug(repo: StyleRepository, base: str) -> str:
    slug = base[:90].strip("-") or "style"
    candidate, n = slug, 2
    while repo.slug_taken(candidate):
        candidate, n = f"{slug}-{n}", n + 1
    return candidate


def _audit(session: Session, actor: str, action: str, style: Style, **details: Any) -> None:
    audit(session, actor, action, f"style:{style.slug}", **details)


# --- administration -----------------------------------------------------------------------------


def add_uploaded_style(
    session: Session,
    blobs: BlobStore,
    *,
    lora_bytes: bytes,
    thumbnail_bytes: bytes | None,
    names: dict[str, str],
    prompt: str,
    base_model: BaseModelName | str,
    weight: float = 0.5,
    category: str = "uploaded",
    actor: str,
    max_lora_bytes: int | None = None,
) -> Style:
    """Validate an uploaded LoRA (+ thumbnail) and add it as an enabled style.

    Raises:
        InvalidStyleUpload: with the reason (bad LoRA, thumbnail, name, prompt, weight...).
    """
    clean_names = _clean_names(names)
    clean_prompt = _clean_prompt(prompt)
    base = _base_model(base_model)
    clean_weight = _clean_weight(weight)
    clean_category = _clean_category(category)
    info = validate_lora_bytes(lora_bytes, max_bytes=max_lora_bytes)
    thumbnail = blobs.put(thumbnail_jpeg(thumbnail_bytes)) if thumbnail_bytes else None
    lora_key = blobs.put(lora_bytes)
    repo = StyleRepository(session)
    title = clean_names.get("en") or next(iter(clean_names.values()))
    style = repo.add(
        Style(
            slug=_unique_slug(repo, f"uploaded-{slugify(title)}"),
            names=clean_names,
            category=clean_category,
            base_model=base,
            prompt=clean_prompt,
            prompt_template="style",
            lora_model_id=None,
            lora_revision=None,
            lora_file=None,
            lora_blob=lora_key,
            lora_weight=clean_weight,
            thumbnail_blob=thumbnail,
            enabled=True,
            position=repo.next_position(),
            origin=StyleOrigin.UPLOADED,
            owner_id=None,
            extra={
                "lora_format": info.format,
                "lora_rank": info.rank,
                "lora_modules": info.n_modules,
            },
        )
    )
    _audit(
        session,
        actor,
        "style.upload",
        style,
        format=info.format,
        rank=info.rank,
        size=info.size_bytes,
        base_model=base.value,
    )
    logger.info("style %s uploaded by %s (%s, rank %d)", style.slug, actor, info.format, info.rank)
    return style


def add_trained_style(
    session: Session,
    blobs: BlobStore,
    *,
    lora_bytes: bytes,
    kohya_bytes: bytes | None,
    thumbnail_bytes: bytes | None,
    name: str,
    prompt: str,
    base_model: BaseModelName | str,
    owner_id: int | None,
    training_id: int,
    trigger_word: str,
    weight: float = TRAINED_STYLE_WEIGHT,
) -> Style:
    """Register a freshly trained LoRA as the owner's style, bound to its training base."""
    repo = StyleRepository(session)
    base = _base_model(base_model)
    text = " ".join(name.split())[:MAX_NAME_CHARS] or f"Style {training_id}"
    extra: dict[str, Any] = {"training_id": training_id, "trigger_word": trigger_word}
    if kohya_bytes:
        extra["kohya_blob"] = blobs.put(kohya_bytes)
    style = repo.add(
        Style(
            slug=_unique_slug(repo, f"trained-{training_id}-{slugify(text)}"),
            names={"en": text, "zh": text, "ru": text},
            category="trained",
            base_model=base,
            prompt=" ".join(prompt.split()) or trigger_word,
            prompt_template="style",
            lora_model_id=None,
            lora_revision=None,
            lora_file=None,
            lora_blob=blobs.put(lora_bytes),
            lora_weight=weight,
            thumbnail_blob=blobs.put(thumbnail_jpeg(thumbnail_bytes)) if thumbnail_bytes else None,
            enabled=True,
            position=repo.next_position(),
            origin=StyleOrigin.TRAINED,
            owner_id=owner_id,
            extra=extra,
        )
    )
    logger.info("trained style %s registered on base %s", style.slug, base.value)
    return style


def set_style_enabled(session: Session, style_id: int, enabled: bool, *, actor: str) -> Style:
    """Show or hide a style in the bot."""
    style = StyleRepository(session).get(style_id)
    if style.enabled != enabled:
        style.enabled = enabled
        _audit(session, actor, "style.enable" if enabled else "style.disable", style)
    return style


def set_style_category(session: Session, style_id: int, category: str, *, actor: str) -> Style:
    """Move a style to another category."""
    style = StyleRepository(session).get(style_id)
    clean = _clean_category(category)
    if style.category != clean:
        _audit(session, actor, "style.category", style, old=style.category, new=clean)
        style.category = clean
    return style


def update_style(
    session: Session,
    style_id: int,
    *,
    actor: str,
    names: dict[str, str] | None = None,
    prompt: str | None = None,
    weight: float | None = None,
    category: str | None = None,
) -> Style:
    """Edit a style's names (merged per language), prompt, default weight or category."""
    style = StyleRepository(session).get(style_id)
    changes: dict[str, Any] = {}
    if names is not None:
        merged = {**style.names, **_clean_names(names)}
        if merged != style.names:
            style.names = merged
            changes["names"] = merged
    if prompt is not None and (clean := _clean_prompt(prompt)) != style.prompt:
        style.prompt = changes["prompt"] = clean
    if weight is not None and (w := _clean_weight(weight)) != style.lora_weight:
        style.lora_weight = changes["weight"] = w
    if category is not None and (c := _clean_category(category)) != style.category:
        style.category = changes["category"] = c
    if changes:
        _audit(session, actor, "style.update", style, **changes)
    return style


def reorder_styles(session: Session, style_ids: Sequence[int], *, actor: str) -> list[Style]:
    """Put these styles first, in this order; the others follow in their current order."""
    current = list(session.scalars(StyleRepository(session).ordered()).all())
    ordered = put_first(current, style_ids, "style")
    audit(session, actor, "style.reorder", "styles", first=list(style_ids))
    return ordered


def move_style(session: Session, style_id: int, position: int, *, actor: str) -> list[Style]:
    """Move one style to a 1-based position in the display order."""
    repo = StyleRepository(session)
    ids = [s.id for s in session.scalars(repo.ordered()).all()]
    if style_id not in ids:
        raise NotFound(f"style {style_id} not found", id=style_id)
    ids.remove(style_id)
    ids.insert(max(0, min(len(ids), position - 1)), style_id)
    return reorder_styles(session, ids, actor=actor)


def list_categories(session: Session, language: str = "en") -> list[tuple[str, str]]:
    """(category, display name) of enabled styles, in display order."""
    return [(c, category_name(c, language)) for c in StyleRepository(session).categories()]


def delete_style(session: Session, blobs: BlobStore, style_id: int, *, actor: str) -> None:
    """Delete an uploaded or trained style and the blobs nothing else uses.

    Raises:
        Forbidden: catalog styles come back on the next import; disable them instead.
    """
    repo = StyleRepository(session)
    style = repo.get(style_id)
    if style.origin is StyleOrigin.CATALOG:
        raise Forbidden(f"style {style.slug!r} is from the catalog; disable it instead")
    keys = [k for k in (style.lora_blob, style.thumbnail_blob, style.extra.get("kohya_blob")) if k]
    _audit(session, actor, "style.delete", style, origin=style.origin.value)
    repo.delete(style)
    release(session, blobs, keys)
    logger.info("style %s deleted by %s", style.slug, actor)


# --- the chat's style picker ---------------------------------------------------------------


@dataclass(frozen=True)
class StyleCard:
    """What the picker shows of one style."""

    id: int
    name: str
    category: str
    thumbnail_blob: str | None


def style_cards(
    session: Session, user_id: int, language: str, category: str | None = None
) -> list[StyleCard]:
    """The styles this user may use (in one category, or all), in display order."""
    rows = StyleRepository(session).visible_to(user_id, category)
    return [StyleCard(s.id, s.name_for(language), s.category, s.thumbnail_blob) for s in rows]


def visible_categories(session: Session, user_id: int) -> list[str]:
    """The categories of the styles this user may use, in display order."""
    seen: dict[str, None] = {}
    for style in StyleRepository(session).visible_to(user_id):
        seen.setdefault(style.category, None)
    return list(seen)


def usable_style(session: Session, user_id: int, style_id: int) -> Style:
    """The style if it is enabled and visible to the user; StyleUnavailable otherwise."""
    style = session.get(Style, style_id)
    if style is None or not style.enabled or style.owner_id not in (None, user_id):
        raise StyleUnavailable(f"style {style_id} is not available")
    return style


def patch_style(
    session: Session,
    style_id: int,
    *,
    actor: str,
    enabled: bool | None = None,
    names: dict[str, str] | None = None,
    prompt: str | None = None,
    weight: float | None = None,
    category: str | None = None,
    position: int | None = None,
) -> Style:
    """Change any of a style's visibility, texts, weight, category and 1-based position."""
    style = StyleRepository(session).get(style_id)
    if enabled is not None:
        set_style_enabled(session, style_id, enabled, actor=actor)
    if any(v is not None for v in (names, prompt, weight, category)):
        update_style(
            session,
            style_id,
            actor=actor,
            names=names,
            prompt=prompt,
            weight=weight,
            category=category,
        )
    if position is not None:
        move_style(session, style_id, position, actor=actor)
    return style


def styles_page(
    session: Session,
    *,
    enabled: bool | None,
    category: str | None,
    origin: StyleOrigin | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Style], int]:
    """Styles in display order, optionally filtered, and how many match."""
    repo = StyleRepository(session)
    stmt = repo.ordered(category=category, origin=origin)
    if enabled is not None:
        stmt = stmt.where(Style.enabled.is_(enabled))
    return repo.page(stmt, limit=limit, offset=offset)


def get_style(session: Session, style_id: int) -> Style:
    """One style (NotFound otherwise)."""
    return StyleRepository(session).get(style_id)


# --- the Mini App's gallery ---------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryStyle:
    """What the Mini App's gallery shows of one style."""

    id: int
    name: str
    category: str
    base_model: BaseModelName
    own: bool
    thumbnail_blob: str | None


def gallery(session: Session, user_id: int, language: str) -> list[GalleryStyle]:
    """Every style this user may use (the chat's picker's styles), in display order."""
    return [
        GalleryStyle(
            s.id,
            s.name_for(language),
            s.category,
            s.base_model,
            s.owner_id == user_id,
            s.thumbnail_blob,
        )
        for s in StyleRepository(session).visible_to(user_id)
    ]
