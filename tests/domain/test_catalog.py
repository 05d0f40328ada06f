"""The shipped FaceChain catalog: 75 styles with thumbnails, names in three languages, the group
template, idempotent re-import and `styles list` rows."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from db.models import BaseModelName, Style, StyleOrigin, Template
from db.repositories.styles import StyleRepository
from domain.catalog import (
    CATALOG_DIR,
    CATEGORIES,
    import_catalog,
    list_catalog,
    load_catalog,
    split_name,
)
from tests.utils.factories import make_style

NO_LORA = {
    "armor",
    "cybernetics-punk",
    "gown",
    "hanfu",
    "innocent-girl-in-white-dress",
    "t-shirt",
    "working-suit",
}


class TestLoadCatalog:
    def test_75_styles_in_app_order(self) -> None:
        styles = load_catalog()
        assert len(styles) == 75
        assert [s.position for s in styles] == list(range(1, 76))
        majic = [s for s in styles if s.base_model is BaseModelName.MAJIC]
        film = [s for s in styles if s.base_model is BaseModelName.FILM]
        assert (len(majic), len(film)) == (62, 13)
        # Majic first, then film, each by file name.
        assert styles[:62] == majic
        assert [s.source for s in majic] == sorted(s.source for s in majic)
        assert styles[62].slug == "armor"

    def test_names_prompts_and_lora_refs(self) -> None:
        by_slug = {s.slug: s for s in load_catalog()}
        assert len(by_slug) == 75
        polaroid = by_slug["polaroid-style"]
        assert polaroid.names == {"en": "Polaroid style", "zh": "拍立得风", "ru": "Полароид"}
        assert (polaroid.lora_model_id, polaroid.lora_revision, polaroid.lora_file) == (
            "YorickHe/polaroid_lora",
            "v1.0.0",
            "InstantPhotoX3.safetensors",
        )
        assert polaroid.weight == pytest.approx(0.4)
        assert polaroid.prompt.endswith("instant photo, realistic face")
        assert by_slug["wedding-dress-2"].names["zh"] == "婚纱风-2"
        assert {s.slug for s in by_slug.values() if s.prompt_template == "cloth"} == NO_LORA
        assert all(s.lora_model_id is None for s in by_slug.values() if s.slug in NO_LORA)
        for style in by_slug.values():
            assert set(style.names) == {"en", "zh", "ru"}
            assert all(style.names.values())
            assert style.category in CATEGORIES
            assert style.thumbnail.is_file()
            assert 0.1 <= style.weight <= 0.8

    def test_split_name(self) -> None:
        assert split_name("男士西装风(Men's Suit)") == ("男士西装风", "Men's Suit")
        assert split_name("Plain") == ("Plain", "Plain")

    def test_license_and_template_shipped(self) -> None:
        assert "Apache License" in (CATALOG_DIR / "LICENSE").read_text()
        templates = json.loads((CATALOG_DIR / "templates" / "templates.json").read_text())
        assert (CATALOG_DIR / "templates" / templates[0]["file"]).is_file()


class TestImportCatalog:
    def test_imports_everything_once(self, session: Session, blobs: LocalBlobStore) -> None:
        report = import_catalog(session, blobs)
        assert len(report.created) == 75
        assert report.templates_created == ["wedding-couple"]
        styles = session.scalars(select(Style).order_by(Style.position)).all()
        assert len(styles) == 75
        for style in styles:
            assert style.origin is StyleOrigin.CATALOG
            assert style.owner_id is None
            assert style.thumbnail_blob
            assert blobs.exists(style.thumbnail_blob)
            # FaceChain's thumbnails, as shipped: JPEGs of about 512 px, a few smaller.
            with Image.open(io.BytesIO(blobs.get(style.thumbnail_blob))) as im:
                assert im.format == "JPEG"
                assert 300 <= min(im.size) <= 640
        first = styles[0]
        assert (first.slug, first.base_model, first.prompt_template) == (
            "autumn-populus",
            BaseModelName.MAJIC,
            "style",
        )
        assert first.name_for("ru") == "Осенние тополя"
        assert first.name_for("zh") == "秋日胡杨风"

        template = session.scalar(select(Template))
        assert template is not None
        assert (template.width, template.height) == (1680, 1260)
        # The bride and the groom, left to right, found by the real detector.
        assert len(template.faces) == 2
        assert template.faces[0]["box"][0] < template.faces[1]["box"][0]
        assert len(template.faces[0]["landmarks"]) == 5
        assert blobs.exists(template.image_blob)
        assert template.thumbnail_blob

        again = import_catalog(session, blobs)
        assert (len(again.created), len(again.updated), len(again.unchanged)) == (0, 0, 75)
        assert again.templates_unchanged == ["wedding-couple"]
        assert session.scalar(select(func.count(Style.id))) == 75
        assert session.scalar(select(func.count(Template.id))) == 1

    def test_reimport_keeps_admin_choices_and_refreshes_content(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        import_catalog(session, blobs)
        style = StyleRepository(session).by_slug("cartoon")
        assert style is not None
        style.enabled = False
        style.position = 999
        style.category = "other"
        style.lora_weight = 0.9
        style.prompt = "edited by hand"
        session.flush()

        report = import_catalog(session, blobs)
        assert report.updated == ["cartoon"]
        session.refresh(style)
        assert (style.enabled, style.position, style.category, style.lora_weight) == (
            False,
            999,
            "other",
            0.9,
        )
        assert style.prompt.startswith("Manhuanan")

    def test_slug_taken_by_an_admin_style_is_skipped(
        self, session: Session, blobs: LocalBlobStore
    ) -> None:
        mine = make_style(session, slug="cartoon", origin=StyleOrigin.UPLOADED, prompt="mine")
        report = import_catalog(session, blobs)
        assert report.skipped == ["cartoon"]
        assert len(report.created) == 74
        session.refresh(mine)
        assert mine.prompt == "mine"


class TestListCatalog:
    def test_rows_in_order_in_the_language(self, session: Session, blobs: LocalBlobStore) -> None:
        import_catalog(session, blobs)
        rows = list_catalog(session, "ru")
        assert len(rows) == 75
        assert rows[0].name == "Осенние тополя"
        assert rows[0].lora == "PeiPeiY/style_lora@v1/autumn_populus.safetensors"
        armor = next(r for r in rows if r.slug == "armor")
        assert (armor.base_model, armor.lora, armor.enabled) == (
            "film",
            "default (cloth template)",
            True,
        )
        assert [r.position for r in rows] == sorted(r.position for r in rows)
        assert list_catalog(session, "zh")[0].name == "秋日胡杨风"
