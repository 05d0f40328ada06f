"""Durable updates: the bot SIGKILLed while it handles a selfie, in polling mode and in webhook
mode (`web` and `bot` as separate processes, the relay between them). The restarted bot answers
the selfie, once: the update was in the inbox before Telegram (or the relay queue) was told it
arrived (docs/ARCHITECTURE.md, "Durable updates")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.utils.chat import prefix
from tests.utils.fake_telegram import FakeUser
from tests.utils.redis_server import free_port
from tests.utils.stack import BotProcess, Stack, face, open_stack, wait_until
from tests.utils.workers import CliProcess, redis_available, redis_test_url

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Fake Telegram and an emptied database; the bot processes are the tests' own."""
    if not redis_available():
        pytest.skip("the relay is tested on Redis (127.0.0.1:6379)")
    async with open_stack(
        database_url, redis_test_url(), tmp_path_factory.mktemp("durable"), queues=(), bot=False
    ) as s:
        yield s


def selfie_answers(stack: Stack, user: FakeUser) -> list[str]:
    """The "selfie saved" replies the user got."""
    saved = prefix(user, "selfie.saved")
    return [t for t in stack.tg.sent_texts(user.id) if t.startswith(saved)]


async def killed_with_a_selfie_in_flight(stack: Stack, user: FakeUser, log: Path) -> None:
    """The user sends a selfie; the bot is SIGKILLed while it downloads it (getFile held),
    then started again: the selfie is answered once."""
    tg = stack.tg
    bot = BotProcess(stack.env, log.with_suffix(".1.log"))
    try:
        await bot.ready()
        gate = tg.hold("getFile")
        tg.held.clear()
        tg.send_photo(user, face("man_pose1.png"))
        await stack.wait(lambda: tg.held, 60, "the selfie's download")
        # The update is confirmed meanwhile (a later getUpdates, or the relay's ack).
        await tg.idle(quiet=1.0)
        bot.kill()
        gate.set()
        assert selfie_answers(stack, user) == []
        bot = BotProcess(stack.env, log.with_suffix(".2.log"))
        await bot.ready()
        await tg.wait_text(user.id, prefix(user, "selfie.saved"), within=90)
        await tg.idle(quiet=2.0)
        assert len(selfie_answers(stack, user)) == 1
        assert len([p for p in stack.photos_of(user.id) if p.kind.value == "selfie"]) == 1
        assert "replaying 1 updates" in bot.log()
    finally:
        bot.stop()


async def test_polling_bot_sigkilled_with_a_selfie_in_flight(stack: Stack) -> None:
    user = stack.tg.user(840001, "Pia", "en")
    await killed_with_a_selfie_in_flight(stack, user, stack.logs / "bot-polling")


async def test_webhook_bot_sigkilled_with_a_selfie_in_flight(stack: Stack) -> None:
    port = free_port()
    stack.env.update(
        TELEGRAM_MODE="webhook",
        TELEGRAM_WEBHOOK_URL=f"http://127.0.0.1:{port}/telegram/webhook",
        TELEGRAM_WEBHOOK_SECRET="durable-webhook-secret-24",
        ADMIN_PORT=str(port),
    )
    web = CliProcess(["web"], stack.env, stack.logs / "web.log")
    try:
        await wait_until(lambda: "admin web on" in web.log(), 60, "web ready")
        user = stack.tg.user(840002, "Wes", "en")
        await killed_with_a_selfie_in_flight(stack, user, stack.logs / "bot-webhook")
        assert set(stack.tg.webhook_statuses) == {200}
    finally:
        web.stop()
