"""Fixtures for bot tests: the fake Bot API server, a committed database, a real Celery app on
the in-memory broker, and a harness that runs the real Application with long polling."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from PIL import Image
from sqlalchemy.orm import Session
from telegram.ext import Application

from bot.app import build_application
from core.blobstore import LocalBlobStore
from core.metrics import Metrics, create_metrics
from core.safety import ImageScreen, LocalScreen
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    EngineSettings,
    LimitsSettings,
    MiniAppSettings,
    PaymentsSettings,
    StorageSettings,
    TelegramSettings,
)
from db.models import BaseModelName, Style, StyleOrigin, User
from db.session import Database
from tasks.celery_app import create_celery
from tasks.dispatch import CeleryPublisher
from tests.utils.fake_safety import tiny_checker
from tests.utils.fake_telegram import TOKEN, FakeTelegram, running_bot

ADMIN_ID = 990001
ROOT_DIR = Path(__file__).resolve().parents[2]
FACES = ROOT_DIR / "tests" / "fixtures" / "faces"


def make_config(
    tg: FakeTelegram,
    database_url: str,
    tmp_path: Path,
    *,
    broker_url: str = "memory://",
    payments: PaymentsSettings | None = None,
    miniapp_url: str | None = None,
    **limits: Any,
) -> AppConfig:
    """A config pointing at the fake server, the test database and a broker (in-memory)."""
    return AppConfig(
        telegram=TelegramSettings(
            token=TOKEN,
            api_base_url=tg.api_base_url,
            file_base_url=tg.file_base_url,
            admin_ids=[ADMIN_ID],
            admin_chat_id=ADMIN_ID,
        ),
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url=broker_url),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),
        engine=EngineSettings(profile="tiny", num_images=2),
        limits=LimitsSettings(**limits),
        payments=payments or PaymentsSettings(),
        miniapp=MiniAppSettings(url=miniapp_url),
    )


def published(celery: Celery, queue: str = "gpu") -> list[tuple[str, list[Any]]]:
    """(task name, args) of the messages waiting on a queue of the in-memory broker."""
    out = []
    with Connection(celery.conf.broker_url) as conn, conn.SimpleQueue(queue) as q:
        while True:
            try:
                message = q.get(block=False)
            except q.Empty:
                return out
            args = message.payload[0] if isinstance(message.payload, list | tuple) else []
            out.append((message.headers["task"], list(args)))
            message.ack()


def thumbnail(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    return buf.getvalue()


def seed_styles(session: Session, blobs: LocalBlobStore) -> list[int]:
    """Three styles in two categories; the last has no thumbnail (placeholder card)."""
    rows = [
        ("armor", {"en": "Armor", "ru": "Доспехи", "zh": "盔甲风"}, "fantasy", (200, 40, 40)),
        ("elf", {"en": "Elf", "ru": "Эльф", "zh": "精灵"}, "fantasy", (40, 200, 40)),
        ("autumn", {"en": "Autumn", "ru": "Осень", "zh": "秋天"}, "seasonal", None),
    ]
    ids = []
    for position, (slug, names, category, colour) in enumerate(rows):
        style = Style(
            slug=slug,
            names=names,
            category=category,
            base_model=BaseModelName.MAJIC,
            prompt=f"{slug} portrait",
            origin=StyleOrigin.CATALOG,
            position=position,
            thumbnail_blob=blobs.put(thumbnail(colour)) if colour else None,
        )
        session.add(style)
        session.flush()
        ids.append(style.id)
    return ids


@dataclass
class BotHarness:
    """The real Application wired to the fake server, a committed DB and Celery."""

    tg: FakeTelegram
    db: Database
    blobs: LocalBlobStore
    database_url: str
    tmp_path: Path
    limits: dict[str, Any] = field(default_factory=dict)
    # A Redis URL when a real worker consumes the jobs (end-to-end tests).
    broker_url: str = "memory://"
    config: AppConfig | None = None
    # Telegram Stars settings (payments off unless a test turns them on).
    payments: PaymentsSettings | None = None
    # MINIAPP_URL (None: no Mini App buttons).
    miniapp_url: str | None = None
    celery: Celery | None = None
    app: Application[Any, Any, Any, Any, Any, Any] | None = None
    style_ids: list[int] = field(default_factory=list)
    # This bot's own counters (the process-wide ones are shared by every test).
    metrics: Metrics = field(default_factory=create_metrics)
    # The upload safety checker, run in this process (default: the tiny one, never flags).
    checker: Any = None
    _runner: Any = None

    def _screen(self, config: AppConfig) -> ImageScreen | None:
        if config.safety.inputs == "off":
            return None
        return LocalScreen(self.checker if self.checker is not None else tiny_checker())

    async def start(self, **limits: Any) -> Application[Any, Any, Any, Any, Any, Any]:
        """Build and run a fresh Application (same DB, blobs and broker as before)."""
        self.limits.update(limits)
        self.config = make_config(
            self.tg,
            self.database_url,
            self.tmp_path,
            broker_url=self.broker_url,
            payments=self.payments,
            miniapp_url=self.miniapp_url,
            **self.limits,
        )
        if self.celery is None:
            self.celery = create_celery(self.config)
            if self.broker_url.startswith("memory://"):
                # The in-memory broker is shared by the whole process: start from empty queues.
                for queue in ("gpu", "io"):
                    published(self.celery, queue)
        publisher = CeleryPublisher(self.celery, self.db)
        self.app = build_application(
            self.config,
            self.db,
            self.blobs,
            publisher,
            metrics=self.metrics,
            screen_factory=self._screen,
        )
        self._runner = running_bot(self.app)
        await self._runner.__aenter__()
        return self.app

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.__aexit__(None, None, None)

    async def restart(self, **limits: Any) -> None:
        """Stop this bot process and start a new one: nothing in memory survives."""
        await self.stop()
        await self.start(**limits)

    def user_row(self, telegram_id: int) -> User | None:
        with self.db.session() as s:
            from sqlalchemy import select

            return s.scalar(select(User).where(User.telegram_id == telegram_id))


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def harness(
    tg: FakeTelegram,
    committed_db: Database,
    blobs: LocalBlobStore,
    database_url: str,
    tmp_path: Path,
) -> AsyncIterator[BotHarness]:
    """A harness with styles seeded; the bot is not started (call `await harness.start()`)."""
    h = BotHarness(tg, committed_db, blobs, database_url, tmp_path)
    with committed_db.session() as session:
        h.style_ids = seed_styles(session, blobs)
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def bot(harness: BotHarness) -> BotHarness:
    """A running bot with default limits."""
    await harness.start()
    return harness


@pytest.fixture
def face_bytes() -> Any:
    def read(name: str) -> bytes:
        return (FACES / name).read_bytes()

    return read


def give_selfie(
    harness: BotHarness, telegram_id: int, name: str = "man_pose1.png", **user: Any
) -> tuple[int, int]:
    """A user (created if new) with a stored selfie, without going through the chat."""
    from sqlalchemy import select

    from tests.utils.factories import make_selfie, make_user

    with harness.db.session() as s:
        row = s.scalar(select(User).where(User.telegram_id == telegram_id))
        if row is None:
            row = make_user(s, telegram_id, **user)
        photo = make_selfie(s, harness.blobs, row, name)
        return row.id, photo.id


def jobs_of(harness: BotHarness, telegram_id: int) -> list[Any]:
    """The user's jobs, oldest first (detached rows)."""
    from sqlalchemy import select

    from db.models import Job

    with harness.db.session() as s:
        row = s.scalar(select(User).where(User.telegram_id == telegram_id))
        if row is None:
            return []
        return list(s.scalars(select(Job).where(Job.user_id == row.id).order_by(Job.id)))
