"""Job buttons: Cancel on the status message; more like this / another style / use a pose
under results; and /history, which lists past jobs and sends their results again."""

from __future__ import annotations

import asyncio
import logging

from telegram import InputMediaPhoto, Message, Update

from bot.context import BotContext, chat_id_of
from bot.handlers.common import announce_and_dispatch, pressed_message, reply, start_portrait
from bot.handlers.styles import show_styles
from bot.handlers.template import show_templates, start_template
from db.models import JobKind
from domain import conversations, jobs
from telegram_ui import callbacks as cb
from telegram_ui.keyboards import HISTORY_PAGE, history_keyboard, result_keyboard

logger = logging.getLogger(__name__)


async def on_cancel_job(update: Update, context: BotContext, data: cb.CancelJob) -> None:
    """Cancel: a queued job stops now, a running one at its next step."""
    outcome = await context.transact(jobs.cancel_for_user, context.account.id, data.job_id)
    message = pressed_message(update)
    if outcome == jobs.CancelOutcome.CANCELLED:
        if message is not None:
            await message.edit_text(context.t("job.cancelled"))
        logger.info("user %s cancelled job %s", context.account.id, data.job_id)
    elif outcome == jobs.CancelOutcome.REQUESTED:
        if message is not None:
            await message.edit_text(context.t("job.cancelling"))
    elif outcome == jobs.CancelOutcome.FINISHED:
        await reply(update, context, context.t("job.already_finished"))
    else:
        await reply(update, context, context.t("callback.stale"))


async def on_more_like_this(update: Update, context: BotContext, data: cb.MoreLikeThis) -> None:
    """The same style (or template and faces) again, with a new seed."""
    facts = await context.db.run(jobs.job_facts, context.account.id, data.job_id)
    if facts is None:
        await reply(update, context, context.t("callback.stale"))
    elif facts.kind is JobKind.PORTRAIT and facts.style_id is not None:
        await start_portrait(update, context, facts.style_id)
    elif facts.kind is JobKind.TEMPLATE and facts.faces:
        await start_template(
            update,
            context,
            facts.faces,
            template_id=facts.template_id,
            template_photo_id=facts.template_photo_id,
        )
    else:
        await reply(update, context, context.t("callback.stale"))


async def on_another_style(update: Update, context: BotContext, data: cb.AnotherStyle) -> None:
    """Open the picker again (templates for a template job)."""
    facts = await context.db.run(jobs.job_facts, context.account.id, data.job_id)
    if facts is not None and facts.kind is JobKind.TEMPLATE:
        await show_templates(update, context)
    else:
        await show_styles(update, context)


async def on_use_pose(update: Update, context: BotContext, data: cb.UsePose) -> None:
    """Ask for a photo whose pose the next portrait copies."""
    facts = await context.db.run(jobs.job_facts, context.account.id, data.job_id)
    if facts is None or facts.style_id is None:
        await reply(update, context, context.t("callback.stale"))
        return
    await context.db.run(
        conversations.update,
        context.account.id,
        conversations.State.AWAIT_POSE,
        end_flow=True,
        pose_style_id=facts.style_id,
    )
    await reply(update, context, context.t("pose.send"))


async def on_upscale(update: Update, context: BotContext, data: cb.Upscale) -> None:
    """HD n: a ×4 PNG of one portrait (no free quota; PAYMENTS_PRICE_UPSCALE credits when
    payments are on; the one-active-job rule applies)."""
    created = await context.db.run(
        jobs.create_upscale_job,
        context.account.id,
        source_job_id=data.job_id,
        index=data.index,
        size=jobs.HD_SIZE,
        chat_id=chat_id_of(update),
        update_id=update.update_id,
        limits=context.config.limits,
        is_admin=context.is_admin,
        payments=context.config.payments,
    )
    logger.info(
        "user %s started HD job %s (job %s, #%s)",
        context.account.id,
        created.job_id,
        data.job_id,
        data.index + 1,
    )
    await announce_and_dispatch(update, context, created)


async def show_history(
    update: Update, context: BotContext, offset: int = 0, *, edit: Message | None = None
) -> None:
    """Send (or edit into) one page of the user's jobs, newest first."""
    rows, has_more = await context.db.run(
        jobs.history, context.account.id, context.language, offset, HISTORY_PAGE
    )
    if not rows and offset == 0:
        await reply(update, context, context.t("history.empty"))
        return
    lines = [context.t("history.title")]
    shows = []
    for n, row in enumerate(rows, start=offset + 1):
        lines.append(
            context.t(
                "history.row",
                n=n,
                date=row.created,
                kind=context.t(f"kind.{row.kind.value}"),
                title=row.title or "—",
                status=context.t(f"status.{row.status.value}"),
            )
        )
        if row.status in jobs.SHOWABLE and row.results:
            shows.append((n, row.job_id))
    markup = history_keyboard(shows, offset, has_more, context.language)
    text = "\n".join(lines)
    if edit is None:
        await reply(update, context, text, reply_markup=markup)
    else:
        await edit.edit_text(text, reply_markup=markup)


async def history_command(update: Update, context: BotContext) -> None:
    """/history."""
    await show_history(update, context)


async def on_history_page(update: Update, context: BotContext, data: cb.HistoryPage) -> None:
    """Newer / older."""
    await show_history(update, context, data.offset, edit=pressed_message(update))


async def on_history_show(update: Update, context: BotContext, data: cb.HistoryShow) -> None:
    """Send a past job's images again."""
    found = await context.db.run(jobs.job_results, context.account.id, data.job_id)
    if not found or not found.keys:
        await reply(update, context, context.t("callback.stale"))
        return
    images = [await asyncio.to_thread(context.blobs.get, key) for key in found.keys[:10]]
    chat_id = chat_id_of(update)
    if found.kind is JobKind.UPSCALE:
        # An HD result is a file, as first delivered (no recompression, no follow-up buttons).
        await context.bot.send_document(chat_id, images[0], filename=found.filename)
        return
    if len(images) == 1:
        await context.bot.send_photo(chat_id, images[0])
    else:
        await context.bot.send_media_group(chat_id, [InputMediaPhoto(i) for i in images])
    await reply(
        update,
        context,
        context.t("job.next"),
        reply_markup=result_keyboard(data.job_id, found.style_id, context.language, len(images)),
    )
