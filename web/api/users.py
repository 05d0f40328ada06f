"""Users: list and search, one user, ban, unban, daily quota."""

from __future__ import annotations

from pydantic import BaseModel

from domain import users
from web.api.common import page_of
from web.http import Call
from web.openapi import API_PREFIX, Route
from web.schemas import INT64_MAX, Page, QuotaIn, UserOut, UserQuery

TELEGRAM_ID_BOUNDS = {"telegram_id": (1, INT64_MAX)}


async def list_users(call: Call) -> BaseModel:
    q = call.query_as(UserQuery)
    rows, total = await call.db.run(
        users.users_page, query=q.q, banned=q.banned, limit=q.limit, offset=q.offset
    )
    return page_of(UserOut, rows, total, q)


async def get_user(call: Call) -> UserOut:
    user = await call.db.run(users.by_telegram_id, call.path_int("telegram_id"))
    return UserOut.model_validate(user)


async def ban_user(call: Call) -> UserOut:
    user = await call.db.run(users.ban_user, call.path_int("telegram_id"), call.actor)
    return UserOut.model_validate(user)


async def unban_user(call: Call) -> UserOut:
    user = await call.db.run(users.unban_user, call.path_int("telegram_id"), call.actor)
    return UserOut.model_validate(user)


async def set_user_quota(call: Call) -> UserOut:
    quota = call.body_as(QuotaIn).daily_quota
    user = await call.db.run(users.set_quota, call.path_int("telegram_id"), quota, call.actor)
    return UserOut.model_validate(user)


def routes() -> list[Route]:
    p = API_PREFIX
    uid = TELEGRAM_ID_BOUNDS
    return [
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
    ]
