"""Users and conversation sessions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from db.base import utcnow
from db.models import User, UserSession
from db.repositories.base import RepositoryBase


def broadcast_audience() -> ColumnElement[bool]:
    """Who gets broadcasts: unbanned users, except those who ran /forget and have not written
    to the bot since (a returning user is an audience member again)."""
    return and_(
        User.is_banned.is_(False),
        or_(
            User.forgotten_at.is_(None),
            and_(User.last_seen_at.is_not(None), User.last_seen_at > User.forgotten_at),
        ),
    )


class UserRepository(RepositoryBase[User]):
    model = User

    def by_telegram_id(self, telegram_id: int) -> User | None:
        return self.session.scalar(select(User).where(User.telegram_id == telegram_id))

    def get_or_create(
        self,
        telegram_id: int,
        *,
        username: str | None = None,
        first_name: str | None = None,
        language: str | None = None,
    ) -> User:
        """The user with this Telegram id, created on first contact; profile fields refreshed."""
        user = self.by_telegram_id(telegram_id)
        if user is None:
            user = User(telegram_id=telegram_id, language=language or "en")
            try:
                with self.session.begin_nested():
                    self.session.add(user)
            except IntegrityError:
                # Another process created it concurrently.
                user = self.by_telegram_id(telegram_id)
                assert user is not None
        if username != user.username:
            self.take_username(user, username)
        user.first_name = first_name or user.first_name
        if language and not user.language_chosen:
            user.language = language
        user.last_seen_at = utcnow()
        return user

    def take_username(self, user: User, username: str | None) -> None:
        """Give `user` this username (None: they have none now), clearing it from any other
        row: Telegram usernames are unique and case-insensitive, and a name a user dropped or
        changed may be someone else's now."""
        if username:
            self.session.execute(
                update(User)
                .where(func.lower(User.username) == username.lower(), User.id != user.id)
                .values(username=None)
                .execution_options(synchronize_session="fetch")
            )
        user.username = username

    def with_username(self, username: str) -> Sequence[int]:
        """Telegram ids of the users holding this username (case-insensitive), oldest first."""
        return self.session.scalars(
            select(User.telegram_id)
            .where(func.lower(User.username) == username.lower())
            .order_by(User.id)
        ).all()

    def search(self, query: str | None):  # type: ignore[no-untyped-def]
        """A select of users matching a username/name/id fragment, newest first."""
        stmt = select(User).order_by(User.id.desc())
        if query:
            like = f"%{query}%"
            conds: list[ColumnElement[bool]] = [
                User.username.ilike(like),
                User.first_name.ilike(like),
            ]
            if query.isascii() and query.isdigit():
                conds.append(User.telegram_id == int(query))
            stmt = stmt.where(or_(*conds))
        return stmt

    def all_active_ids(self, after_id: int, limit: int) -> Sequence[tuple[int, int]]:
        """(id, telegram_id) of the broadcast audience with id > after_id, in id order."""
        rows = self.session.execute(
            select(User.id, User.telegram_id)
            .where(User.id > after_id, broadcast_audience())
            .order_by(User.id)
            .limit(limit)
        ).all()
        return [(r[0], r[1]) for r in rows]


class UserSessionRepository(RepositoryBase[UserSession]):
    model = UserSession

    def load(self, user_id: int) -> UserSession:
        """The user's conversation state, created idle if absent."""
        row = self.session.get(UserSession, user_id)
        if row is None:
            row = UserSession(user_id=user_id, state="idle", data={})
            self.session.add(row)
            self.session.flush()
        return row

    def save(self, row: UserSession, state: str, data: dict[str, Any]) -> None:
        row.state = state
        row.data = dict(data)
        row.updated_at = utcnow()
        self.session.flush()
