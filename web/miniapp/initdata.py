"""Telegram Mini App init data: validated exactly as Telegram documents it
(core.telegram.org/bots/webapps#validating-data-received-via-the-mini-app).

The client sends the raw query string Telegram gave the page (`tgWebAppData`) as
`Authorization: tma <initData>`. Its fields minus `hash`, sorted by key and joined as
`key=value` lines, form the data-check-string; the secret key is HMAC-SHA256 of the bot token
with the key "WebAppData"; `hash` must equal the hex HMAC-SHA256 of the data-check-string under
that secret (compared in constant time), and `auth_date` must not be older than the allowed
age. Only then is the `user` field trusted."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from core.errors import AppError

# Telegram signs at launch; a clock a little ahead of ours is not an attack.
CLOCK_SKEW_SECONDS = 60
# Init data is a few hundred bytes; anything much longer is not Telegram's.
MAX_INIT_DATA_CHARS = 8192


class InvalidInitData(AppError):
    """Missing, forged, stale or malformed init data (answered 401)."""

    code = "unauthorized"


@dataclass(frozen=True)
class InitData:
    """The user Telegram vouches for, and when it signed the launch."""

    user_id: int
    first_name: str | None
    username: str | None
    language_code: str | None
    auth_date: int


def secret_key(bot_token: str) -> bytes:
    """HMAC-SHA256 of the bot token under the key "WebAppData"."""
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def data_check_string(fields: dict[str, str]) -> str:
    """Every field but `hash`, sorted by key, as `key=value` lines."""
    return "\n".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "hash")


def sign(fields: dict[str, str], bot_token: str) -> str:
    """The `hash` Telegram computes for these fields (tests and tools build init data with it)."""
    return hmac.new(
        secret_key(bot_token), data_check_string(fields).encode(), hashlib.sha256
    ).hexdigest()


def _fields(raw: str) -> dict[str, str]:
    if not raw or len(raw) > MAX_INIT_DATA_CHARS:
        raise InvalidInitData("missing or oversized init data")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidInitData("malformed init data") from None
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise InvalidInitData("a field of the init data is repeated")
    return fields


def validate(raw: str, bot_token: str, *, max_age: int, now: float | None = None) -> InitData:
    """The init data's user, or InvalidInitData (forged, stale, malformed, no user)."""
    fields = _fields(raw)
    given = fields.get("hash", "")
    if not hmac.compare_digest(sign(fields, bot_token).encode(), given.encode()):
        raise InvalidInitData("init data signature mismatch")
    auth_date = fields.get("auth_date", "")
    if not auth_date.isascii() or not auth_date.isdigit():
        raise InvalidInitData("init data without auth_date")
    age = (time.time() if now is None else now) - int(auth_date)
    if age > max_age:
        raise InvalidInitData("init data expired; reopen the app")
    if age < -CLOCK_SKEW_SECONDS:
        raise InvalidInitData("init data from the future")
    try:
        user = json.loads(fields["user"])
    except (KeyError, ValueError):
        raise InvalidInitData("init data without a user") from None
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, int) or isinstance(user_id, bool) or user_id <= 0:
        raise InvalidInitData("init data without a user")
    if user.get("is_bot") is True:
        raise InvalidInitData("bots cannot use the Mini App")

    def text(name: str) -> str | None:
        value = user.get(name)
        return value if isinstance(value, str) else None

    return InitData(
        user_id=user_id,
        first_name=text("first_name"),
        username=text("username"),
        language_code=text("language_code"),
        auth_date=int(auth_date),
    )


def build(
    bot_token: str, user: dict[str, object], *, auth_date: int | None = None, **extra: str
) -> str:
    """Signed init data for this user, as Telegram would put it in the launch URL (for tests,
    tools and local development with a known token)."""
    from urllib.parse import urlencode

    fields = {
        "user": json.dumps(user, separators=(",", ":"), ensure_ascii=False),
        "auth_date": str(int(time.time()) if auth_date is None else auth_date),
        **extra,
    }
    fields["hash"] = sign(fields, bot_token)
    return urlencode(fields)
