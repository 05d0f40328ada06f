"""Templates: list, one template, change, reorder, delete, and upload from a photo."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from core.settings import AppConfig
from db.models import Template
from domain import templates
from web.api.common import IMAGE_TYPES, check_image, page_of, screen_sample
from web.http import Call
from web.openapi import API_PREFIX, FileField, Multipart, Route
from web.schemas import (
    OrderIn,
    Page,
    TemplateOut,
    TemplatePatch,
    TemplateQuery,
    TemplateUploadFields,
    plain_names,
)


def template_out(template: Template) -> TemplateOut:
    return TemplateOut(
        id=template.id,
        slug=template.slug,
        names=template.names,
        category=template.category,
        width=template.width,
        height=template.height,
        face_count=len(template.faces or []),
        image_blob=template.image_blob,
        thumbnail_blob=template.thumbnail_blob,
        enabled=template.enabled,
        position=template.position,
        origin=template.origin,
        owner_id=template.owner_id,
        created_at=template.created_at,
    )


async def list_templates(call: Call) -> BaseModel:
    q = call.query_as(TemplateQuery)
    rows, total = await call.db.run(
        templates.templates_page,
        enabled=q.enabled,
        category=q.category,
        limit=q.limit,
        offset=q.offset,
    )
    return page_of(TemplateOut, rows, total, q, template_out)


async def get_template(call: Call) -> TemplateOut:
    return template_out(await call.db.run(templates.get_template, call.path_int("template_id")))


async def update_template(call: Call) -> TemplateOut:
    patch = call.body_as(TemplatePatch)
    template = await call.db.run(
        templates.update_template,
        call.path_int("template_id"),
        call.actor,
        enabled=patch.enabled,
        position=patch.position,
        names=plain_names(patch.names),
        category=patch.category,
    )
    return template_out(template)


async def reorder_templates(call: Call) -> BaseModel:
    ids = call.body_as(OrderIn).ids
    rows = await call.db.run(templates.reorder_templates, ids, call.actor)
    return Page[TemplateOut](
        items=[template_out(t) for t in rows], total=len(rows), limit=len(rows), offset=0
    )


async def delete_template(call: Call) -> None:
    await call.db.run(
        templates.delete_template, call.blobs, call.path_int("template_id"), call.actor
    )


async def upload_template(call: Call) -> TemplateOut:
    fields = call.body_as(TemplateUploadFields)
    image = call.files["image"]
    check_image(image.content_type, image.data, "image")
    await screen_sample(call, image.data)
    limits = call.config.limits
    analysed = await asyncio.to_thread(
        templates.analyse_template_image,
        image.data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    template = await call.db.run(
        templates.add_uploaded_template,
        call.blobs,
        analysed,
        names=fields.names(),
        category=fields.category,
        actor=call.actor,
        slug=fields.slug,
    )
    return template_out(template)


def routes(config: AppConfig) -> list[Route]:
    p = API_PREFIX
    upload = Multipart(
        files=(
            FileField(
                "image",
                "Template photo with 1+ faces (JPEG, PNG or WebP)",
                config.limits.max_upload_bytes,
                True,
                IMAGE_TYPES,
            ),
        ),
        fields=TemplateUploadFields,
    )
    return [
        Route(
            "GET",
            f"{p}/templates",
            list_templates,
            "List templates in display order",
            "templates",
            query=TemplateQuery,
            response=Page[TemplateOut],
        ),
        Route(
            "POST",
            f"{p}/templates",
            upload_template,
            "Add a template from an uploaded photo",
            "templates",
            multipart=upload,
            response=TemplateOut,
            status=201,
            errors=(413, 415),
        ),
        Route(
            "PUT",
            f"{p}/templates/order",
            reorder_templates,
            "Reorder templates",
            "templates",
            body=OrderIn,
            response=Page[TemplateOut],
            errors=(404,),
        ),
        Route(
            "GET",
            f"{p}/templates/{{template_id}}",
            get_template,
            "One template",
            "templates",
            response=TemplateOut,
        ),
        Route(
            "PATCH",
            f"{p}/templates/{{template_id}}",
            update_template,
            "Enable/disable, move, rename",
            "templates",
            body=TemplatePatch,
            response=TemplateOut,
        ),
        Route(
            "DELETE",
            f"{p}/templates/{{template_id}}",
            delete_template,
            "Delete an uploaded template",
            "templates",
            status=204,
            errors=(403, 409),
        ),
    ]
