"""FaceChain's style and template catalog, shipped in `domain/catalog_data/`, put in the DB.

The 75 style JSON files, their thumbnails and the group template photo come from
modelscope/facechain (Apache-2.0, see `catalog_data/LICENSE` and the repository's NOTICE).
Russian names and categories are ours (`catalog_data/style_extra.json`). Importing is an upsert
by slug: catalog content (names, prompt, LoRA reference, thumbnail) is refreshed, while what an
admin manages (enabled, position, category, weight) is kept once a row exists.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from sqlalchemy.orm import Session

from core.blobstore import BlobStore
from db.models import BaseModelName, Style, StyleOrigin, Template
from db.repositories.styles import StyleRepository
from db.repositories.templates import TemplateRepository
from facechain.imageio import downscale, load_image, to_rgb_array

logger = logging.getLogger(__name__)

CATALOG_DIR = Path(__file__).resolve().parent / "catalog_data"

# FaceChain's style folders name the base checkpoint (reference §6): film = index 0, majic = 1.
BASE_FOLDERS: dict[str, BaseModelName] = {
    "MajicmixRealistic_v6": BaseModelName.MAJIC,
    "leosamsMoonfilm_filmGrain20": BaseModelName.FILM,
}
# The app lists majic styles first, then film, each sorted by file name.
FOLDER_ORDER = ("MajicmixRealistic_v6", "leosamsMoonfilm_filmGrain20")

CATEGORIES: dict[str, dict[str, str]] = {
    "traditional": {"en": "Traditional", "zh": "传统服饰", "ru": "Традиционные"},
    "costume": {"en": "Costume", "zh": "角色装扮", "ru": "Костюмы"},
    "fashion": {"en": "Fashion", "zh": "时尚", "ru": "Мода"},
    "fantasy": {"en": "Fantasy", "zh": "奇幻", "ru": "Фэнтези"},
    "seasonal": {"en": "Seasons", "zh": "四季节日", "ru": "Сезоны и праздники"},
    "photo": {"en": "Photo looks", "zh": "摄影风格", "ru": "Фотостили"},
    "trained": {"en": "Trained", "zh": "自训练", "ru": "Обученные"},
    "uploaded": {"en": "Uploaded", "zh": "上传", "ru": "Загруженные"},
    "other": {"en": "Other", "zh": "其他", "ru": "Другое"},
}

TEMPLATE_THUMBNAIL_SIDE = 512
_NAME = re.compile(r"^(?P<zh>.+?)\((?P<en>.+)\)$")


@dataclass(frozen=True)
class CatalogStyle:
    """One style as shipped: FaceChain's JSON plus our Russian name and category."""

    slug: str
    names: dict[str, str]
    category: str
    base_model: BaseModelName
    prompt: str
    prompt_template: str
    lora_model_id: str | None
    lora_revision: str | None
    lora_file: str | None
    weight: float
    thumbnail: Path
    position: int
    source: str


@dataclass(frozen=True)
class CatalogTemplate:
    """One template photo as shipped."""

    slug: str
    names: dict[str, str]
    category: str
    image: Path
    position: int


@dataclass
class ImportReport:
    """What an import changed, by slug."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    templates_created: list[str] = field(default_factory=list)
    templates_updated: list[str] = field(default_factory=list)
    templates_unchanged: list[str] = field(default_factory=list)

    @property
    def total_styles(self) -> int:
        return len(self.created) + len(self.updated) + len(self.unchanged)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"styles: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped; templates: "
            f"{len(self.templates_created)} created, {len(self.templates_updated)} updated, "
            f"{len(self.templates_unchanged)} unchanged"
        )


@dataclass(frozen=True)
class CatalogRow:
    """One line of `facechain-bot styles list`."""

    position: int
    slug: str
    name: str
    category: str
    base_model: str
    origin: str
    lora: str
    weight: float
    enabled: bool


def split_name(name: str) -> tuple[str, str]:
    """FaceChain's "中文(English)" display name as (zh, en)."""
    match = _NAME.match(name.strip())
    if match is None:
        return name.strip(), name.strip()
    return match["zh"].strip(), match["en"].strip()


def slugify(text: str) -> str:
    """Lower-case ASCII words joined by hyphens (file stems, English names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_catalog(data_dir: Path = CATALOG_DIR) -> list[CatalogStyle]:
    """The shipped style catalog in FaceChain's app order."""
    extra: dict[str, dict[str, str]] = json.loads(
        (data_dir / "style_extra.json").read_text(encoding="utf-8")
    )
    styles: list[CatalogStyle] = []
    for folder in FOLDER_ORDER:
        for path in sorted((data_dir / "styles" / folder).glob("*.json"), key=lambda p: p.name):
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            zh, en = split_name(raw["name"])
            more = extra.get(path.stem)
            if more is None:
                raise ValueError(f"{path.stem} has no entry in style_extra.json")
            model_id = raw.get("model_id")
            styles.append(
                CatalogStyle(
                    slug=slugify(path.stem),
                    names={"en": en, "zh": zh, "ru": more["ru"]},
                    category=more["category"],
                    base_model=BASE_FOLDERS[folder],
                    prompt=str(raw["add_prompt_style"]).strip(),
                    # Styles without a LoRA use the cloth template and the default LoRA (§3, §6).
                    prompt_template="cloth" if model_id is None else "style",
                    lora_model_id=model_id,
                    lora_revision=raw.get("revision"),
                    lora_file=raw.get("bin_file"),
                    weight=float(raw["multiplier_style"]),
                    thumbnail=data_dir / "style_image" / Path(raw["img"]).name,
                    position=len(styles) + 1,
                    source=f"{folder}/{path.name}",
                )
            )
    return styles


def load_templates(data_dir: Path = CATALOG_DIR) -> list[CatalogTemplate]:
    """The shipped template photos."""
    rows: list[dict[str, Any]] = json.loads(
        (data_dir / "templates" / "templates.json").read_text(encoding="utf-8")
    )
    return [
        CatalogTemplate(
            slug=row["slug"],
            names=dict(row["names"]),
            category=row.get("category", "other"),
            image=data_dir / "templates" / row["file"],
            position=i + 1,
        )
        for i, row in enumerate(rows)
    ]


def import_catalog(
    session: Session, blobs: BlobStore, data_dir: Path = CATALOG_DIR
) -> ImportReport:
    """Upsert the shipped styles and templates (idempotent); the caller commits."""
    report = ImportReport()
    repo = StyleRepository(session)
    for entry in load_catalog(data_dir):
        thumbnail = blobs.put(entry.thumbnail.read_bytes())
        content: dict[str, Any] = {
            "names": entry.names,
            "base_model": entry.base_model,
            "prompt": entry.prompt,
            "prompt_template": entry.prompt_template,
            "lora_model_id": entry.lora_model_id,
            "lora_revision": entry.lora_revision,
            "lora_file": entry.lora_file,
            "lora_blob": None,
            "thumbnail_blob": thumbnail,
        }
        style = repo.by_slug(entry.slug)
        if style is None:
            repo.add(
                Style(
                    slug=entry.slug,
                    category=entry.category,
                    lora_weight=entry.weight,
                    enabled=True,
                    position=entry.position,
                    origin=StyleOrigin.CATALOG,
                    owner_id=None,
                    extra={"source": entry.source},
                    **content,
                ),
                flush=False,
            )
            report.created.append(entry.slug)
            continue
        if style.origin is not StyleOrigin.CATALOG:
            # An admin's own style already uses this slug; never overwrite it.
            logger.warning("catalog slug %s is taken by a %s style", entry.slug, style.origin)
            report.skipped.append(entry.slug)
            continue
        changed = [k for k, v in content.items() if getattr(style, k) != v]
        for key in changed:
            setattr(style, key, content[key])
        (report.updated if changed else report.unchanged).append(entry.slug)
    session.flush()
    _import_templates(session, blobs, data_dir, report)
    logger.info("catalog import: %s", report.summary())
    return report


def _import_templates(
    session: Session, blobs: BlobStore, data_dir: Path, report: ImportReport
) -> None:
    repo = TemplateRepository(session)
    for entry in load_templates(data_dir):
        data = entry.image.read_bytes()
        image_key = blobs.put(data)
        template = repo.by_slug(entry.slug)
        if template is not None and template.image_blob == image_key and template.faces:
            # Same photo, already analysed: only names may have changed.
            if template.names != entry.names:
                template.names = entry.names
                report.templates_updated.append(entry.slug)
            else:
                report.templates_unchanged.append(entry.slug)
            continue
        image = load_image(data)
        faces = detect_template_faces(image)
        thumb = blobs.put(_jpeg(downscale(image, TEMPLATE_THUMBNAIL_SIDE)))
        values: dict[str, Any] = {
            "names": entry.names,
            "image_blob": image_key,
            "thumbnail_blob": thumb,
            "width": image.width,
            "height": image.height,
            "faces": faces,
        }
        if template is None:
            repo.add(
                Template(
                    slug=entry.slug,
                    category=entry.category,
                    enabled=True,
                    position=entry.position,
                    origin=StyleOrigin.CATALOG,
                    owner_id=None,
                    **values,
                ),
                flush=False,
            )
            report.templates_created.append(entry.slug)
        else:
            for key, value in values.items():
                setattr(template, key, value)
            report.templates_updated.append(entry.slug)
    session.flush()


def detect_template_faces(image: Image.Image) -> list[dict[str, Any]]:
    """Faces of a template photo in `Photo.faces` form, left to right."""
    from facechain.faces import default_detector

    faces = default_detector().detect_faces(to_rgb_array(image))
    return [face.to_record() for face in faces]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def lora_label(style: Style) -> str:
    """Where a style's LoRA comes from, for listings."""
    if style.lora_blob:
        return f"blob:{style.lora_blob[:12]}"
    if style.lora_model_id:
        return f"{style.lora_model_id}@{style.lora_revision}/{style.lora_file}"
    return "default (cloth template)"


def list_catalog(
    session: Session, language: str = "en", *, enabled_only: bool = False
) -> list[CatalogRow]:
    """Every style in display order, named in `language`, for `facechain-bot styles list`."""
    styles = session.scalars(StyleRepository(session).ordered(enabled_only=enabled_only)).all()
    return [
        CatalogRow(
            position=s.position,
            slug=s.slug,
            name=s.name_for(language),
            category=s.category,
            base_model=s.base_model.value,
            origin=s.origin.value,
            lora=lora_label(s),
            weight=s.lora_weight,
            enabled=s.enabled,
        )
        for s in styles
    ]


def category_name(category: str, language: str = "en") -> str:
    """A category's display name, falling back to English then the slug."""
    names = CATEGORIES.get(category, {})
    return names.get(language) or names.get("en") or category
