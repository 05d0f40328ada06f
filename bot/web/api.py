"""The admin API under /api/v1/: handlers and the route table they are served and documented by.

Handlers are thin: parse (done by the route table), call `service.admin` / task helpers inside
one `db.run` transaction, then do post-commit work (dispatch a retried job, publish webhook
deliveries, a broadcast task, blob deletions). Every mutating call writes an AuditEntry.
`service.styles` is imported inside the style handlers: LoRA validation pulls in torch, which
the web process should not pay for at startup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.web.http import Call, UnsupportedMediaType
from bot.web.keys import OPENAPI
from bot.web.openapi import API_PREFIX, FileField, Multipart, Route
from bot.web.schemas import (
    INT64_MAX,
    AuditOut,
    AuditQuery,
    BroadcastIn,
    BroadcastOut,
    DeliveryOut,
    DeliveryQuery,
    JobOut,
    JobQuery,
    OrderIn,
    Page,
    PageQuery,
    QuotaIn,
    StatsOut,
    StyleOut,
    StylePatch,
    StyleQuery,
    StyleUploadFields,
    TemplateOut,
    TemplatePatch,
    TemplateQuery,
    TemplateUploadFields,
    UserOut,
    UserQuery,
    WebhookIn,
    WebhookOut,
)
from db.models import Job, Style, Template, User, WebhookEndpoint
from db.repositories.audit import AuditRepository
from db.repositories.broadcasts import BroadcastRepository
from db.repositories.jobs import JobRepository
from db.repositories.styles import StyleRepository
from db.repositories.templates import TemplateRepository
from db.repositories.users import UserRepository
from db.repositories.webhooks import WebhookDeliveryRepository, WebhookEndpointRepository
from service import admin
from service.errors import NotFound
from service.settings import AppConfig
from tasks.broadcast import cancel_broadcast, create_broadcast, progress
from tasks.dispatch import dispatch_job
from tasks.webhooks import check_events, enqueue_deliveries, take_emitted

logger = logging.getLogger(__name__)

TELEGRAM_ID_BOUNDS = {"telegram_id": (1, INT64_MAX)}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
LORA_TYPES = ("application/octet-stream",)


async def _publish(what: str, fn: Callable[..., object], *args: Any) -> None:
    """Publish to the broker off the loop; if it is down, the committed row waits for the sweep."""
    try:
        await asyncio.to_thread(fn, *args)
    except KombuOperationalError as exc:
        logger.warning("could not publish %s (the sweep re-sends it): %s", what, exc)


def _page(model: type[BaseModel], rows: Sequence[Any], total: int, q: PageQuery) -> Any:
    return Page[model](  # type: ignore[valid-type]
        items=[model.model_validate(r) for r in rows], total=total, limit=q.limit, offset=q.offset
    )


# ---- stats and audit ----


async def get_stats(call: Call) -> StatsOut:
    """Users, jobs, queue depth, durations and workers."""
    return StatsOut.model_validate(await call.db.run(admin.stats))


async def list_audit(call: Call) -> BaseModel:
    q = call.query_as(AuditQuery)

    def fetch(session: Session) -> Any:
        repo = AuditRepository(session)
        rows, total = repo.page(
            repo.query(action=q.action, actor=q.actor), limit=q.limit, offset=q.offset
        )
        return _page(AuditOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


# ---- users ----


def _user_or_404(session: Session, telegram_id: int) -> User:
    user = UserRepository(session).by_telegram_id(telegram_id)
    if user is None:
        raise NotFound(f"user {telegram_id} not found", telegram_id=telegram_id)
    return user


async def list_users(call: Call) -> BaseModel:
    q = call.query_as(UserQuery)

    def fetch(session: Session) -> Any:
        repo = UserRepository(session)
        stmt = repo.search(q.q)
        if q.banned is not None:
            stmt = stmt.where(User.is_banned.is_(q.banned))
        rows, total = repo.page(stmt, limit=q.limit, offset=q.offset)
        return _page(UserOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_user(call: Call) -> UserOut:
    telegram_id = call.path_int("telegram_id")
    return await call.db.run(lambda s: UserOut.model_validate(_user_or_404(s, telegram_id)))


async def ban_user(call: Call) -> UserOut:
    telegram_id = call.path_int("telegram_id")
    return await call.db.run(
        lambda s: UserOut.model_validate(admin.ban_user(s, telegram_id, call.actor))
    )


async def unban_user(call: Call) -> UserOut:
    telegram_id = call.path_int("telegram_id")
    return await call.db.run(
        lambda s: UserOut.model_validate(admin.unban_user(s, telegram_id, call.actor))
    )


async def set_user_quota(call: Call) -> UserOut:
    telegram_id = call.path_int("telegram_id")
    quota = call.body_as(QuotaIn).daily_quota
    return await call.db.run(
        lambda s: UserOut.model_validate(admin.set_quota(s, telegram_id, quota, call.actor))
    )


# ---- styles ----


async def list_styles(call: Call) -> BaseModel:
    q = call.query_as(StyleQuery)

    def fetch(session: Session) -> Any:
        repo = StyleRepository(session)
        stmt = repo.ordered(category=q.category, origin=q.origin)
        if q.enabled is not None:
            stmt = stmt.where(Style.enabled.is_(q.enabled))
        rows, total = repo.page(stmt, limit=q.limit, offset=q.offset)
        return _page(StyleOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_style(call: Call) -> StyleOut:
    style_id = call.path_int("style_id")
    return await call.db.run(lambda s: StyleOut.model_validate(StyleRepository(s).get(style_id)))


async def update_style(call: Call) -> StyleOut:
    style_id = call.path_int("style_id")
    patch = call.body_as(StylePatch)

    def run(session: Session) -> StyleOut:
        from service import styles

        style = StyleRepository(session).get(style_id)
        if patch.enabled is not None:
            styles.set_style_enabled(session, style_id, patch.enabled, actor=call.actor)
        if any(
            v is not None for v in (patch.names, patch.prompt, patch.lora_weight, patch.category)
        ):
            styles.update_style(
                session,
                style_id,
                actor=call.actor,
                names=dict(patch.names) if patch.names else None,
                prompt=patch.prompt,
                weight=patch.lora_weight,
                category=patch.category,
            )
        if patch.position is not None:
            styles.move_style(session, style_id, patch.position, actor=call.actor)
        return StyleOut.model_validate(style)

    return await call.db.run(run)


async def reorder_styles(call: Call) -> BaseModel:
    ids = call.body_as(OrderIn).ids

    def run(session: Session) -> BaseModel:
        from service import styles

        rows = styles.reorder_styles(session, ids, actor=call.actor)
        return Page[StyleOut](
            items=[StyleOut.model_validate(r) for r in rows],
            total=len(rows),
            limit=len(rows),
            offset=0,
        )

    result: BaseModel = await call.db.run(run)
    return result


async def delete_style(call: Call) -> None:
    style_id = call.path_int("style_id")

    def run(session: Session) -> None:
        from service import styles

        styles.delete_style(session, call.blobs, style_id, actor=call.actor)

    await call.db.run(run)


def _check_image(upload_type: str, data: bytes, what: str) -> None:
    """Cheap type check before decoding: declared type and magic bytes of JPEG/PNG/WebP."""
    magic_ok = (
        data.startswith(b"\xff\xd8\xff")
        or data.startswith(b"\x89PNG\r\n\x1a\n")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )
    if upload_type.split(";")[0].strip() not in (*IMAGE_TYPES, "application/octet-stream"):
        raise UnsupportedMediaType(f"{what} must be JPEG, PNG or WebP", content_type=upload_type)
    if not magic_ok:
        raise UnsupportedMediaType(f"{what} is not a JPEG, PNG or WebP file")


def _check_safetensors(filename: str, data: bytes) -> None:
    """A safetensors file starts with an 8-byte header length and a JSON header; no pickles."""
    if not filename.lower().endswith(".safetensors"):
        raise UnsupportedMediaType("the LoRA must be a .safetensors file", filename=filename)
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if header_len <= 0 or header_len > len(data) - 8 or data[8:9] != b"{":
        raise UnsupportedMediaType("the LoRA file is not in safetensors format")


async def upload_style(call: Call) -> StyleOut:
    fields = call.body_as(StyleUploadFields)
    lora = call.files["lora"]
    thumbnail = call.files.get("thumbnail")
    _check_safetensors(lora.filename, lora.data)
    if thumbnail is not None:
        _check_image(thumbnail.content_type, thumbnail.data, "thumbnail")

    def run(session: Session) -> StyleOut:
        from service import styles

        style = styles.add_uploaded_style(
            session,
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

    return await call.db.run(run)


# ---- templates ----


def _template_out(template: Template) -> TemplateOut:
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


def _template_page(rows: Sequence[Template], total: int, limit: int, offset: int) -> BaseModel:
    return Page[TemplateOut](
        items=[_template_out(t) for t in rows], total=total, limit=limit, offset=offset
    )


async def list_templates(call: Call) -> BaseModel:
    q = call.query_as(TemplateQuery)

    def fetch(session: Session) -> BaseModel:
        repo = TemplateRepository(session)
        stmt = repo.ordered()
        if q.enabled is not None:
            stmt = stmt.where(Template.enabled.is_(q.enabled))
        if q.category is not None:
            stmt = stmt.where(Template.category == q.category)
        rows, total = repo.page(stmt, limit=q.limit, offset=q.offset)
        return _template_page(rows, total, q.limit, q.offset)

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_template(call: Call) -> TemplateOut:
    template_id = call.path_int("template_id")
    return await call.db.run(lambda s: _template_out(TemplateRepository(s).get(template_id)))


async def update_template(call: Call) -> TemplateOut:
    template_id = call.path_int("template_id")
    patch = call.body_as(TemplatePatch)
    return await call.db.run(
        lambda s: _template_out(
            admin.update_template(
                s,
                template_id,
                call.actor,
                enabled=patch.enabled,
                position=patch.position,
                names=dict(patch.names) if patch.names else None,
                category=patch.category,
            )
        )
    )


async def reorder_templates(call: Call) -> BaseModel:
    ids = call.body_as(OrderIn).ids

    def run(session: Session) -> BaseModel:
        rows = admin.reorder_templates(session, ids, call.actor)
        return _template_page(rows, len(rows), len(rows), 0)

    result: BaseModel = await call.db.run(run)
    return result


async def _delete_blobs(call: Call, keys: list[str]) -> None:
    for key in keys:
        await asyncio.to_thread(call.blobs.delete, key)


async def delete_template(call: Call) -> None:
    template_id = call.path_int("template_id")
    keys = await call.db.run(admin.delete_template, template_id, call.actor)
    await _delete_blobs(call, keys)


async def upload_template(call: Call) -> TemplateOut:
    fields = call.body_as(TemplateUploadFields)
    image = call.files["image"]
    _check_image(image.content_type, image.data, "image")
    limits = call.config.limits
    analysed = await asyncio.to_thread(
        admin.analyse_template_image,
        image.data,
        max_bytes=limits.max_upload_bytes,
        max_pixels=limits.max_image_pixels,
    )
    return await call.db.run(
        lambda s: _template_out(
            admin.add_uploaded_template(
                s,
                call.blobs,
                analysed,
                names=fields.names(),
                category=fields.category,
                actor=call.actor,
                slug=fields.slug,
            )
        )
    )


# ---- jobs ----


async def list_jobs(call: Call) -> BaseModel:
    q = call.query_as(JobQuery)

    def fetch(session: Session) -> Any:
        repo = JobRepository(session)
        stmt = select(Job).order_by(Job.id.desc())
        if q.status is not None:
            stmt = stmt.where(Job.status == q.status)
        if q.kind is not None:
            stmt = stmt.where(Job.kind == q.kind)
        if q.user is not None:
            user_id = select(User.id).where(User.telegram_id == q.user).scalar_subquery()
            stmt = stmt.where(Job.user_id == user_id)
        rows, total = repo.page(stmt, limit=q.limit, offset=q.offset)
        return _page(JobOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_job(call: Call) -> JobOut:
    job_id = call.path_int("job_id")
    return await call.db.run(lambda s: JobOut.model_validate(JobRepository(s).get(job_id)))


async def cancel_job(call: Call) -> JobOut:
    job_id = call.path_int("job_id")

    def run(session: Session) -> tuple[JobOut, list[int]]:
        job = admin.cancel_job(session, job_id, call.actor)
        return JobOut.model_validate(job), take_emitted(session)

    job, deliveries = await call.db.run(run)
    await _publish("webhook deliveries", enqueue_deliveries, call.celery, deliveries)
    return job


async def retry_job(call: Call) -> JobOut:
    job_id = call.path_int("job_id")
    await call.db.run(admin.retry_job, job_id, call.actor)
    # Committed as queued first: if publishing fails, the outbox sweep re-sends it.
    await _publish(f"job {job_id}", dispatch_job, call.celery, call.db, job_id)
    return await call.db.run(lambda s: JobOut.model_validate(JobRepository(s).get(job_id)))


# ---- broadcasts ----


async def create_broadcast_route(call: Call) -> BroadcastOut:
    text = call.body_as(BroadcastIn).text
    out = await call.db.run(
        lambda s: BroadcastOut.model_validate(progress(create_broadcast(s, text, call.actor)))
    )
    await _publish(f"broadcast {out.id}", _send_broadcast_task, call.celery, out.id)
    return out


def _send_broadcast_task(celery: Celery, broadcast_id: int) -> None:
    celery.send_task("broadcast.send", args=[broadcast_id], queue="io")


async def list_broadcasts(call: Call) -> BaseModel:
    q = call.query_as(PageQuery)

    def fetch(session: Session) -> BaseModel:
        repo = BroadcastRepository(session)
        rows, total = repo.page(repo.query(), limit=q.limit, offset=q.offset)
        return Page[BroadcastOut](
            items=[BroadcastOut.model_validate(progress(b)) for b in rows],
            total=total,
            limit=q.limit,
            offset=q.offset,
        )

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_broadcast(call: Call) -> BroadcastOut:
    broadcast_id = call.path_int("broadcast_id")
    return await call.db.run(
        lambda s: BroadcastOut.model_validate(progress(BroadcastRepository(s).get(broadcast_id)))
    )


async def cancel_broadcast_route(call: Call) -> BroadcastOut:
    broadcast_id = call.path_int("broadcast_id")
    return await call.db.run(
        lambda s: BroadcastOut.model_validate(
            progress(cancel_broadcast(s, broadcast_id, call.actor))
        )
    )


# ---- outgoing webhooks ----


async def create_webhook(call: Call) -> WebhookOut:
    body = call.body_as(WebhookIn)
    events = check_events(list(body.events))

    def run(session: Session) -> WebhookOut:
        endpoint = WebhookEndpointRepository(session).add(
            WebhookEndpoint(url=body.url, secret=body.secret, events=events, enabled=body.enabled)
        )
        admin.audit(
            session,
            call.actor,
            "webhook.create",
            f"webhook:{endpoint.id}",
            url=body.url,
            events=events,
        )
        return WebhookOut.model_validate(endpoint)

    return await call.db.run(run)


async def list_webhooks(call: Call) -> BaseModel:
    q = call.query_as(PageQuery)

    def fetch(session: Session) -> Any:
        repo = WebhookEndpointRepository(session)
        rows, total = repo.page(repo.query(), limit=q.limit, offset=q.offset)
        return _page(WebhookOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


async def get_webhook(call: Call) -> WebhookOut:
    webhook_id = call.path_int("webhook_id")
    return await call.db.run(
        lambda s: WebhookOut.model_validate(WebhookEndpointRepository(s).get(webhook_id))
    )


async def delete_webhook(call: Call) -> None:
    webhook_id = call.path_int("webhook_id")

    def run(session: Session) -> None:
        repo = WebhookEndpointRepository(session)
        endpoint = repo.get(webhook_id)
        repo.delete(endpoint)
        admin.audit(
            session, call.actor, "webhook.delete", f"webhook:{webhook_id}", url=endpoint.url
        )

    await call.db.run(run)


async def list_deliveries(call: Call) -> BaseModel:
    webhook_id = call.path_int("webhook_id")
    q = call.query_as(DeliveryQuery)

    def fetch(session: Session) -> Any:
        WebhookEndpointRepository(session).get(webhook_id)
        repo = WebhookDeliveryRepository(session)
        stmt = repo.query(endpoint_id=webhook_id, status=q.status)
        rows, total = repo.page(stmt, limit=q.limit, offset=q.offset)
        return _page(DeliveryOut, rows, total, q)

    result: BaseModel = await call.db.run(fetch)
    return result


# ---- the document itself ----


async def get_openapi(call: Call) -> web.Response:
    return web.json_response(call.app[OPENAPI])


def api_routes(config: AppConfig) -> list[Route]:
    """The admin API's route table."""
    p = API_PREFIX
    max_image = config.limits.max_upload_bytes
    uid = TELEGRAM_ID_BOUNDS
    style_upload = Multipart(
        files=(
            FileField(
                "lora",
                "LoRA weights (.safetensors, Kohya or diffusers)",
                config.limits.max_lora_bytes,
                True,
                LORA_TYPES,
            ),
            FileField(
                "thumbnail", "Preview image (JPEG, PNG or WebP)", max_image, False, IMAGE_TYPES
            ),
        ),
        fields=StyleUploadFields,
    )
    template_upload = Multipart(
        files=(
            FileField(
                "image",
                "Template photo with 1+ faces (JPEG, PNG or WebP)",
                max_image,
                True,
                IMAGE_TYPES,
            ),
        ),
        fields=TemplateUploadFields,
    )
    return [
        Route("GET", f"{p}/openapi.json", get_openapi, "This OpenAPI document", "meta"),
        Route(
            "GET",
            f"{p}/stats",
            get_stats,
            "Users, jobs, queue depth, durations, workers",
            "stats",
            response=StatsOut,
        ),
        Route(
            "GET",
            f"{p}/audit",
            list_audit,
            "Audit log, newest first",
            "stats",
            query=AuditQuery,
            response=Page[AuditOut],
        ),
        Route(
            "GET",
            f"{p}/users",
            list_users,
            "List or search users",
            "users",
            query=UserQuery,
            response=Page[UserOut],
        ),
        Route(
            "GET",
            f"{p}/users/{{telegram_id}}",
            get_user,
            "One user",
            "users",
            response=UserOut,
            path_bounds=uid,
        ),
        Route(
            "POST",
            f"{p}/users/{{telegram_id}}/ban",
            ban_user,
            "Ban a user",
            "users",
            response=UserOut,
            path_bounds=uid,
        ),
        Route(
            "POST",
            f"{p}/users/{{telegram_id}}/unban",
            unban_user,
            "Lift a ban",
            "users",
            response=UserOut,
            path_bounds=uid,
        ),
        Route(
            "PUT",
            f"{p}/users/{{telegram_id}}/quota",
            set_user_quota,
            "Set the daily quota (null = default)",
            "users",
            body=QuotaIn,
            response=UserOut,
            path_bounds=uid,
        ),
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
            multipart=style_upload,
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
            multipart=template_upload,
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
        Route(
            "GET",
            f"{p}/jobs",
            list_jobs,
            "List jobs, newest first",
            "jobs",
            query=JobQuery,
            response=Page[JobOut],
        ),
        Route("GET", f"{p}/jobs/{{job_id}}", get_job, "One job", "jobs", response=JobOut),
        Route(
            "POST",
            f"{p}/jobs/{{job_id}}/cancel",
            cancel_job,
            "Cancel a queued or running job",
            "jobs",
            response=JobOut,
            errors=(409,),
        ),
        Route(
            "POST",
            f"{p}/jobs/{{job_id}}/retry",
            retry_job,
            "Re-queue a failed or cancelled job",
            "jobs",
            response=JobOut,
            errors=(409,),
        ),
        Route(
            "POST",
            f"{p}/broadcasts",
            create_broadcast_route,
            "Send a message to every user (throttled)",
            "broadcasts",
            body=BroadcastIn,
            response=BroadcastOut,
            status=202,
        ),
        Route(
            "GET",
            f"{p}/broadcasts",
            list_broadcasts,
            "List broadcasts",
            "broadcasts",
            query=PageQuery,
            response=Page[BroadcastOut],
        ),
        Route(
            "GET",
            f"{p}/broadcasts/{{broadcast_id}}",
            get_broadcast,
            "A broadcast's progress",
            "broadcasts",
            response=BroadcastOut,
        ),
        Route(
            "POST",
            f"{p}/broadcasts/{{broadcast_id}}/cancel",
            cancel_broadcast_route,
            "Stop a broadcast",
            "broadcasts",
            response=BroadcastOut,
            errors=(409,),
        ),
        Route(
            "POST",
            f"{p}/webhooks",
            create_webhook,
            "Register an outgoing webhook",
            "webhooks",
            body=WebhookIn,
            response=WebhookOut,
            status=201,
        ),
        Route(
            "GET",
            f"{p}/webhooks",
            list_webhooks,
            "List webhooks (secrets never shown)",
            "webhooks",
            query=PageQuery,
            response=Page[WebhookOut],
        ),
        Route(
            "GET",
            f"{p}/webhooks/{{webhook_id}}",
            get_webhook,
            "One webhook",
            "webhooks",
            response=WebhookOut,
        ),
        Route(
            "DELETE",
            f"{p}/webhooks/{{webhook_id}}",
            delete_webhook,
            "Delete a webhook",
            "webhooks",
            status=204,
        ),
        Route(
            "GET",
            f"{p}/webhooks/{{webhook_id}}/deliveries",
            list_deliveries,
            "A webhook's deliveries, newest first",
            "webhooks",
            query=DeliveryQuery,
            response=Page[DeliveryOut],
        ),
    ]
