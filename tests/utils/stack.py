"""The whole service for end-to-end, fault and load tests: the fake Bot API server, the real bot
(in this process, long polling), real `facechain-bot worker` processes on the tiny profile, one
database and one blob folder shared by all of them.

Everything here is async-friendly: waiting polls with `asyncio.sleep`, so the fake server in the
same event loop keeps answering the bot and the workers while a test waits."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import select
from telegram.ext import Application

from core.blobstore import LocalBlobStore
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    EngineSettings,
    LimitsSettings,
    StorageSettings,
    TelegramSettings,
)
from db.models import BaseModelName, Job, Photo, Style, StyleOrigin, User
from db.session import Database
from tasks.celery_app import create_celery
from tests.utils.fake_telegram import TOKEN, ApiCall, FakeTelegram, running_bot
from tests.utils.workers import CliProcess, WorkerProcess

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
FACES = ROOT / "tests" / "fixtures" / "faces"
# Two styles are enough for the carousel (◀ ▶ wrap) and for "Use this style".
STYLES = (
    ("e2e-armor", {"en": "Armor", "ru": "Доспехи", "zh": "盔甲风"}, "fantasy", (180, 60, 60)),
    ("e2e-autumn", {"en": "Autumn", "ru": "Осень", "zh": "秋天"}, "seasonal", (200, 150, 40)),
)
ALBUM_METHODS = ("sendMediaGroup", "sendPhoto", "sendDocument")


def face(name: str) -> bytes:
    """Bytes of a fixture portrait or the group photo."""
    return (FACES / name).read_bytes()


def _thumbnail(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 96), colour).save(buf, "PNG")
    return buf.getvalue()


def seed_styles(db: Database, blobs: LocalBlobStore) -> list[int]:
    """Catalog-like styles that use the default style LoRA (nothing to download)."""
    ids = []
    with db.session() as session:
        for position, (slug, names, category, colour) in enumerate(STYLES):
            existing = session.scalar(select(Style).where(Style.slug == slug))
            if existing is not None:
                ids.append(existing.id)
                continue
            style = Style(
                slug=slug,
                names=names,
                category=category,
                base_model=BaseModelName.FILM,
                prompt=f"{slug} portrait, simple background",
                prompt_template="cloth",
                lora_weight=0.35,
                origin=StyleOrigin.CATALOG,
                position=position,
                thumbnail_blob=blobs.put(_thumbnail(colour)),
            )
            session.add(style)
            session.flush()
            ids.append(style.id)
    return ids


def service_env(
    tg: FakeTelegram,
    *,
    database_url: str,
    broker_url: str,
    data_dir: Path,
    **extra: str,
) -> dict[str, str]:
    """Environment of every process of the stack (workers read it; the bot gets `config`)."""
    env = {
        "DATA_DIR": str(data_dir),
        "STORAGE_BLOB_DIR": str(data_dir / "blobs"),
        "ENGINE_MODELS_DIR": str(data_dir / "models"),
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "ENGINE_PROFILE": "tiny",
        "ENGINE_DEVICE": "cpu",
        "ENGINE_NUM_IMAGES": "2",
        # One candidate more than the album holds, so ranking runs end to end.
        "ENGINE_NUM_CANDIDATES": "3",
        "TELEGRAM_TOKEN": TOKEN,
        "TELEGRAM_API_BASE_URL": tg.api_base_url,
        "TELEGRAM_FILE_BASE_URL": tg.file_base_url,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
        # The tiny engine gains nothing from a second thread; the other core serves the bot.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    env.update(extra)
    return env


def config_from_env(env: dict[str, str], **limits: Any) -> AppConfig:
    """The bot's AppConfig for the same environment the workers get."""
    data_dir = Path(env["DATA_DIR"])
    return AppConfig(
        telegram=TelegramSettings(
            token=SecretStr(env["TELEGRAM_TOKEN"]),
            api_base_url=env["TELEGRAM_API_BASE_URL"],
            file_base_url=env["TELEGRAM_FILE_BASE_URL"],
        ),
        database=DatabaseSettings(url=env["DATABASE_URL"]),
        broker=BrokerSettings(url=env["BROKER_URL"]),
        storage=StorageSettings(
            DATA_DIR=data_dir,  # type: ignore[call-arg]  # the field's env alias
            blob_dir=Path(env["STORAGE_BLOB_DIR"]),
        ),
        engine=EngineSettings(
            profile="tiny",
            models_dir=Path(env["ENGINE_MODELS_DIR"]),
            num_images=int(env["ENGINE_NUM_IMAGES"]),
            num_candidates=int(env["ENGINE_NUM_CANDIDATES"]),
        ),
        limits=LimitsSettings(**limits),
        log_level=env.get("LOG_LEVEL", "INFO"),
    )


def read_rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process in KiB, from /proc (no psutil)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (e.g. the prefork pool of a Celery worker)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    return children


async def wait_until(
    predicate: Callable[[], object],
    seconds: float,
    what: str,
    *,
    workers: Iterable[WorkerProcess] = (),
    interval: float = 0.1,
) -> Any:
    """Poll `predicate` (async-friendly) until truthy; fail early if a worker process died."""
    deadline = time.monotonic() + seconds
    watched = list(workers)
    while True:
        value = predicate()
        if value:
            return value
        for worker in watched:
            if worker.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({worker.proc.returncode}) while waiting for {what}\n"
                    f"--- worker log ---\n{worker.log()[-4000:]}"
                )
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {w.log_path.name} ---\n{w.log()[-3000:]}" for w in watched)
            raise AssertionError(f"timed out after {seconds}s waiting for {what}{logs}")
        await asyncio.sleep(interval)


class BotProcess(CliProcess):
    """`facechain-bot bot` as a child process (long polling), to be SIGKILLed like a crash."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(["bot"], env, log_path)

    async def ready(self, seconds: float = 120.0) -> None:
        """Until the bot logged that it takes updates (the runner's "ready": polling started, or
        the webhook set; not PTB's "bot @name ready", logged at initialise, before either)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"bot exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            return "service.runner: ready" in self.log()

        await wait_until(up, seconds, "bot ready")


@dataclass
class Stack:
    """The fake Telegram, the bot (in-process), workers (child processes) and their data."""

    tg: FakeTelegram
    env: dict[str, str]
    db: Database
    blobs: LocalBlobStore
    logs: Path
    limits: dict[str, Any] = field(default_factory=dict)
    # The bot's own Database when it must reach PostgreSQL another way (through a proxy).
    bot_db: Database | None = None
    style_ids: list[int] = field(default_factory=list)
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    config: AppConfig | None = None
    celery: Celery | None = None
    app: Application[Any, Any, Any, Any, Any, Any] | None = None
    _runner: Any = None

    # processes --------------------------------------------------------------------------

    def start_worker(
        self, queues: str, name: str | None = None, hostname: str | None = None, **env: str
    ) -> WorkerProcess:
        """A real `facechain-bot worker` for these queues (gpu: one at a time; io: 4 threads),
        named `hostname` (Celery's node name; default: one per queue list and test process)."""
        name = name or queues.replace(",", "-")
        concurrency = 1 if "gpu" in queues.split(",") else 4
        log = self.logs / f"worker-{name}-{len(self.workers)}.log"
        worker = WorkerProcess(
            {**self.env, **env}, queues, log, concurrency=concurrency, hostname=hostname
        )
        self.workers[name] = worker
        return worker

    async def wait_workers_ready(self, seconds: float = 90.0) -> None:
        """Until every worker logged Celery's `ready.` line."""
        await wait_until(
            lambda: all(" ready." in w.log() for w in self.workers.values()),
            seconds,
            "workers ready",
            workers=self.workers.values(),
        )

    def stop_workers(self) -> None:
        """Warm-stop every worker at once (SIGTERM to all, then wait for each)."""
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.proc.pid, signal.SIGTERM)
        for worker in self.workers.values():
            worker.stop()
        self.workers.clear()

    def worker_errors(self, since: dict[str, int] | None = None) -> list[str]:
        """ERROR lines and tracebacks the workers logged (after the `since` offsets)."""
        found = []
        for name, worker in self.workers.items():
            new = worker.log()[(since or {}).get(name, 0) :]
            found += [
                f"{name}: {line}"
                for line in new.splitlines()
                if " ERROR" in line or "CRITICAL" in line or line.startswith("Traceback")
            ]
        return found

    def log_offsets(self) -> dict[str, int]:
        """Current length of each worker log (to look at what a test added)."""
        return {name: len(worker.log()) for name, worker in self.workers.items()}

    async def start_bot(self, **limits: Any) -> Application[Any, Any, Any, Any, Any, Any]:
        """Build and run the real Application (long polling against the fake server)."""
        from bot.app import build_application

        self.limits.update(limits)
        self.config = config_from_env(self.env, **self.limits)
        if self.celery is None:
            self.celery = create_celery(self.config)
        from tasks.dispatch import CeleryPublisher

        db = self.bot_db or self.db
        self.app = build_application(self.config, db, self.blobs, CeleryPublisher(self.celery, db))
        self._runner = running_bot(self.app, poll_timeout=1)
        await self._runner.__aenter__()
        return self.app

    async def stop_bot(self) -> None:
        """Stop polling and shut the Application down cleanly."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.__aexit__(None, None, None)
        self.app = None

    async def restart_bot(self) -> None:
        """A new bot process in all but name: nothing in memory survives, the database does."""
        await self.stop_bot()
        await self.start_bot()

    # the database, seen from the test -----------------------------------------------------

    def user(self, telegram_id: int) -> User | None:
        """The user row of a Telegram id (detached), if any."""
        with self.db.session() as s:
            return s.scalar(select(User).where(User.telegram_id == telegram_id))

    def jobs_of(self, telegram_id: int) -> list[Job]:
        """The user's jobs, oldest first (detached)."""
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.telegram_id == telegram_id))
            if user is None:
                return []
            return list(s.scalars(select(Job).where(Job.user_id == user.id).order_by(Job.id)))

    def job(self, job_id: int) -> Job:
        """A fresh, detached copy of a job row."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None, f"job {job_id} is gone"
            return job

    def photos_of(self, telegram_id: int) -> list[Photo]:
        """The user's photos of every kind (detached)."""
        with self.db.session() as s:
            user = s.scalar(select(User).where(User.telegram_id == telegram_id))
            if user is None:
                return []
            return list(s.scalars(select(Photo).where(Photo.user_id == user.id)))

    # what the users received --------------------------------------------------------------

    def albums(self, chat_id: int) -> list[ApiCall]:
        """Successful sendMediaGroup calls to a chat (one per delivered portrait set)."""
        return [c for c in self.tg.calls_to("sendMediaGroup") if c.ok and c.chat_id == chat_id]

    def results(self, chat_id: int, method: str) -> list[ApiCall]:
        """Successful calls of `method` to a chat."""
        return [c for c in self.tg.calls_to(method) if c.ok and c.chat_id == chat_id]

    def sweep(self, **limits: timedelta) -> dict[str, int]:
        """One outbox/stuck-job sweep from this process, as beat would run it."""
        from tasks.context import WorkerContext, set_context
        from tasks.sweep import sweep_once

        assert self.config is not None, "start the bot first"
        assert self.celery is not None
        ctx = WorkerContext(self.config, self.celery)
        ctx.db.dispose()
        ctx.db, ctx.blobs = self.db, self.blobs
        set_context(ctx)
        try:
            return sweep_once(
                outbox_grace=limits.pop("outbox_grace", timedelta(0)),
                time_limit=limits.pop("time_limit", timedelta(minutes=15)),
                **limits,
            )
        finally:
            set_context(None)

    async def wait(self, predicate: Callable[[], object], seconds: float, what: str) -> Any:
        """`wait_until`, watching this stack's workers."""
        return await wait_until(predicate, seconds, what, workers=self.workers.values())


@contextlib.asynccontextmanager
async def open_stack(
    database_url: str,
    broker_url: str,
    workdir: Path,
    *,
    queues: Iterable[str] = ("gpu", "io"),
    bot: bool = True,
    limits: dict[str, Any] | None = None,
    service_database_url: str | None = None,
    **env: str,
) -> AsyncIterator[Stack]:
    """Fake Telegram, workers and (optionally) the bot on an emptied database; stopped after.

    The bot and the workers reach the database at `service_database_url` (default
    `database_url`); the test itself always uses `database_url` directly.
    """
    from tests.conftest import truncate_all

    data_dir = workdir / "data"
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    db = Database.from_url(database_url)
    truncate_all(db.engine)
    blobs = LocalBlobStore(data_dir / "blobs")
    async with FakeTelegram() as tg:
        stack = Stack(
            tg=tg,
            env=service_env(
                tg,
                database_url=service_database_url or database_url,
                broker_url=broker_url,
                data_dir=data_dir,
                **env,
            ),
            db=db,
            bot_db=Database.from_url(service_database_url) if service_database_url else None,
            blobs=blobs,
            logs=logs,
            limits=dict(limits or {}),
        )
        stack.style_ids = seed_styles(db, blobs)
        try:
            for queue in queues:
                stack.start_worker(queue)
            if bot:
                await stack.start_bot()
            await stack.wait_workers_ready()
            yield stack
        finally:
            await stack.stop_bot()
            stack.stop_workers()
            truncate_all(db.engine)
            db.dispose()
            if stack.bot_db is not None:
                stack.bot_db.dispose()
