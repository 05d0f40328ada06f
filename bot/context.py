"""The typed per-update context: services from `bot_data` plus the caller's user row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session
from telegram import CallbackQuery, Message, PreCheckoutQuery, Update
from telegram import User as TelegramUser
from telegram.ext import Application, CallbackContext, ExtBot

from domain.outbox import transact_async
from telegram_ui.i18n import normalize_language, ntranslate, translate

if TYPE_CHECKING:
    from bot.ratelimit import UpdateRateLimiter
    from core.blobstore import BlobStore
    from core.metrics import Metrics
    from core.safety import ImageScreen
    from core.settings import AppConfig
    from db.models import User
    from db.session import Database
    from domain.outbox import Publisher

DEPS_KEY = "deps"
P = ParamSpec("P")
T = TypeVar("T")


class MissingUpdatePart(RuntimeError):
    """A handler ran on an update without a part its registration guarantees (a wiring bug)."""


def require(value: T | None, what: str, update: Update) -> T:
    """`value`, which the handler's registration guarantees; a clear error if it is missing."""
    if value is None:
        raise MissingUpdatePart(f"update {update.update_id} has no {what}")
    return value


# PTB types the parts of an update as optional: an update carries one kind of event. The
# handlers' registration (bot/app.py) and the gate (bot/handlers/gate.py) guarantee the parts
# each handler reads, so handlers read them through these accessors instead of checking again.


def user_of(update: Update) -> TelegramUser:
    """The Telegram user who sent the update (the gate stops updates without one)."""
    return require(update.effective_user, "user", update)


def chat_id_of(update: Update) -> int:
    """The chat the update came from: a message's, or a pressed button's message's."""
    return require(update.effective_chat, "chat", update).id


def message_of(update: Update) -> Message:
    """The new message of a MessageHandler's update."""
    return require(update.effective_message, "message", update)


def query_of(update: Update) -> CallbackQuery:
    """The button press of a CallbackQueryHandler's update."""
    return require(update.callback_query, "callback query", update)


def pre_checkout_of(update: Update) -> PreCheckoutQuery:
    """The checkout question of a PreCheckoutQueryHandler's update."""
    return require(update.pre_checkout_query, "pre-checkout query", update)


@dataclass
class BotDeps:
    """Everything handlers need, built once in `build_application` (no module globals)."""

    config: AppConfig
    db: Database
    blobs: BlobStore
    publisher: Publisher
    metrics: Metrics
    rate_limiter: UpdateRateLimiter
    # Bounds CPU-heavy image work (decode, face detection, previews) to the cores we have.
    cpu_slots: asyncio.Semaphore
    # Telegram file_id of each blob already uploaded (thumbnails), so it is sent only once.
    file_ids: dict[str, str] = field(default_factory=dict)
    # monotonic time of the last error alert sent to the admin chat (throttling).
    last_admin_alert: float = 0.0
    # The upload safety checker (None: SAFETY_INPUTS=off).
    screen: ImageScreen | None = None


class BotContext(CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    """Per-update context exposing config, db and blobs, and the user's row."""

    def __init__(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        chat_id: int | None = None,
        user_id: int | None = None,
    ) -> None:
        super().__init__(application=application, chat_id=chat_id, user_id=user_id)
        # Filled by the gate handler (group -1) before any flow handler runs.
        self.loaded_account: User | None = None
        self.is_admin = False

    @property
    def account(self) -> User:
        """The caller's user row, which the gate loads before any flow handler runs."""
        if self.loaded_account is None:
            raise MissingUpdatePart("no user row loaded: the gate did not run for this update")
        return self.loaded_account

    @property
    def deps(self) -> BotDeps:
        deps: BotDeps = self.bot_data[DEPS_KEY]
        return deps

    @property
    def config(self) -> AppConfig:
        return self.deps.config

    @property
    def db(self) -> Database:
        return self.deps.db

    @property
    def blobs(self) -> BlobStore:
        return self.deps.blobs

    async def transact(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a use case in one transaction, then publish what it outboxed."""
        return await transact_async(self.db, self.deps.publisher, fn, *args, **kwargs)

    @property
    def language(self) -> str:
        """The language to answer in: the user's stored choice, else English."""
        return normalize_language(self.loaded_account.language if self.loaded_account else None)

    def t(self, key: str, **params: object) -> str:
        """Translate a key into the user's language."""
        return translate(self.language, key, **params)

    def nt(self, key: str, count: int, **params: object) -> str:
        """Translate a counted text into the user's language, in the plural form of `count`."""
        return ntranslate(self.language, key, count, **params)
