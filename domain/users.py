"""Users: first contact and profile, bans and quotas (admins), language and subject choices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.errors import AmbiguousUser, NotFound, ValidationFailed
from db.models import User
from db.repositories.users import UserRepository
from domain.audit import audit

# Daily quotas above this are surely a typo (the column is a 32-bit integer).
MAX_QUOTA = 1_000_000


def storable(text: str | None) -> str | None:
    """Text as the database can keep it: PostgreSQL refuses NUL characters in strings."""
    return text.replace("\x00", "") if text else text


@dataclass(frozen=True)
class Contact:
    """The user's row after an update arrived, and whether to tell them of a ban (once)."""

    user: User
    tell_ban: bool


def touch(
    session: Session,
    telegram_id: int,
    username: str | None,
    first_name: str | None,
    language: str,
    *,
    can_tell: bool = True,
) -> Contact:
    """Create or refresh the user who just wrote; a banned user is told once, on the first
    update they can see an answer to (`can_tell`: not a payment update or a checkout)."""
    user = UserRepository(session).get_or_create(
        telegram_id,
        username=storable(username),
        first_name=storable(first_name),
        language=language,
    )
    tell = can_tell and user.is_banned and not user.ban_notified
    if tell:
        user.ban_notified = True
    session.flush()
    return Contact(user, tell)


def set_language(session: Session, user_id: int, language: str) -> None:
    """The user chose a language (kept over their client's from now on)."""
    user = session.get(User, user_id)
    if user is not None:
        user.language = language
        user.language_chosen = True


def set_subject(session: Session, user_id: int, subject: str | None) -> None:
    """Who the user's portraits show (None: decided from the selfie)."""
    user = session.get(User, user_id)
    if user is not None:
        user.subject = subject


def may_train(user: User, *, is_admin: bool, trainer_ids: Sequence[int]) -> bool:
    """Admins, configured trainers and users an admin allowed may train styles."""
    return is_admin or user.telegram_id in trainer_ids or bool(user.can_train)


# ---- administration ----


def resolve(session: Session, token: str) -> int:
    """A Telegram id from `12345` or `@username`; NotFound otherwise, and AmbiguousUser (with
    the candidates' ids) when several rows hold the name, rather than act on a former holder."""
    if token.lstrip("-").isdigit():
        return int(token)
    found = UserRepository(session).with_username(token.removeprefix("@"))
    if not found:
        raise NotFound(f"user {token} not found")
    if len(found) > 1:
        ids = ", ".join(str(i) for i in found)
        raise AmbiguousUser(f"several users have had {token}: {ids}", ids=ids)
    return int(found[0])


def by_telegram_id(session: Session, who: int | str) -> User:
    """The user with this Telegram id, or this `12345` / `@username` text (NotFound otherwise)."""
    telegram_id = resolve(session, who) if isinstance(who, str) else who
    user = UserRepository(session).by_telegram_id(telegram_id)
    if user is None:
        raise NotFound(f"user {telegram_id} not found", telegram_id=telegram_id)
    return user


def users_page(
    session: Session, *, query: str | None, banned: bool | None, limit: int, offset: int
) -> tuple[Sequence[User], int]:
    """Users matching a name or id fragment (and ban state), newest first, and the count."""
    repo = UserRepository(session)
    stmt = repo.search(query)
    if banned is not None:
        stmt = stmt.where(User.is_banned.is_(banned))
    rows, total = repo.page(stmt, limit=limit, offset=offset)
    return rows, total


def ban_user(session: Session, who: int | str, actor: str) -> User:
    """Ban a user by Telegram id or @username (they are told once, then ignored)."""
    user = by_telegram_id(session, who)
    telegram_id = user.telegram_id
    if not user.is_banned:
        user.is_banned = True
        user.ban_notified = False
    audit(session, actor, "user.ban", f"user:{telegram_id}")
    return user


def unban_user(session: Session, who: int | str, actor: str) -> User:
    """Lift a user's ban."""
    user = by_telegram_id(session, who)
    telegram_id = user.telegram_id
    user.is_banned = False
    user.ban_notified = False
    audit(session, actor, "user.unban", f"user:{telegram_id}")
    return user


def set_quota(session: Session, who: int | str, quota: int | None, actor: str) -> User:
    """Set a user's daily quota; None restores the configured default."""
    if quota is not None and not 0 <= quota <= MAX_QUOTA:
        raise ValidationFailed(f"quota must be between 0 and {MAX_QUOTA}", quota=quota)
    user = by_telegram_id(session, who)
    telegram_id = user.telegram_id
    previous = user.daily_quota
    user.daily_quota = quota
    audit(session, actor, "user.quota", f"user:{telegram_id}", quota=quota, previous=previous)
    return user
