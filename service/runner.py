"""Process roles: the bot, the admin web server, and `run` (everything on one machine).

`run` keeps the bot and the web server in this process's event loop and starts the gpu and io
workers as child processes (`facechain-bot worker`), so Ctrl-C stops all of them cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from telegram.error import InvalidToken, NetworkError
from telegram.ext import Application

from core.blobstore import BlobStore, create_blob_store
from core.errors import AppError, ConfigError
from core.settings import AppConfig
from db.session import Database
from service.probe import ProbeState, serve_probe
from service.relay_auth import RelayRejected, open_update, relay_key, sign_update

if TYPE_CHECKING:
    from core.metrics import Metrics
    from domain.outbox import Publisher
    from service.update_relay import UpdateRelay
    from tasks.dispatch import CeleryPublisher

logger = logging.getLogger(__name__)

CHILD_STOP_TIMEOUT_S = 20
# getMe attempts at startup (1 + 2 + 4 s of back-off) before giving up with a clear error.
STARTUP_ATTEMPTS = 4


def _resources(config: AppConfig) -> tuple[Database, BlobStore, CeleryPublisher]:
    """The composition root's services: database, blob store and the broker publisher."""
    from tasks.celery_app import create_celery
    from tasks.dispatch import CeleryPublisher

    db = Database.from_url(config.database.url, pool_size=config.database.pool_size)
    publisher = CeleryPublisher(create_celery(config), db)
    return db, create_blob_store(config.storage), publisher


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping")


async def _serve(
    config: AppConfig,
    *,
    bot: bool,
    web_server: bool,
    extra: Callable[[], Awaitable[None]] | None = None,
    probe: ProbeState | None = None,
) -> None:
    """Run the bot and/or web server until SIGINT/SIGTERM."""
    from bot.app import ALLOWED_UPDATES, build_application
    from bot.polling import DurablePoller, replay_unfinished
    from core.safety import create_screen
    from web.app import create_web_app

    db, blobs, publisher = _resources(config)
    # One upload safety checker process for the bot and the admin web of this process.
    screen = create_screen(config)
    async with AsyncExitStack() as stack:
        stack.callback(db.dispose)
        if screen is not None:
            stack.callback(screen.close)
        application = None
        updates_ready: Callable[[], bool] | None = None
        if bot:
            application = build_application(
                config, db, blobs, publisher, screen_factory=lambda _: screen
            )
            await connect_telegram(application, config.telegram.api_base_url)
            await stack.enter_async_context(application)
            await application.start()
            stack.push_async_callback(application.stop)
            # What a stopped bot took in but never finished goes first (docs/ARCHITECTURE.md,
            # "Durable updates").
            await replay_unfinished(application, db)
            if config.telegram.mode == "polling":
                # Explicit: getUpdates otherwise keeps whatever a former webhook asked for.
                poller = DurablePoller(application, db, allowed_updates=ALLOWED_UPDATES)
                await poller.start()
                stack.push_async_callback(poller.stop)
                updates_ready = lambda: poller.running  # noqa: E731
            else:
                assert config.telegram.webhook_url
                assert config.telegram.webhook_secret
                if not web_server:
                    # `bot` alone: the updates `web` received come through the broker.
                    relay = start_relay(config, application, db)
                    stack.callback(relay.stop)
                    updates_ready = relay.connected.is_set
                await application.bot.set_webhook(
                    config.telegram.webhook_url,
                    secret_token=config.telegram.webhook_secret.get_secret_value(),
                    allowed_updates=list(ALLOWED_UPDATES),
                )
        if web_server:
            sink = None
            if application is None and config.telegram.mode == "webhook":
                # `web` alone: each update goes to the `bot` process through the broker.
                sink = broker_sink(publisher, relay_key(config.telegram))
            app = create_web_app(
                config,
                db,
                blobs,
                publisher,
                telegram_app=application,
                update_sink=sink,
                screen_factory=lambda _: screen,
            )
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, config.admin.host, config.admin.port)
            await site.start()
            logger.info("admin web on http://%s:%s", config.admin.host, config.admin.port)
        if extra is not None:
            await extra()
        if probe is not None and updates_ready is not None:
            probe.checks["updates"] = _require(updates_ready, "the update source is not running")
            probe.set_ready(mode=config.telegram.mode)
        logger.info("ready")
        await _wait_for_stop()


async def connect_telegram(
    application: Application[Any, Any, Any, Any, Any, Any], api_base_url: str
) -> None:
    """Initialise the bot (getMe), retrying a flaky network; readable errors when it can't."""
    for attempt in range(STARTUP_ATTEMPTS):
        try:
            await application.initialize()
            return
        except (InvalidToken, NetworkError) as exc:
            # The HTTP clients were opened before getMe failed; close them first.
            await application.bot.shutdown()
            if isinstance(exc, InvalidToken):
                raise ConfigError(
                    f"TELEGRAM_TOKEN was rejected by the Bot API at {api_base_url}; "
                    "copy the token again from @BotFather"
                ) from None
            if attempt == STARTUP_ATTEMPTS - 1:
                raise AppError(
                    f"cannot reach the Telegram Bot API at {api_base_url} ({exc}); check the "
                    "network or TELEGRAM_API_BASE_URL"
                ) from None
            delay = 2.0**attempt
            logger.warning("Telegram unreachable; retrying in %.0fs", delay)
            await asyncio.sleep(delay)


def run_bot(config: AppConfig) -> int:
    """The bot role: no web server, no admin API; a probe port when PROBE_PORT is set."""
    from core.metrics import default_metrics

    probe = serve_probe("bot", config.probe.host, config.probe.port, default_metrics().registry)
    asyncio.run(_serve(config, bot=True, web_server=False, probe=probe))
    return 0


def _require(ok: Callable[[], bool], message: str) -> Callable[[], None]:
    def check() -> None:
        if not ok():
            raise UpdatesStopped(message)

    return check


class UpdatesStopped(RuntimeError):
    """The bot's update source (polling loop or webhook relay) is not running (a probe check)."""


def broker_sink(publisher: Publisher, key: bytes) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """The webhook route's hand-over: publish the update, signed, on the relay queue (in a
    thread)."""
    from service.update_relay import publish_update
    from tasks.dispatch import CeleryPublisher

    assert isinstance(publisher, CeleryPublisher)
    celery = publisher.celery

    async def sink(data: dict[str, Any]) -> None:
        await asyncio.to_thread(publish_update, celery, sign_update(key, data))

    return sink


# How long the relay waits for an update to be stored before it gives the message back.
RELAY_STORE_TIMEOUT_S = 30.0


def start_relay(
    config: AppConfig,
    application: Application[Any, Any, Any, Any, Any, Any],
    db: Database,
    metrics: Metrics | None = None,
) -> UpdateRelay:
    """Take the updates `web` put on the broker and queue them for the bot's handlers.

    A message without `web`'s signature is dropped (logged and counted). Each signed one is
    stored in the inbox before its message is acknowledged (`bot.polling.accept`); one that
    cannot be stored (the database is down) raises, and its message is given back."""
    from bot.polling import accept
    from core.metrics import default_metrics
    from service.update_relay import UpdateRelay

    loop = asyncio.get_running_loop()
    key = relay_key(config.telegram)
    counters = metrics or default_metrics()

    def deliver(message: object) -> None:
        try:
            data = open_update(key, message)
        except RelayRejected as exc:
            counters.relay_dropped.labels(reason=exc.reason).inc()
            logger.warning("update relay: dropping a message (%s)", exc.reason)
            return
        stored = asyncio.run_coroutine_threadsafe(accept(application, db, data), loop)
        stored.result(RELAY_STORE_TIMEOUT_S)

    relay = UpdateRelay(config.broker.effective_url, deliver)
    relay.start()
    return relay


def run_web(config: AppConfig) -> int:
    """The admin web role."""
    asyncio.run(_serve(config, bot=False, web_server=True))
    return 0


def start_worker(
    queues: str, *, beat: bool = False, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `facechain-bot worker` child process for these queues."""
    cmd = [sys.executable, "-m", "service.cli", "worker", f"--queues={queues}"]
    if beat:
        cmd.append("--beat")
    # A session of its own, so stopping it reaches its pool children and embedded beat too.
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)


def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(child.pid, sig)


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    """Warm-stop children (they finish the task in hand), then kill stragglers.

    Each worker leads its own process group; the whole group is signalled, then killed, so
    no pool child or embedded beat outlives `run`."""
    for child in children:
        _signal_group(child, signal.SIGTERM)
    for child in children:
        try:
            child.wait(CHILD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not stop in time; killing it", child.pid)
        # Whatever is left of the group (an orphaned beat or pool process) goes too.
        _signal_group(child, signal.SIGKILL)
        child.wait()


def prepare(config: AppConfig) -> None:
    """First-start work: folders, migrations, and the style catalog when it is empty."""
    from domain.catalog import import_catalog
    from service.migrate import upgrade

    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(config.database.url)
    db = Database.from_url(config.database.url)
    try:
        with db.session() as session:
            from sqlalchemy import func, select

            from db.models import Style

            if not session.scalar(select(func.count(Style.id))):
                report = import_catalog(session, create_blob_store(config.storage))
                logger.info("imported the style catalog: %s", report)
    finally:
        db.dispose()


@dataclass(frozen=True)
class WorkerRole:
    """One worker process `run` keeps alive: the queues it consumes, and beat inside it."""

    queues: str
    beat: bool = False


RUN_ROLES = (WorkerRole("gpu"), WorkerRole("train"), WorkerRole("io", beat=True))
# A worker that exits (a task past its hard time limit, an engine that cannot be built, a crash)
# is started again after a pause that doubles per quick exit; one that exits this many times
# within the window is broken, and `run` stops with exit status 1 (a service manager then sees
# the failure) instead of restarting it forever.
RESTART_FIRST_DELAY_S = 1.0
RESTART_MAX_DELAY_S = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


@dataclass
class Supervisor:
    """The worker children of `run`: started, watched, restarted, stopped."""

    roles: tuple[WorkerRole, ...] = RUN_ROLES
    start: Callable[[WorkerRole], subprocess.Popen[bytes]] = field(
        default=lambda role: start_worker(role.queues, beat=role.beat)
    )
    clock: Callable[[], float] = time.monotonic
    children: dict[WorkerRole, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: dict[WorkerRole, list[float]] = field(default_factory=dict)
    due: dict[WorkerRole, float] = field(default_factory=dict)
    failed: str | None = None

    def start_all(self) -> None:
        for role in self.roles:
            self.children[role] = self.start(role)

    def check(self) -> bool:
        """Restart the workers that exited (once their pause is over); False once one of them
        keeps exiting (`failed` says which)."""
        now = self.clock()
        for role, child in self.children.items():
            if role in self.due:
                if now >= self.due[role]:
                    del self.due[role]
                    self.children[role] = restarted = self.start(role)
                    logger.warning("worker %s started again (pid %s)", role.queues, restarted.pid)
                continue
            if child.poll() is None:
                continue
            recent = [t for t in self.exits.get(role, []) if now - t < RESTART_WINDOW_S]
            recent.append(now)
            self.exits[role] = recent
            if len(recent) > MAX_RESTARTS:
                self.failed = (
                    f"the {role.queues} worker exited {len(recent)} times within "
                    f"{RESTART_WINDOW_S:.0f} s (last status {child.returncode})"
                )
                logger.error("%s; stopping", self.failed)
                return False
            delay = min(RESTART_FIRST_DELAY_S * 2 ** (len(recent) - 1), RESTART_MAX_DELAY_S)
            logger.error(
                "worker %s (pid %s) exited with %s; starting it again in %.0f s",
                role.queues,
                child.pid,
                child.returncode,
                delay,
            )
            self.due[role] = now + delay
        return True

    def stop(self) -> None:
        stop_children(list(self.children.values()))


def run_all(config: AppConfig, *, with_workers: bool = True) -> int:
    """`facechain-bot run`: migrate, start workers, serve bot + web until Ctrl-C.

    A worker that exits is started again (`Supervisor`); exit status 1 when one kept exiting."""
    prepare(config)
    supervisor = Supervisor(roles=RUN_ROLES if with_workers else ())

    async def watch_children() -> None:
        # Started only once Telegram answered, so a bad token stops everything at once.
        supervisor.start_all()

        async def watch() -> None:
            while True:
                await asyncio.sleep(1)
                if not supervisor.check():
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        asyncio.get_running_loop().create_task(watch())

    try:
        asyncio.run(_serve(config, bot=True, web_server=True, extra=watch_children))
    finally:
        supervisor.stop()
    return 1 if supervisor.failed else 0
