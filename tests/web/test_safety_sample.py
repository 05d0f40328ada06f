"""An admin's catalog images (a style's sample image, a catalog template photo) are checked like
every upload: a flagged one is refused (422 unsafe_image) and nothing of the upload (row, LoRA,
thumbnail or template blob) is kept."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from db.models import AuditEntry, Style, Template
from tests.domain.lora_data import kohya_lora, to_bytes
from tests.utils.fake_safety import FlagChosen
from tests.web.conftest import AUTH
from tests.web.test_catalog import FACES, style_form, template_form


@pytest.fixture
def screen_checker() -> Any:
    return FlagChosen(every=True)


async def test_a_flagged_sample_image_refuses_the_upload(
    client: TestClient[Any, Any], session: Session, blobs: LocalBlobStore
) -> None:
    styles_before = session.scalar(select(func.count(Style.id)))
    files_before = {p for p in blobs.root.rglob("*") if p.is_file()}
    r = await client.post("/api/v1/styles", data=style_form(to_bytes(kohya_lora())), headers=AUTH)
    assert r.status == 422, await r.text()
    body = await r.json()
    assert body["error"]["code"] == "unsafe_image"
    session.expire_all()
    assert session.scalar(select(func.count(Style.id))) == styles_before
    assert {p for p in blobs.root.rglob("*") if p.is_file()} == files_before
    [entry] = session.scalars(
        select(AuditEntry).where(AuditEntry.action == "safety.flagged.sample")
    ).all()
    assert entry.details["kind"] == "sample"


async def test_a_flagged_catalog_template_is_refused(
    client: TestClient[Any, Any], session: Session, blobs: LocalBlobStore
) -> None:
    files_before = {p for p in blobs.root.rglob("*") if p.is_file()}
    templates_before = session.scalar(select(func.count(Template.id)))
    image = (FACES / "template_group.jpg").read_bytes()
    r = await client.post("/api/v1/templates", data=template_form(image), headers=AUTH)
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["code"] == "unsafe_image"
    session.expire_all()
    assert session.scalar(select(func.count(Template.id))) == templates_before
    assert {p for p in blobs.root.rglob("*") if p.is_file()} == files_before
