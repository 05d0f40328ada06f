"""io tasks that talk to Telegram: the result album and the live status message.

The album is sent, then the job is marked delivered. Every Bot API call is throttled and retried
in place (`telegram_ui.client.TelegramLimiter`: 429s after the asked delay, requests that never
went out, and 5xx answers); when the result still cannot be sent, the task retries later, but
only when Telegram certainly did not get it. A send that may have arrived (the connection broke
after the request went out) is never repeated: the job counts as delivered and /history has the
result. Once the result is out, the follow-ups (status edit, "what next" buttons) never cause it
to be sent a second time."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable
from typing import Any

from celery import Task, shared_task
from PIL import Image
from telegram import Bot, InputMediaPhoto
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from db.models import JobKind, JobStatus
from domain import lifecycle
from domain.lifecycle import Delivery
from tasks.context import get_context
from telegram_ui.client import make_bot, may_have_reached_telegram, retry_after_seconds
from telegram_ui.i18n import error_text, translate
from telegram_ui.keyboards import cancel_job_keyboard, result_keyboard

logger = logging.getLogger(__name__)

MAX_RETRIES = 12
# Failures users cannot fix themselves: the admin chat hears about these.
OPERATOR_CODES = frozenset(
    {
        "internal",
        "weights_missing",
        "weights_invalid",
        "engine_unavailable",
        "style_lora_missing",
        "timed_out",
        "pose_annotator_missing",
    }
)
# Side of the "pose found" preview photo (the skeleton map is 512 px).
POSE_PREVIEW_SIDE = 320


def _snapshot(job_id: int) -> Delivery | None:
    return get_context().db.call(lifecycle.delivery, job_id)


async def _edit_status(bot: Bot, d: Delivery, text: str, markup: Any = None) -> None:
    if d.chat_id is None or d.status_message_id is None:
        return
    try:
        await bot.edit_message_text(
            text, chat_id=d.chat_id, message_id=d.status_message_id, reply_markup=markup
        )
    except BadRequest as exc:
        # "message is not modified" / deleted by the user: nothing to fix.
        logger.debug("status edit for job %s skipped: %s", d.job_id, exc)


async def _follow_up(d: Delivery, call: Awaitable[Any]) -> None:
    """A call made after the result was sent: its failure must not send the result again."""
    try:
        await call
    except (RetryAfter, NetworkError) as exc:
        logger.warning("job %s: result sent, but a follow-up failed: %s", d.job_id, exc)


async def _send_result(bot: Bot, d: Delivery) -> None:
    ctx = get_context()
    lang = d.language
    assert d.chat_id is not None
    if d.status is JobStatus.SUCCEEDED:
        images = [ctx.blobs.get(key) for key in d.result_blobs]
        if d.kind is JobKind.TRAINING:
            await bot.send_message(
                d.chat_id, translate(lang, "training.done", name=d.meta.get("style_name", ""))
            )
        elif d.kind is JobKind.TEMPLATE and images:
            await bot.send_photo(d.chat_id, images[0])
            await _follow_up(
                d,
                bot.send_document(d.chat_id, images[0], filename=f"template-{d.job_id}.png"),
            )
        elif d.kind is JobKind.UPSCALE and images:
            # A document, not a photo: Telegram would shrink a photo to 1280 px and recompress.
            width, height = d.meta.get("size") or (0, 0)
            await bot.send_document(
                d.chat_id,
                images[0],
                filename=str(d.meta.get("filename") or f"hd-{d.job_id}.png"),
                caption=translate(
                    lang,
                    "hd.caption",
                    n=int(d.meta.get("index", 0)) + 1,
                    width=width,
                    height=height,
                ),
            )
        elif len(images) == 1:
            await bot.send_photo(d.chat_id, images[0])
        elif images:
            await bot.send_media_group(d.chat_id, [InputMediaPhoto(img) for img in images[:10]])
        if d.kind is JobKind.UPSCALE:
            done = translate(lang, "hd.done")
        else:
            done = translate(lang, "job.done", count=len(images))
        if d.meta.get("low_likeness"):
            # A set is never refused for likeness alone: it is sent, and the user gets a tip.
            tip = translate(lang, "job.low_likeness")
            done = f"{done}\n\n{tip}"
        await _follow_up(d, _edit_status(bot, d, done))
        if d.kind is JobKind.PORTRAIT:
            await _follow_up(
                d,
                bot.send_message(
                    d.chat_id,
                    translate(lang, "job.next"),
                    reply_markup=result_keyboard(d.job_id, d.style_id, lang, len(images)),
                ),
            )
    elif d.status is JobStatus.FAILED:
        reason = error_text(lang, d.error_code)
        await _edit_status(bot, d, translate(lang, "job.failed", reason=reason))
        await _follow_up(d, _alert_operator(bot, d))
    elif d.status is JobStatus.CANCELLED:
        await _edit_status(bot, d, translate(lang, "job.cancelled"))


async def _alert_operator(bot: Bot, d: Delivery) -> None:
    """Tell the admin chat about failures only the operator can fix (weights, crashes)."""
    admin_chat = get_context().config.telegram.admin_chat_id
    if admin_chat is None or d.error_code not in OPERATOR_CODES:
        return
    detail = (d.error_detail or "")[:500]
    await bot.send_message(
        admin_chat, f"⚠️ job {d.job_id} ({d.kind.value}) failed: {d.error_code}\n{detail}"
    )


def _retry(task: Task, exc: Exception) -> None:
    if isinstance(exc, RetryAfter):
        delay = retry_after_seconds(exc) + 0.5
    else:
        delay = min(60.0, 2.0**task.request.retries)
    logger.warning("telegram %s; retrying in %.1fs", exc, delay)
    raise task.retry(exc=exc, countdown=delay, max_retries=MAX_RETRIES)


async def _with_bot(coro_fn: Any, d: Delivery) -> None:
    bot = make_bot(get_context().config.telegram)
    async with bot:
        await coro_fn(bot, d)


@shared_task(name="delivery.send_result", bind=True, acks_late=True)
def send_result(self: Task, job_id: int) -> str:
    """Send a finished job's outcome to its chat, once."""
    d = _snapshot(job_id)
    if d is None:
        return "missing"
    if d.status is JobStatus.DELIVERED:
        return "already delivered"
    if d.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return "not finished"
    if d.chat_id is not None:
        try:
            asyncio.run(_with_bot(_send_result, d))
        except Forbidden:
            logger.info("chat of job %s blocked the bot; result kept", job_id)
        except NetworkError as exc:
            if not may_have_reached_telegram(exc):
                _retry(self, exc)
            # Sending it again could show the album twice; /history has it if it is lost.
            logger.warning(
                "job %s: the result may have reached the chat (%s); not resent", job_id, exc
            )
        except RetryAfter as exc:
            _retry(self, exc)
    get_context().db.call(lifecycle.mark_delivered, job_id)
    return "delivered"


async def _send_progress(bot: Bot, d: Delivery) -> None:
    lang = d.language
    if d.status is JobStatus.QUEUED:
        text = translate(
            lang, "job.queued", position=d.position + 1, eta_minutes=max(1, d.position + 1)
        )
    elif d.status is JobStatus.RUNNING and d.kind is JobKind.UPSCALE:
        text = translate(lang, "hd.running", percent=round(d.progress * 100))
    elif d.status is JobStatus.RUNNING:
        text = translate(lang, "job.running", percent=round(d.progress * 100))
    else:
        return
    await _edit_status(bot, d, text, cancel_job_keyboard(d.job_id, lang))


@shared_task(name="delivery.progress", bind=True, ignore_result=True)
def send_progress(self: Task, job_id: int) -> None:
    """Edit the status message with the job's progress (best effort, never retried long)."""
    d = _snapshot(job_id)
    if d is None or d.chat_id is None:
        return
    try:
        asyncio.run(_with_bot(_send_progress, d))
    except (RetryAfter, TimedOut, NetworkError, Forbidden) as exc:
        # A later progress edit supersedes this one.
        logger.debug("progress edit for job %s dropped: %s", job_id, exc)


def pose_preview_image(data: bytes, side: int = POSE_PREVIEW_SIDE) -> bytes:
    """A stored skeleton map shrunk to `side` px, as PNG bytes for sendPhoto."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


async def _send_preview(chat_id: int, language: str, photo: bytes) -> None:
    bot = make_bot(get_context().config.telegram)
    async with bot:
        await bot.send_photo(chat_id, photo, caption=translate(language, "pose.found"))


@shared_task(name="delivery.pose_preview", bind=True, ignore_result=True)
def send_pose_preview(self: Task, job_id: int) -> str:
    """Show the user the skeleton found in their pose photo (best effort, before the album)."""
    ctx = get_context()
    target = ctx.db.call(lifecycle.pose_preview, job_id)
    if target is None:
        return "skipped"
    photo = pose_preview_image(ctx.blobs.get(target.map_blob))
    try:
        asyncio.run(_send_preview(target.chat_id, target.language, photo))
    except (RetryAfter, TimedOut, NetworkError, Forbidden) as exc:
        # The portraits still come; a late preview is worth less than none.
        logger.info("pose preview for job %s dropped: %s", job_id, exc)
        return "dropped"
    return "sent"
