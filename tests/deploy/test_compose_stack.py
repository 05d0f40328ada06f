"""`docker compose up` without Docker: the compose file's own services as local processes, in
webhook mode, through the fake Bot API.

Commands, environment (with the file's `${VAR}` defaults), start order, depends_on conditions
and healthchecks all come from docker-compose.yml (tests/utils/compose_stack.py), so changing
the file changes what runs here. Redis runs from its compose command, with its password (a
client without it is refused). Telegram POSTs updates to `web`'s published port, `web` hands
them to `bot` through Redis, signed; a new user goes /start → selfie → the catalog's style picker →
a style → the album, the admin API answers on the same port, a wrong webhook secret is
refused, and a forged `successful_payment` credits nothing and alerts the admin chat. The tiny
profile with two denoising steps keeps it inside about 90 s on 2 cores."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import redis

from tests.conftest import drop_postgres_database, fresh_postgres_database, postgres_available
from tests.utils.chat import prefix, send_selfie, text, use_style
from tests.utils.compose import load
from tests.utils.compose_stack import LocalStack, free_port, listening_ports
from tests.utils.fake_telegram import TOKEN, FakeTelegram

logger = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("redis-server") and postgres_available()),
        reason="the compose stack runs on PostgreSQL and Redis (redis-server)",
    ),
]

ADMIN_TOKEN = "compose-admin-token-0123456789"
WEBHOOK_SECRET = "compose-webhook-secret-0123456789"
REDIS_PASSWORD = "c0ffee0123456789"
ADMIN_CHAT = -100930
APP_ROLES = ["bot", "web", "worker-gpu", "worker-train", "worker-io", "beat"]


class Running:
    """The fake Telegram, the local stack and what the test needs of both."""

    def __init__(self, tg: FakeTelegram, stack: LocalStack, web_port: int) -> None:
        self.tg = tg
        self.stack = stack
        self.web = f"http://127.0.0.1:{web_port}"
        self.started = time.monotonic()


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    database = f"facechain_compose_{os.getpid()}"
    database_url = fresh_postgres_database(database)
    web_port = free_port()
    async with FakeTelegram() as tg:
        env = {
            "TELEGRAM_TOKEN": TOKEN,
            "POSTGRES_PASSWORD": "compose0123456789",
            "REDIS_PASSWORD": REDIS_PASSWORD,
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "FLOWER_BASIC_AUTH": "ops:compose0123456789",
            "GRAFANA_ADMIN_PASSWORD": "compose0123456789",
            "TELEGRAM_MODE": "webhook",
            "TELEGRAM_ADMIN_CHAT_ID": str(ADMIN_CHAT),
            "PAYMENTS_ENABLED": "true",
            "TELEGRAM_WEBHOOK_URL": f"http://127.0.0.1:{web_port}/telegram/webhook",
            "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TELEGRAM_API_BASE_URL": tg.api_base_url,
            "TELEGRAM_FILE_BASE_URL": tg.file_base_url,
            "WEB_PORT": str(web_port),
            "ENGINE_PROFILE": "tiny",
            # This test only: two steps, two images (ranked out of three), so the album comes
            # in seconds.
            "ENGINE_STEPS": "2",
            "ENGINE_NUM_IMAGES": "2",
            "ENGINE_NUM_CANDIDATES": "3",
        }
        stack = LocalStack(
            compose=load(env),
            workdir=tmp_path,
            database_url=database_url,
            extra_env={
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "ENGINE_DEVICE": "cpu",
            },
        )
        try:
            order = await stack.up(seconds=60)
            assert order.index("migrate") < order.index("bot")
            await stack.wait_healthy(APP_ROLES, seconds=90)
            yield Running(tg, stack, web_port)
        finally:
            codes = stack.down()
            drop_postgres_database(database)
        # A stop is warm: every role exits on its own, none has to be killed.
        assert all(code is not None for code in codes.values()), codes


async def test_compose_stack_in_webhook_mode(running: Running) -> None:
    tg, stack = running.tg, running.stack

    # The bot registered the published port as its webhook, with the secret.
    assert tg.webhook_url == f"{running.web}/telegram/webhook"
    assert tg.webhook_secret == WEBHOOK_SECRET
    # The bot listens on its probe port only: no admin API, no webhook route of its own.
    bot = stack.services["bot"]
    assert bot.proc is not None
    assert listening_ports(bot.proc.pid) == {int(bot.env["PROBE_PORT"])}

    # Redis takes only clients with its password; every role has it in its BROKER_URL.
    port = stack.redis_port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_connect_timeout=2).ping()
    assert redis.Redis(port=port, password=REDIS_PASSWORD, socket_connect_timeout=2).ping()
    assert f":{REDIS_PASSWORD}@127.0.0.1:{port}/" in bot.env["BROKER_URL"]

    async with aiohttp.ClientSession() as http:
        # A wrong or missing secret is refused before the body is read.
        update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "text": "/start"}}
        for headers in ({"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {}):
            async with http.post(
                f"{running.web}/telegram/webhook", json=update, headers=headers
            ) as response:
                assert response.status == 403
        # The admin API on the same published port.
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with http.get(f"{running.web}/api/v1/stats", headers=auth) as response:
            assert response.status == 200, await response.text()
        async with http.get(f"{running.web}/api/v1/stats") as response:
            assert response.status == 401
        async with http.get(f"{running.web}/readyz") as response:
            assert response.status == 200, await response.text()

    ann = tg.user(930001, "Ann", "en")
    tg.send_text(ann, "/start")
    await tg.wait_text(ann.id, text(ann, "start.welcome", name="Ann"), within=30)

    # A forged successful_payment through `web` and the queue to `bot` (what a guessed webhook
    # secret would let in): a pack that does not exist, 1 Star, a million credits in its
    # payload. Credits come from invoices the bot issued only: nothing credited, admins told.
    tg.successful_payment(ann, "pk:999:1000000:1:1:0", 1)
    await tg.wait_text(ann.id, text(ann, "pay.unmatched"), within=30)
    await tg.wait_text(ADMIN_CHAT, "matches no invoice we issued (no_invoice)", within=30)
    since = len(tg.calls)
    tg.send_text(ann, "/balance")
    await tg.wait_text(ann.id, "Credits: 0", since=since, within=30)

    # The catalog was imported by `migrate`: the picker shows a real style.
    picker = await send_selfie(tg, ann, "man_pose1.png")
    assert picker.get("caption"), "the style picker is empty"

    await use_style(tg, ann, picker)
    call = await tg.wait_for("sendMediaGroup", chat_id=ann.id, within=120)
    assert len(call.params["media"]) == 2
    await tg.wait_text(ann.id, prefix(ann, "job.next"), within=30)

    # Every update came in through the webhook, none was refused.
    assert tg.webhook_statuses
    assert set(tg.webhook_statuses) == {200}
    assert not tg.calls_to("getUpdates")
    stack.check_alive()
    logger.warning(
        "compose stack: %.1f s from healthy to album", time.monotonic() - running.started
    )
