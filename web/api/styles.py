"""Styles: list, one style, change, reorder, delete, and upload from a LoRA file."""

from __future__ import annotations

from pydantic import BaseModel

from core.settings import AppConfig
from domain import styles
from web.api.common import IMAGE_TYPES, LORA_TYPES, check_image, page_of, screen_sample
from web.http import Call, UnsupportedMediaType
from web.openapi import API_PREFIX, FileField, Multipart, Route
from web.schemas import (
    OrderIn,
    Page,
    StyleOut,
    StylePatch,
    StyleQuery,
    StyleUploadFields,
    plain_names,
)


async def list_styles(call: Call) -> BaseModel:
    q = call.query_as(StyleQuery)
    rows, total = await call.db.run(
        styles.styles_page,
        enabled=q.enabled,
        category=q.category,
        origin=q.origin,
        limit=q.limit,
        offset=q.offset,
    )
    return page_of(StyleOut, rows, total, q)


async def get_style(call: Call) -> StyleOut:
    return StyleOut.model_validate(await call.db.run(styles.get_style, call.path_int("style_id")))


async def update_style(call: Call) -> StyleOut:
    patch = call.body_as(StylePatch)
    style = await call.db.run(
        styles.patch_style,
        call.path_int("style_id"),
        actor=call.actor,
        enabled=patch.enabled,
        names=plain_names(patch.names),
        prompt=patch.prompt,
        weight=patch.lora_weight,
        category=patch.category,
        position=patch.position,
    )
    return StyleOut.model_validate(style)


async def reorder_styles(call: Call) -> BaseModel:
    ids = call.body_as(OrderIn).ids
    rows = await call.db.run(styles.reorder_styles, ids, actor=call.actor)
    return Page[StyleOut](
        items=[StyleOut.model_validate(r) for r in rows],
        total=len(rows),
        limit=len(rows),
        offset=0,
    )


async def delete_style(call: Call) -> None:
    await call.db.run(styles.delete_style, call.blobs, call.path_int("style_id"), actor=call.actor)


def check_safetensors(data: bytes) -> None:
    """A safetensors file starts with an 8-byte header length and a JSON header; no pickles."""
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if header_len <= 0 or header_len > len(data) - 8 or data[8:9] != b"{":
        raise UnsupportedMediaType("the LoRA file is not in safetensors format")


async def upload_style(call: Call) -> StyleOut:
    fields = call.body_as(StyleUploadFields)
    lora = call.files["lora"]
    thumbnail = call.files.get("thumbnail")
    check_safetensors(lora.data)
    if thumbnail is not None:
        check_image(thumbnail.content_type, thumbnail.data, "thumbnail")
        await screen_sample(call, thumbnail.data)
    style = await call.db.run(
        styles.add_uploaded_style,
        call.blobs,
        lora_bytes=lora.data,
        thumbnail_bytes=thumbnail.data if thumbnail is not None else None,
        names=fields.names(),
        prompt=fields.prompt,
        base_model=fields.base_model,
        weight=fields.lora_weight,
        category=fields.category,
        actor=call.actor,
        max_lora_bytes=call.config.limits.max_lora_bytes,
    )
    return StyleOut.model_validate(style)


def routes(config: AppConfig) -> list[Route]:
    p = API_PREFIX
    upload = Multipart(
        files=(
            FileField(
                "lora",
                "LoRA weights (safetensors, Kohya or diffusers layout, SD1.5)",
                config.limits.max_lora_bytes,
                True,
                LORA_TYPES,
            ),
            FileField(
                "thumbnail",
                "Preview image (JPEG, PNG or WebP)",
                config.limits.max_upload_bytes,
                False,
                IMAGE_TYPES,
            ),
        ),
        fields=StyleUploadFields,
    )
    return [
        Route(
            "GET",
            f"{p}/styles",
            list_styles,
            "List styles in display order",
            "styles",
            query=StyleQuery,
            response=Page[StyleOut],
        ),
        Route(
            "POST",
            f"{p}/styles",
            upload_style,
            "Add a style from an uploaded LoRA",
            "styles",
            multipart=upload,
            response=StyleOut,
            status=201,
            errors=(413, 415),
        ),
        Route(
            "PUT",
            f"{p}/styles/order",
            reorder_styles,
            "Reorder styles",
            "styles",
            body=OrderIn,
            response=Page[StyleOut],
            errors=(404,),
        ),
        Route(
            "GET", f"{p}/styles/{{style_id}}", get_style, "One style", "styles", response=StyleOut
        ),
        Route(
            "PATCH",
            f"{p}/styles/{{style_id}}",
            update_style,
            "Enable/disable, move, rename, reweight",
            "styles",
            body=StylePatch,
            response=StyleOut,
        ),
        Route(
            "DELETE",
            f"{p}/styles/{{style_id}}",
            delete_style,
            "Delete an uploaded or trained style",
            "styles",
            status=204,
            errors=(403,),
        ),
    ]
