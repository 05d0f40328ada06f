"""Styles and templates over HTTP: list, patch, reorder, multipart uploads, type checks, delete."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from db.models import AuditEntry, Style, StyleOrigin, Template
from facechain.imageio import clean_image
from tests.domain.lora_data import kohya_lora, to_bytes, torch_pickle_bytes
from tests.utils.factories import make_style
from tests.web.conftest import AUTH

Client = TestClient[Any, Any]
FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def actions(session: Session) -> list[str]:
    session.expire_all()
    return [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def style_form(
    lora: bytes, *, filename: str = "neon.safetensors", **fields: str
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    values = {"name": "Neon night", "prompt": "neon lights, night city", "category": "fashion"}
    values.update(fields)
    for key, value in values.items():
        form.add_field(key, value)
    form.add_field("lora", lora, filename=filename, content_type="application/octet-stream")
    form.add_field("thumbnail", png(), filename="thumb.png", content_type="image/png")
    return form


class TestStyles:
    async def test_list_filters_and_patch(self, client: Client, session: Session) -> None:
        a = make_style(session, "a", position=1, category="fashion")
        make_style(session, "b", position=2, enabled=False)
        r = await client.get("/api/v1/styles", params={"enabled": "false"}, headers=AUTH)
        assert [s["slug"] for s in (await r.json())["items"]] == ["b"]
        r = await client.get("/api/v1/styles", params={"category": "fashion"}, headers=AUTH)
        assert [s["slug"] for s in (await r.json())["items"]] == ["a"]
        r = await client.patch(
            f"/api/v1/styles/{a.id}",
            json={"enabled": False, "lora_weight": 0.7, "names": {"ru": "Альфа"}},
            headers=AUTH,
        )
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["enabled"] is False
        assert body["lora_weight"] == 0.7
        assert body["names"]["ru"] == "Альфа"
        assert {"style.disable", "style.update"} <= set(actions(session))

    async def test_patch_validation(self, client: Client, session: Session) -> None:
        a = make_style(session, "a")
        for body in ({}, {"lora_weight": 5}, {"names": {"xx": "?"}}, {"category": "Bad Cat"}):
            r = await client.patch(f"/api/v1/styles/{a.id}", json=body, headers=AUTH)
            assert r.status == 422, body
        r = await client.patch("/api/v1/styles/424242", json={"enabled": True}, headers=AUTH)
        assert r.status == 404

    async def test_reorder(self, client: Client, session: Session) -> None:
        a = make_style(session, "a", position=1)
        b = make_style(session, "b", position=2)
        r = await client.put("/api/v1/styles/order", json={"ids": [b.id, a.id]}, headers=AUTH)
        assert r.status == 200, await r.text()
        r = await client.get("/api/v1/styles", headers=AUTH)
        assert [s["slug"] for s in (await r.json())["items"]] == ["b", "a"]
        r = await client.put("/api/v1/styles/order", json={"ids": [a.id, a.id]}, headers=AUTH)
        assert r.status == 422
        r = await client.put("/api/v1/styles/order", json={"ids": [999999]}, headers=AUTH)
        assert r.status == 404
        assert "style.reorder" in actions(session)

    async def test_upload_valid_lora(
        self, client: Client, session: Session, blobs: LocalBlobStore
    ) -> None:
        lora = to_bytes(kohya_lora())
        r = await client.post(
            "/api/v1/styles", data=style_form(lora, name_ru="Неон"), headers=AUTH
        )
        assert r.status == 201, await r.text()
        body = await r.json()
        assert body["origin"] == "uploaded"
        assert body["names"] == {"en": "Neon night", "ru": "Неон"}
        assert blobs.get(body["lora_blob"]) == lora
        assert body["thumbnail_blob"] is not None
        assert "style.upload" in actions(session)
        r = await client.delete(f"/api/v1/styles/{body['id']}", headers=AUTH)
        assert r.status == 204
        assert not blobs.exists(body["lora_blob"])
        assert "style.delete" in actions(session)

    async def test_upload_refusals(self, client: Client, session: Session) -> None:
        lora = to_bytes(kohya_lora())
        # A pickle, whatever its name: refused by its bytes before any parsing (the file name
        # is only a label; the document cannot promise anything about it).
        pickle = torch_pickle_bytes()
        r = await client.post(
            "/api/v1/styles", data=style_form(pickle, filename="x.safetensors"), headers=AUTH
        )
        assert r.status == 415
        # Valid container, wrong content (not an SD1.5 LoRA): 422 with the reason.
        bad = to_bytes(
            {
                "foo.weight": kohya_lora()[
                    "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"
                ]
            }
        )
        r = await client.post("/api/v1/styles", data=style_form(bad), headers=AUTH)
        assert r.status == 422, await r.text()
        # Over LIMITS_MAX_LORA_BYTES (256 KiB in these tests).
        big = to_bytes(kohya_lora(rank=64))
        r = await client.post("/api/v1/styles", data=style_form(big), headers=AUTH)
        assert r.status == 413
        # Missing file part, missing field, JSON instead of multipart.
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("name", "x")
        form.add_field("prompt", "y")
        r = await client.post("/api/v1/styles", data=form, headers=AUTH)
        assert r.status == 422
        r = await client.post("/api/v1/styles", data=style_form(lora, prompt=""), headers=AUTH)
        assert r.status == 422
        r = await client.post("/api/v1/styles", json={"name": "x"}, headers=AUTH)
        assert r.status == 415
        assert session.scalar(select(Style).where(Style.origin == StyleOrigin.UPLOADED)) is None

    async def test_catalog_style_cannot_be_deleted(self, client: Client, session: Session) -> None:
        style = make_style(session, "cat")
        r = await client.delete(f"/api/v1/styles/{style.id}", headers=AUTH)
        assert r.status == 403
        assert (await r.json())["error"]["code"] == "forbidden"


def template_form(
    image: bytes, content_type: str = "image/jpeg", **fields: str
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in {"name": "Wedding", **fields}.items():
        form.add_field(key, value)
    form.add_field("image", image, filename="t.jpg", content_type=content_type)
    return form


class TestTemplates:
    async def test_upload_patch_reorder_delete(
        self, client: Client, session: Session, blobs: LocalBlobStore
    ) -> None:
        image = (FACES / "template_group.jpg").read_bytes()
        r = await client.post(
            "/api/v1/templates", data=template_form(image, category="wedding"), headers=AUTH
        )
        assert r.status == 201, await r.text()
        created = await r.json()
        assert created["face_count"] == 2
        assert created["slug"] == "uploaded-wedding"
        # Stored without its metadata (facechain.imageio.clean_image).
        assert blobs.get(created["image_blob"]) == clean_image(image)
        r = await client.post(
            "/api/v1/templates", data=template_form(image, slug="second"), headers=AUTH
        )
        second = await r.json()
        r = await client.patch(
            f"/api/v1/templates/{second['id']}",
            json={"position": 1, "enabled": False},
            headers=AUTH,
        )
        assert r.status == 200, await r.text()
        assert (await r.json())["enabled"] is False
        r = await client.get("/api/v1/templates", headers=AUTH)
        assert [t["slug"] for t in (await r.json())["items"]] == ["second", "uploaded-wedding"]
        r = await client.put(
            "/api/v1/templates/order", json={"ids": [created["id"]]}, headers=AUTH
        )
        assert r.status == 200
        r = await client.get(f"/api/v1/templates/{created['id']}", headers=AUTH)
        assert (await r.json())["position"] == 1
        r = await client.delete(f"/api/v1/templates/{second['id']}", headers=AUTH)
        assert r.status == 204
        # The photo is shared with the first template: it stays.
        assert blobs.exists(created["image_blob"])
        assert {
            "template.create",
            "template.update",
            "template.reorder",
            "template.delete",
        } <= set(actions(session))

    async def test_upload_refusals(self, client: Client, session: Session) -> None:
        r = await client.post(
            "/api/v1/templates", data=template_form(b"GIF89a...", "image/gif"), headers=AUTH
        )
        assert r.status == 415
        r = await client.post(
            "/api/v1/templates", data=template_form(b"\xff\xd8\xff\xe0garbage"), headers=AUTH
        )
        assert r.status == 422
        assert (await r.json())["error"]["code"] == "not_an_image"
        r = await client.post(
            "/api/v1/templates", data=template_form(png((80, 80)), "image/png"), headers=AUTH
        )
        assert r.status == 422
        assert (await r.json())["error"]["code"] == "no_face"
        assert session.scalar(select(Template)) is None

    async def test_catalog_template_is_not_deletable(
        self, client: Client, session: Session
    ) -> None:
        template = Template(
            slug="cat",
            names={"en": "c"},
            image_blob="d" * 64,
            width=1,
            height=1,
            faces=[],
            origin=StyleOrigin.CATALOG,
        )
        session.add(template)
        session.flush()
        r = await client.delete(f"/api/v1/templates/{template.id}", headers=AUTH)
        assert r.status == 403
