"""Style management (admin API and bot admin commands) and style LoRA files.

Catalog styles name a ModelScope LoRA (id, revision, file) that is downloaded on first use into
`<models_dir>/styles/<model_id>/<revision>/` and recorded with its size and sha256; uploaded and
trained styles keep their LoRA in the blob store and are copied into a local cache file named
by the blob key. Uploads are validated before anything is stored: safetensors only (pickled
checkpoints are refused without being read), tensor names and shapes against the SD1.5 UNet and
text encoder, rank, and the LIMITS_MAX_LORA_BYTES size limit.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import AuditEntry, BaseModel, Photo, Style, StyleOrigin, Template
from db.repositories.styles import StyleRepository
from facechain import registry
from facechain.errors import FaceChainError, InvalidLoRA
from facechain.imageio import downscale, load_image
from facechain.lora import LoRAInfo, inspect_lora
from service.blobstore import BlobStore, sha256_hex, write_atomic
from service.catalog import category_name, slugify
from service.errors import AppError, BlobMissing, Forbidden, NotFound, ValidationFailed
from service.ordering import put_first
from service.settings import LimitsSettings

logger = logging.getLogger(__name__)

STYLES_CACHE = "styles"
DOWNLOAD_COMMAND = "facechain-bot models download --styles"
THUMBNAIL_SIDE = 512
TRAINED_STYLE_WEIGHT = 0.8
LANGUAGES = ("en", "zh", "ru")
MAX_NAME_CHARS = 96
MAX_PROMPT_CHARS = 2000
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# torch.save writes a zip archive (PK..), older torch and pickle files start with the pickle
# protocol opcode 0x80: both would execute code on load, so they are refused unread.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


class StyleLoRAMissing(AppError):
    """A style's LoRA file is neither cached nor obtainable now."""

    code = "style_lora_missing"


class InvalidStyleUpload(ValidationFailed):
    """An uploaded style (LoRA, thumbnail, names, prompt) was refused; the message says why."""

    code = "invalid_lora"


@dataclass
class LoRADownloadReport:
    """Outcome of `download_style_loras`, keyed by `model_id@revision/file`."""

    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"style LoRAs: {len(self.downloaded)} downloaded, {len(self.cached)} already cached, "
            f"{len(self.failed)} failed"
        )


# --- LoRA files ---------------------------------------------------------------------------


def styles_cache_dir(models_dir: Path) -> Path:
    """Root of the style LoRA cache inside the models folder."""
    return models_dir / STYLES_CACHE


def catalog_lora_path(models_dir: Path, model_id: str, revision: str, filename: str) -> Path:
    """Where a catalog LoRA lives once downloaded (revisions kept apart)."""
    if ".." in Path(model_id).parts or ".." in Path(filename).parts or ".." in revision:
        raise ValueError(f"unsafe LoRA reference {model_id}@{revision}/{filename}")
    return styles_cache_dir(models_dir) / model_id / revision / filename


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached_ok(path: Path) -> bool:
    """The file is there and has the size recorded when it was downloaded and checked."""
    record = _record_path(path)
    if not path.is_file() or not record.is_file():
        return False
    size = json.loads(record.read_text(encoding="utf-8")).get("size")
    return bool(path.stat().st_size == size)


def _lora_ref(model_id: str, revision: str, filename: str) -> str:
    return f"{model_id}@{revision}/{filename}"


def fetch_catalog_lora(models_dir: Path, model_id: str, revision: str, filename: str) -> Path:
    """Download one catalog LoRA from ModelScope (cached), check it, record size and sha256.

    Raises:
        StyleLoRAMissing: the download failed or the file is not a usable SD1.5 LoRA.
    """
    path = catalog_lora_path(models_dir, model_id, revision, filename)
    if _cached_ok(path):
        return path
    ref = _lora_ref(model_id, revision, filename)
    logger.info("downloading style LoRA %s", ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        registry.snapshot_download(
            model_id, revision=revision, local_dir=str(path.parent), allow_file_pattern=filename
        )
    except Exception as exc:  # network, hub or disk: all mean "not available now"
        raise StyleLoRAMissing(
            f"style LoRA {ref} could not be downloaded ({type(exc).__name__}: {exc}); "
            f"check the network and run `{DOWNLOAD_COMMAND}`",
            ref=ref,
        ) from exc
    if not path.is_file():
        raise StyleLoRAMissing(f"style LoRA {ref}: {filename} is not in the repository", ref=ref)
    try:
        info = inspect_lora(path)
    except InvalidLoRA as exc:
        path.unlink(missing_ok=True)
        raise StyleLoRAMissing(f"style LoRA {ref} is not usable: {exc}", ref=ref) from exc
    record = {
        "model_id": model_id,
        "revision": revision,
        "file": filename,
        "size": path.stat().st_size,
        "sha256": registry.sha256_file(path),
        "format": info.format,
        "rank": info.rank,
    }
    _record_path(path).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return path


def _blob_lora_path(models_dir: Path, blobs: BlobStore, key: str) -> Path:
    """A local file holding the LoRA blob `key` (written once, atomically)."""
    path = styles_cache_dir(models_dir) / "blobs" / f"{key}.safetensors"
    if path.is_file():
        return path
    data = blobs.get(key)
    if sha256_hex(data) != key:
        raise StyleLoRAMissing(f"LoRA blob {key} is corrupt (checksum mismatch)", blob=key)
    write_atomic(path, data)
    return path


def resolve_style_lora(
    style: Style, models_dir: Path, blobs: BlobStore, *, download: bool = True
) -> Path | None:
    """Local path of a style's LoRA, fetching it on first use; None = the default style LoRA.

    Raises:
        StyleLoRAMissing: the file is not cached and cannot be fetched (the message says how).
    """
    if style.lora_blob:
        try:
            return _blob_lora_path(models_dir, blobs, style.lora_blob)
        except BlobMissing as exc:
            raise StyleLoRAMissing(
                f"style {style.slug!r}: its LoRA blob {style.lora_blob} is missing from the blob "
                "store; upload the LoRA again or delete the style",
                style=style.slug,
            ) from exc
    if not style.lora_model_id:
        return None
    if not (style.lora_revision and style.lora_file):
        raise StyleLoRAMissing(f"style {style.slug!r} names a LoRA repository but no file")
    path = catalog_lora_path(models_dir, style.lora_model_id, style.lora_revision, style.lora_file)
    if _cached_ok(path):
        return path
    ref = _lora_ref(style.lora_model_id, style.lora_revision, style.lora_file)
    if not download:
        raise StyleLoRAMissing(
            f"style {style.slug!r}: LoRA {ref} is not downloaded; run `{DOWNLOAD_COMMAND}`",
            style=style.slug,
            ref=ref,
        )
    try:
        return fetch_catalog_lora(
            models_dir, style.lora_model_id, style.lora_revision, style.lora_file
        )
    except StyleLoRAMissing as exc:
        raise StyleLoRAMissing(f"style {style.slug!r}: {exc}", style=style.slug, ref=ref) from exc


def download_style_loras(
    session: Session, models_dir: Path, *, enabled_only: bool = False
) -> LoRADownloadReport:
    """Fetch every catalog style's LoRA (each distinct file once); failures are reported."""
    report = LoRADownloadReport()
    seen: set[str] = set()
    for style in StyleRepository(session).catalog_with_lora():
        if enabled_only and not style.enabled:
            continue
        if not (style.lora_model_id and style.lora_revision and style.lora_file):
            continue
        ref = _lora_ref(style.lora_model_id, style.lora_revision, style.lora_file)
        if ref in seen:
            continue
        seen.add(ref)
        path = catalog_lora_path(
            models_dir, style.lora_model_id, style.lora_revision, style.lora_file
        )
        if _cached_ok(path):
            report.cached.append(ref)
            continue
        try:
            fetch_catalog_lora(
                models_dir, style.lora_model_id, style.lora_revision, style.lora_file
            )
        except StyleLoRAMissing as exc:
            logger.warning("%s", exc)
            report.failed[ref] = str(exc)
        else:
            report.downloaded.append(ref)
    logger.info("%s", report.summary())
    return report


# --- validation -----------------------------------------------------------------------------


def validate_lora_bytes(data: bytes, *, max_bytes: int | None = None) -> LoRAInfo:
    """Check an uploaded LoRA without unpickling anything.

    Raises:
        InvalidStyleUpload: empty, too big, a pickle/.ckpt, not safetensors, or not an SD1.5
            LoRA (tensor names, shapes, rank, LoCon layers).
    """
    limit = max_bytes if max_bytes is not None else LimitsSettings().max_lora_bytes
    if not data:
        raise InvalidStyleUpload("the LoRA file is empty")
    if len(data) > limit:
        raise InvalidStyleUpload(f"the LoRA file is {len(data)} bytes; the limit is {limit}")
    if data.startswith(_PICKLE_MAGIC):
        raise InvalidStyleUpload(
            "pickled checkpoints (.ckpt, .pt, .bin) are not accepted because loading them can "
            "run code; convert the LoRA to .safetensors"
        )
    with tempfile.TemporaryDirectory(prefix="lora-upload-") as tmp:
        path = Path(tmp) / "upload.safetensors"
        path.write_bytes(data)
        try:
            return inspect_lora(path)
        except InvalidLoRA as exc:
            raise InvalidStyleUpload(str(exc).replace("upload.safetensors: ", "")) from exc


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


def _base_model(value: BaseModel | str) -> BaseModel:
    try:
        return BaseModel(value)
    except ValueError:
        raise InvalidStyleUpload(
            f"unknown base model {value!r}; use {', '.join(m.value for m in BaseModel)}"
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
    session.add(
        AuditEntry(actor=actor, action=action, target=f"style:{style.slug}", details=details)
    )


# --- management -----------------------------------------------------------------------------


def add_uploaded_style(
    session: Session,
    blobs: BlobStore,
    *,
    lora_bytes: bytes,
    thumbnail_bytes: bytes | None,
    names: dict[str, str],
    prompt: str,
    base_model: BaseModel | str,
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
    base_model: BaseModel | str,
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
    session.add(
        AuditEntry(
            actor=actor,
            action="style.reorder",
            target="styles",
            details={"first": list(style_ids)},
        )
    )
    session.flush()
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


def _blob_in_use(session: Session, key: str) -> bool:
    """Whether any style, template or photo still points at this blob."""
    checks = (
        select(Style.id).where(or_(Style.lora_blob == key, Style.thumbnail_blob == key)),
        select(Template.id).where(or_(Template.image_blob == key, Template.thumbnail_blob == key)),
        select(Photo.id).where(Photo.sha256 == key),
    )
    return any(session.scalar(stmt.limit(1)) is not None for stmt in checks)


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
    for key in keys:
        if not _blob_in_use(session, key):
            blobs.delete(key)
    logger.info("style %s deleted by %s", style.slug, actor)
