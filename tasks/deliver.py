"""io tasks that talk to Telegram: the result album and the live status message.

The album is sent, then the delivery is recorded on the job (`delivered_at`; the job's status,
its true outcome, never changes). Every Bot API call is throttled and retried in place
(`telegram_ui.client.TelegramLimiter`: 429s after the asked delay, requests that never went out,
and 5xx answers); when the result still cannot be sent, Celery retries the task with exponential
backoff and jitter a bounded number of times, but only when Telegram certainly did not get it. A
send that may have arrived is never repeated: /history has the result. Permanent refusals
(`BadRequest`, `Forbidden`, 413) end the delivery at once: recorded in `delivery_error`, and the
user is told in a new message. Photos are sent within Telegram's limits (`telegram_ui.media`)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from celery import Task, shared_task
from PIL import Image
from telegram import Bot, InputMediaPhoto
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from core.metrics import default_metrics
from db.models import JobKind, JobStatus
from domain import lifecycle, privacy
from domain.lifecycle import Delivery
from tasks.context import get_context
from tasks.jobs import Lease
from telegram_ui.client import (
    bulk_sends,
    may_have_reached_telegram,
    retry_after_seconds,
    too_large,
)
from telegram_ui.i18n import error_text, ntranslate, safety_alert_text, translate
from telegram_ui.keyboards import cancel_job_keyboard, result_keyboard
from telegram_ui.media import full_size_document, outgoing

logger = logging.getLogger(__name__)

# Retries of one delivery message on transient errors (backoff 2 s, 4 s, … with jitter); after
# that the sweep may send it again, up to `lifecycle.MAX_DELIVERY_ATTEMPTS` sends in all.
MAX_RETRIES = 5
TRANSIENT_ERRORS = (RetryAfter, TimedOut, NetworkError)
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
        "worker_lost",
    }
)
# Side of the "pose found" preview photo (the skeleton map is 512 px).
POSE_PREVIEW_SIDE = 320


def _snapshot(job_id: int) -> Delivery | None:
    return get_context().db.call(lifecycle.delivery, job_id)


def is_terminal(exc: TelegramError) -> bool:
    """Whether Telegram refused the request for good (repeating it cannot help)."""
    if isinstance(exc, BadRequest | Forbidden | InvalidToken):
        return True
    return isinstance(exc, NetworkError) and too_large(exc)


async def _edit_status(bot: Bot, d: Delivery, text: str, markup: Any = None) -> bool:
    """Edit the status message; False when there is none or it can no longer be edited."""
    if d.chat_id is None or d.status_message_id is None:
        return False
    try:
        await bot.edit_message_text(
            text, chat_id=d.chat_id, message_id=d.status_message_id, reply_markup=markup
        )
    except BadRequest as exc:
        if "not modified" in str(exc).lower():
            return True
        # Deleted by the user, or too old to edit.
        logger.debug("status edit for job %s skipped: %s", d.job_id, exc)
        return False
    return True


async def _notice(bot: Bot, d: Delivery, text: str) -> None:
    """A failure or cancel notice: in the status message, or a new message when it is gone."""
    if not await _edit_status(bot, d, text):
        assert d.chat_id is not None
        await bot.send_message(d.chat_id, text)


async def _follow_up(d: Delivery, call: Awaitable[Any]) -> None:
    """A call made after the result was sent: its failure must not send the result again."""
    try:
        await call
    except (RetryAfter, NetworkError) as exc:
        logger.warning("job %s: result sent, but a follow-up failed: %s", d.job_id, exc)


# One send call of an outcome: how to make it, and whether it is a follow-up (a call after the
# outcome itself, whose failure must not send the outcome again).
Step = tuple[Callable[[], Awaitable[Any]], bool]
# Records that the first n send calls returned; False once the delivery was taken over.
Recorder = Callable[[int], Awaitable[bool]]


def _result_steps(bot: Bot, d: Delivery) -> list[Step]:
    """The send calls of a finished job's outcome, in order: the outcome itself first (one call
    where Telegram allows it: an album is one sendMediaGroup), then its follow-ups."""
    ctx = get_context()
    lang = d.language
    assert d.chat_id is not None
    chat_id = d.chat_id
    steps: list[Step] = []
    if d.status is JobStatus.SUCCEEDED:
        images = [ctx.blobs.get(key) for key in d.result_blobs]
        if d.kind is JobKind.TRAINING:
            done = translate(lang, "training.done", name=d.meta.get("style_name", ""))
            steps.append((lambda: bot.send_message(chat_id, done), False))
        elif d.kind is JobKind.TEMPLATE and images:
            # A template keeps its size (up to 40 MP): a photo within Telegram's limits, and
            # the full-size file as a document.
            photo = outgoing(images[0]).photo
            document, suffix = full_size_document(images[0])
            filename = f"template-{d.job_id}.{suffix}"
            steps.append((lambda: bot.send_photo(chat_id, photo), False))
            steps.append((lambda: bot.send_document(chat_id, document, filename=filename), True))
        elif d.kind is JobKind.UPSCALE and images:
            # A document, not a photo: Telegram would shrink a photo to 1280 px and recompress.
            width, height = d.meta.get("size") or (0, 0)
            caption = translate(
                lang, "hd.caption", n=int(d.meta.get("index", 0)) + 1, width=width, height=height
            )
            hd_name = str(d.meta.get("filename") or f"hd-{d.job_id}.png")
            hd = images[0]
            steps.append(
                (lambda: bot.send_document(chat_id, hd, filename=hd_name, caption=caption), False)
            )
        elif images:
            prepared = [outgoing(img) for img in images[:10]]
            if len(prepared) == 1:
                steps.append((lambda: bot.send_photo(chat_id, prepared[0].photo), False))
            else:
                media = [InputMediaPhoto(p.photo) for p in prepared]
                steps.append((lambda: bot.send_media_group(chat_id, media), False))
            for n, p in enumerate(prepared, start=1):
                if p.document is not None:
                    name = f"result-{d.job_id}-{n}.{p.document_suffix}"
                    send = partial(bot.send_document, chat_id, p.document, filename=name)
                    steps.append((send, True))
        steps.append((lambda: _edit_status(bot, d, _done_text(d)), True))
        if d.kind is JobKind.PORTRAIT:
            markup = result_keyboard(d.job_id, d.style_id, lang, len(images))
            steps.append(
                (
                    lambda: bot.send_message(
                        chat_id, translate(lang, "job.next"), reply_markup=markup
                    ),
                    True,
                )
            )
    elif d.status is JobStatus.FAILED:
        failed = translate(lang, "job.failed", reason=error_text(lang, d.error_code))
        steps.append((lambda: _notice(bot, d, failed), False))
        steps.append((lambda: _alert_operator(bot, d), True))
    elif d.status is JobStatus.CANCELLED:
        steps.append((lambda: _notice(bot, d, _cancelled_text(d)), False))
    return steps


async def _send_result(bot: Bot, d: Delivery, record: Recorder | None = None) -> bool:
    """Make the outcome's send calls that a former delivery did not record (`d.step`), each
    recorded as soon as it returned, so a delivery taken over after a killed io worker never
    repeats a call that returned (docs/ARCHITECTURE.md, "Delivery lease"). False when this
    task lost the delivery lease meanwhile (the new owner sends the rest)."""
    for n, (send, follow_up) in enumerate(_result_steps(bot, d)):
        if n < d.step:
            continue
        if follow_up:
            await _follow_up(d, send())
        else:
            await send()
        if record is not None and not await record(n + 1):
            logger.warning("job %s: delivery taken over by another io task; stopping", d.job_id)
            return False
    return True


def _done_text(d: Delivery) -> str:
    """The status message of a succeeded job."""
    if d.kind is JobKind.TRAINING:
        return translate(d.language, "training.done", name=d.meta.get("style_name", ""))
    if d.kind is JobKind.UPSCALE:
        done = translate(d.language, "hd.done")
    else:
        done = ntranslate(d.language, "job.done", len(d.result_blobs))
    if d.meta.get("held_back"):
        # The safety checker dropped more candidates than there were spares.
        held_back = ntranslate(d.language, "job.held_back", d.meta["held_back"])
        done = f"{done}\n\n{held_back}"
    if d.meta.get("low_likeness"):
        # A set is never refused for likeness alone: it is sent, and the user gets a tip.
        tip = translate(d.language, "job.low_likeness")
        done = f"{done}\n\n{tip}"
    return done


def _final_text(d: Delivery) -> str | None:
    """The status message's last text once the job has ended (None while it is active)."""
    if d.status is JobStatus.SUCCEEDED:
        return _done_text(d)
    if d.status is JobStatus.FAILED:
        return translate(d.language, "job.failed", reason=error_text(d.language, d.error_code))
    if d.status is JobStatus.CANCELLED:
        return _cancelled_text(d)
    return None


def _cancelled_text(d: Delivery) -> str:
    """A cancelled job's notice: one stopped after a worker took it keeps its charge
    (`domain.billing.gives_back`), and the user is told so."""
    if d.started:
        return translate(d.language, "job.cancelled_after_start")
    return translate(d.language, "job.cancelled")


async def _alert_operator(bot: Bot, d: Delivery) -> None:
    """Tell the admin chat about failures only the operator can fix (weights, crashes)."""
    admin_chat = get_context().config.telegram.admin_chat_id
    if admin_chat is None or d.error_code not in OPERATOR_CODES:
        return
    detail = (d.error_detail or "")[:500]
    with bulk_sends():
        await bot.send_message(
            admin_chat, f"⚠️ job {d.job_id} ({d.kind.value}) failed: {d.error_code}\n{detail}"
        )


async def _tell_undeliverable(bot: Bot, d: Delivery) -> None:
    assert d.chat_id is not None
    await bot.send_message(d.chat_id, translate(d.language, "job.undeliverable"))


def _with_bot(coro_fn: Any, d: Delivery) -> None:
    """Run `coro_fn(bot, d)` on this process's one Bot, cut off at the io time limit."""
    get_context().call_telegram(lambda bot: coro_fn(bot, d))


@shared_task(
    name="delivery.send_result",
    bind=True,
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    dont_autoretry_for=(BadRequest,),
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)
def send_result(self: Task, job_id: int) -> str:
    """Send a finished job's outcome to its chat, once; record the delivery on the job."""
    ctx = get_context()
    db = ctx.db
    if db.call(privacy.discard_detached_job, ctx.blobs, job_id):
        # The user ran /forget while it ran: what it produced is deleted, nothing is sent.
        return "discarded"
    # The task id survives Celery's own retries: a retry takes its own lease back.
    owner = f"{self.request.hostname or 'io'}:{self.request.id or job_id}"
    lease = timedelta(seconds=ctx.config.broker.delivery_lease_seconds)
    d = db.call(lifecycle.start_delivery, job_id, owner, lease)
    if d is None:
        return "missing"
    if d.done:
        return "already delivered"
    if d.busy:
        return "being delivered"
    if d.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return "not finished"
    if d.chat_id is not None:

        async def record(step: int) -> bool:
            return await asyncio.to_thread(
                db.call, lifecycle.record_delivery_step, job_id, owner, step
            )

        try:
            # The heartbeat keeps the lease while Telegram is slow or asks to wait; a killed
            # worker stops renewing it, and the sweep sends the rest once it expired.
            with Lease(ctx, job_id, owner, length=lease, renew_fn=lifecycle.renew_delivery):
                completed = ctx.call_telegram(lambda bot: _send_result(bot, d, record))
            if completed is False:
                return "taken over"
        except TelegramError as exc:
            _count_error(exc)
            if is_terminal(exc):
                db.call(lifecycle.mark_undeliverable, job_id, f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, Forbidden | InvalidToken):
                    _tell_user_undeliverable(d)
                return "undeliverable"
            if isinstance(exc, NetworkError) and may_have_reached_telegram(exc):
                # Sending it again could show the album twice; /history has it if it is lost.
                logger.warning(
                    "job %s: the result may have reached the chat (%s); not resent", job_id, exc
                )
            else:
                # Transient (429, 5xx, not sent): Celery retries with backoff and jitter.
                if isinstance(exc, RetryAfter):
                    logger.warning(
                        "job %s: Telegram asks to wait %.0f s", job_id, retry_after_seconds(exc)
                    )
                raise
    db.call(lifecycle.mark_delivered, job_id)
    return "delivered"


def _count_error(exc: TelegramError) -> None:
    """Count a failed result send by what happens next (`facechain_delivery_errors_total`)."""
    if is_terminal(exc):
        reason = "undeliverable"
    elif isinstance(exc, NetworkError) and may_have_reached_telegram(exc):
        reason = "maybe_delivered"
    elif isinstance(exc, RetryAfter):
        reason = "rate_limited"
    else:
        reason = "retried"
    default_metrics().record_delivery_error(reason)


def _tell_user_undeliverable(d: Delivery) -> None:
    """One new message saying the result could not be sent (best effort)."""
    try:
        _with_bot(_tell_undeliverable, d)
    except TelegramError as exc:
        logger.info("job %s: could not tell the chat about the failed delivery: %s", d.job_id, exc)


async def _send_progress(bot: Bot, d: Delivery) -> None:
    lang = d.language
    if d.status is JobStatus.QUEUED:
        text = ntranslate(lang, "job.queued", max(1, d.position + 1), position=d.position + 1)
    elif d.status is JobStatus.RUNNING and d.kind is JobKind.UPSCALE:
        text = translate(lang, "hd.running", percent=round(d.progress * 100))
    elif d.status is JobStatus.RUNNING:
        text = translate(lang, "job.running", percent=round(d.progress * 100))
    else:
        return
    await _edit_status(bot, d, text, cancel_job_keyboard(d.job_id, lang))
    # The job may have ended while this edit was on its way, and the final edit may have landed
    # first: this edit finished before the row is read again, so if it shows the job ended, the
    # final text is put back (the final edit itself only happens after that row was committed).
    after = _snapshot(d.job_id)
    final = _final_text(after) if after is not None else None
    if after is not None and final is not None:
        await _edit_status(bot, after, final)


@shared_task(name="delivery.progress", bind=True, ignore_result=True)
def send_progress(self: Task, job_id: int) -> None:
    """Edit the status message with the job's progress (best effort, never retried long)."""
    d = _snapshot(job_id)
    if d is None or d.chat_id is None:
        return
    try:
        _with_bot(_send_progress, d)
    except (RetryAfter, TimedOut, NetworkError, Forbidden) as exc:
        # A later progress edit supersedes this one.
        default_metrics().record_delivery_error("progress_dropped")
        logger.debug("progress edit for job %s dropped: %s", job_id, exc)


def pose_preview_image(data: bytes, side: int = POSE_PREVIEW_SIDE) -> bytes:
    """A stored skeleton map shrunk to `side` px, as PNG bytes for sendPhoto."""
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    return buf.getvalue()


async def _send_preview(bot: Bot, chat_id: int, language: str, photo: bytes) -> None:
    await bot.send_photo(chat_id, photo, caption=translate(language, "pose.found"))


@shared_task(
    name="delivery.safety_alert",
    bind=True,
    acks_late=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=2,
    max_retries=MAX_RETRIES,
)
def send_safety_alert(self: Task, user_id: int, count: int, kind: str) -> str:
    """Tell the admin chat that one user's pictures were flagged repeatedly."""
    ctx = get_context()
    admin_chat = ctx.config.telegram.admin_chat_id
    if admin_chat is None:
        return "skipped"
    text = safety_alert_text(user_id, count, kind)
    ctx.call_telegram(lambda bot: bot.send_message(admin_chat, text))
    return "sent"


@shared_task(name="delivery.pose_preview", bind=True, ignore_result=True)
def send_pose_preview(self: Task, job_id: int) -> str:
    """Show the user the skeleton found in their pose photo (best effort, before the album)."""
    ctx = get_context()
    target = ctx.db.call(lifecycle.pose_preview, job_id)
    if target is None:
        return "skipped"
    photo = pose_preview_image(ctx.blobs.get(target.map_blob))
    try:
        ctx.call_telegram(lambda bot: _send_preview(bot, target.chat_id, target.language, photo))
    except (RetryAfter, TimedOut, NetworkError, Forbidden) as exc:
        # The portraits still come; a late preview is worth less than none.
        default_metrics().record_delivery_error("preview_dropped")
        logger.info("pose preview for job %s dropped: %s", job_id, exc)
        return "dropped"
    return "sent"
