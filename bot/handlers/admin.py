"""Admin commands (TELEGRAM_ADMIN_IDS only): /stats /ban /unban /quota /broadcast.

They call the same use cases as the admin web API (`domain.users`, `domain.stats`,
`domain.broadcasts`), so both write the audit log the same way; the actor is `tg:<telegram id>`."""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update

from bot.context import BotContext, message_of
from bot.handlers.common import reply
from domain import broadcasts, stats, users
from domain.audit import bot_actor

logger = logging.getLogger(__name__)


def _actor(context: BotContext) -> str:
    return bot_actor(context.account.telegram_id)


async def stats_command(update: Update, context: BotContext) -> None:
    """/stats: users, queue, run times, failures."""
    data: dict[str, Any] = await context.db.run(stats.stats)
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
    change = users.ban_user if op == "ban" else users.unban_user
    user = await context.db.run(change, args[0], _actor(context))
    await reply(update, context, context.t(f"admin.{op}_done", user=user.telegram_id))


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
    user = await context.db.run(users.set_quota, args[0], quota, _actor(context))
    shown = context.t("admin.quota_default") if quota is None else str(quota)
    await reply(update, context, context.t("admin.quota_done", user=user.telegram_id, quota=shown))


async def broadcast_command(update: Update, context: BotContext) -> None:
    """/broadcast <text>: queue a throttled message to every unbanned user."""
    parts = (message_of(update).text or "").split(maxsplit=1)
    body = parts[1].strip() if len(parts) == 2 else ""
    if not body:
        await reply(update, context, context.t("admin.broadcast_usage"))
        return
    broadcast = await context.transact(broadcasts.create_broadcast, body, _actor(context))
    await reply(
        update,
        context,
        context.nt("admin.broadcast_queued", broadcast.total, id=broadcast.id),
    )
