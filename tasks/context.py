"""Per-process worker context: settings, database, blob store, Celery app and the engine.

Built on first use in each worker process (`get_context`), never at import time, so a forked
pool child builds its own connections. The engine is heavy: a gpu worker builds it before it
consumes its first message (`tasks.warm`) and keeps it resident for the life of the process;
elsewhere (tests, the CLI) it is built on first use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from celery import Celery, Task, current_app, signals

from core.blobstore import BlobStore, create_blob_store
from core.settings import AppConfig, load_config
from db.session import Database
from tasks.dispatch import CeleryPublisher

if TYPE_CHECKING:
    from telegram import Bot

    from facechain.annotators.rrdb import Upscaler
    from facechain.engine import Engine
    from telegram_ui.client import BotRunner

logger = logging.getLogger(__name__)
T = TypeVar("T")


class WorkerContext:
    """Everything a task needs besides its job id."""

    def __init__(self, config: AppConfig, celery: Celery) -> None:
        self.config = config
        self.celery = celery
        self.db = Database.from_url(config.database.url, pool_size=4)
        self.blobs: BlobStore = create_blob_store(config.storage)
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._upscaler: Upscaler | None = None
        self._telegram: BotRunner | None = None

    @property
    def publisher(self) -> CeleryPublisher:
        """Publishes what a use case outboxed, on this worker's broker."""
        return CeleryPublisher(self.celery, self.db)

    @property
    def engine(self) -> Engine:
        """The resident engine, built on first use (EngineUnavailable if weights are missing)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = build_engine(self.config)
            return self._engine

    @property
    def upscaler(self) -> Upscaler:
        """The resident RRDB upscaler, built on first use (WeightsMissing if not downloaded)."""
        with self._engine_lock:
            if self._upscaler is None:
                self._upscaler = build_upscaler(self.config)
            return self._upscaler

    @property
    def telegram(self) -> BotRunner:
        """This process's one initialised Bot (io tasks), on its own event loop."""
        from telegram_ui.client import BotRunner, make_bot

        with _lock:
            if self._telegram is None:
                settings, broker_url = self.config.telegram, self.config.broker.effective_url
                self._telegram = BotRunner(lambda: make_bot(settings, broker_url))
            return self._telegram

    def call_telegram(self, fn: Callable[[Bot], Awaitable[T]]) -> T:
        """Run a Bot API coroutine within what is left of the running task's time limit
        (`BROKER_IO_TIME_LIMIT` for io tasks; the whole limit outside a task)."""
        limit = float(self.config.broker.io_time_limit)
        deadline: float | None = getattr(_task_clock, "deadline", None)
        timeout = limit if deadline is None else max(0.1, deadline - time.monotonic())
        return self.telegram.run(fn, timeout=timeout)

    def reset_models(self) -> None:
        """Drop whatever a failed build left behind, so the next attempt starts clean."""
        with self._engine_lock:
            self._engine = None
            self._upscaler = None

    def close(self) -> None:
        if self._telegram is not None:
            self._telegram.close()
        self.db.dispose()


def build_engine(config: AppConfig) -> Engine:
    """Build the FACT engine for the configured profile."""
    from facechain.engine import Engine, EngineConfig

    settings = config.engine
    logger.info("building %s engine from %s", settings.profile, settings.models_dir)
    engine_config = EngineConfig(
        profile=settings.profile,
        models_dir=settings.models_dir,
        device=settings.device,
        channels_last=settings.channels_last,
        fuse_qkv=settings.fuse_qkv,
        compile_unet=settings.compile_unet,
        compile_mode=settings.compile_mode,
        vae_nan_guard=settings.vae_nan_guard,
        safety_outputs=config.safety.outputs == "block",
        safety_required=config.safety.required,
        safety_threshold=config.safety.threshold,
    )
    if settings.steps:
        engine_config.steps = settings.steps
    if settings.profile == "real":
        from facechain import registry

        # Optional models have a documented fallback; say which ones run (`models list` too).
        for name, fallback in registry.missing_fallbacks(settings.models_dir).items():
            if name == registry.SAFETY_CHECKER.name:
                continue  # the engine says what its absence means (required: no engine)
            logger.warning(
                "model %s is not downloaded, fallback: %s (run `%s`)",
                name,
                fallback,
                registry.DOWNLOAD_COMMAND,
            )
    return Engine.from_config(engine_config)


def build_upscaler(config: AppConfig) -> Upscaler:
    """The HD upscaler for the configured profile (tiny: a small seeded net)."""
    from facechain.annotators.rrdb import build_upscaler as build

    settings = config.engine
    logger.info("building %s upscaler from %s", settings.profile, settings.models_dir)
    return build(settings.profile, settings.models_dir, settings.device)


_lock = threading.Lock()
_context: WorkerContext | None = None
# The running task's deadline on this thread (the io worker runs tasks on threads).
_task_clock = threading.local()


@signals.task_prerun.connect(weak=False)
def _start_task_clock(task: Task | None = None, **_: object) -> None:
    limit = getattr(task, "soft_time_limit", None) if task is not None else None
    _task_clock.deadline = time.monotonic() + float(limit) if limit else None


@signals.task_postrun.connect(weak=False)
def _stop_task_clock(**_: object) -> None:
    _task_clock.deadline = None


def get_context() -> WorkerContext:
    """This process's context, built from the Celery app's config on first use."""
    global _context
    with _lock:
        if _context is None:
            app = current_app._get_current_object()
            config = getattr(app.conf, "facechain_config", None) or load_config()
            _context = WorkerContext(config, app)
        return _context


def set_context(context: WorkerContext | None) -> None:
    """Install a context (tests)."""
    global _context
    with _lock:
        _context = context
