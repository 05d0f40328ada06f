"""The whole service once per module: fake Bot API, the real bot, a gpu and an io worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.utils.stack import Stack, open_stack
from tests.utils.workers import redis_available, redis_test_url


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Bot + workers on Redis (the embedded SQLite broker when no Redis answers)."""
    workdir = tmp_path_factory.mktemp("e2e")
    broker = redis_test_url() if redis_available() else f"sqla+sqlite:///{workdir / 'broker.db'}"
    async with open_stack(database_url, broker, workdir) as running:
        yield running


@pytest.fixture(autouse=True)
def no_errors(stack: Stack, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test ends without an ERROR log or traceback in the bot or the workers."""
    caplog.set_level(logging.INFO)
    offsets = stack.log_offsets()
    yield
    bot_errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bot_errors, f"the bot logged errors: {bot_errors}"
    assert not stack.worker_errors(offsets), "\n".join(stack.worker_errors(offsets))
