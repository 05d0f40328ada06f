"""Admin commands (TELEGRAM_ADMIN_IDS only): /stats /ban /unban /quota /broadcast.

They call the same `service.admin` operations as the admin web API, so both write the audit
log the same way; the actor is `tg:<telegram id>`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from telegram import Update

from bot.context import BotContext
from bot.handlers.common import reply
from db.models import User
from service import admin
from service.errors import NotFound
from tasks.broadcast import create_broadcast
from tasks.dispatch import send_io

logger = logging.getLogger(__name__)


def _actor(context: BotContext) -> str:
    return f"tg:{context.account.telegram_id}"


def _resolve(session: Session, token: str) -> int:
    """A Telegram id from `12345` or `@username`; NotFound otherwise."""
    if token.lstrip("-").isdigit():
        return int(token)
    name = token.removeprefix("@").lower()
    telegram_id = session.scalar(select(User.telegram_id).where(func.lower(User.username) == name))
    if telegram_id is None:
        raise NotFound(f"user {token} not found")
    return int(telegram_id)


async def stats_command(update: Update, context: BotContext) -> None:
    """/stats: users, queue, run times, failures."""
    data: dict[str, Any] = await context.db.run(admin.stats)
    durations = data["durations_24h"]
    avg = durations["avg_seconds"]
    p95 = durations["p95_seconds"]
    failures = ", ".join(f"{k}: {v}" for k, v in sorted(data["failures_by_code"].items())) or "—"
    text = context.t(
        "admin.stats",
        users=data["users"]["total"],
        active=data["users"]["active_24h"],
        banned=data["users"]["banned"],
        queued=data["queue_depth"],
        running=data["running"],
        done=durations["count"],
        avg="—" if avg is None else f"{avg:.1f}",
        p95="—" if p95 is None else f"{p95:.1f}",
        failures=failures,
        workers=len(data["workers_seen"]),
    )
    await reply(update, context, text)


async def _user_command(update: Update, context: BotContext, op: str) -> None:
    args = context.args or []
    if len(args) != 1:
        await reply(update, context, context.t(f"admin.{op}_usage"))
        return

    def run(session: Session) -> int:
        telegram_id = _resolve(session, args[0])
        fn = admin.ban_user if op == "ban" else admin.unban_user
        fn(session, telegram_id, _actor(context))
        return telegram_id

    telegram_id = await context.db.run(run)
    await reply(update, context, context.t(f"admin.{op}_done", user=telegram_id))


async def ban_command(update: Update, context: BotContext) -> None:
    """/ban <id|@username>."""
    await _user_command(update, context, "ban")


async def unban_command(update: Update, context: BotContext) -> None:
    """/unban <id|@username>."""
    await _user_command(update, context, "unban")


async def quota_command(update: Update, context: BotContext) -> None:
    """/quota <id|@username> <n|default>."""
    args = context.args or []
    if len(args) != 2 or not (args[1].isdigit() or args[1] == "default"):
        await reply(update, context, context.t("admin.quota_usage"))
        return
    quota = None if args[1] == "default" else int(args[1])

    def run(session: Session) -> int:
        telegram_id = _resolve(session, args[0])
        admin.set_quota(session, telegram_id, quota, _actor(context))
        return telegram_id

    telegram_id = await context.db.run(run)
    shown = context.t("admin.quota_default") if quota is None else str(quota)
    await reply(update, context, context.t("admin.quota_done", user=telegram_id, quota=shown))


async def broadcast_command(update: Update, context: BotContext) -> None:
    """/broadcast <text>: queue a throttled message to every unbanned user."""
    parts = (update.effective_message.text or "").split(maxsplit=1)
    body = parts[1].strip() if len(parts) == 2 else ""
    if not body:
        await reply(update, context, context.t("admin.broadcast_usage"))
        return
    broadcast = await context.db.run(create_broadcast, body, _actor(context))
    await asyncio.to_thread(send_io, context.celery, "broadcast.send", broadcast.id)
    await reply(
        update,
        context,
        context.t("admin.broadcast_queued", id=broadcast.id, total=broadcast.total),
    )
