"""A lost delivery is bounded: the io worker SIGKILLed while it sends an album (the album call
never reached Telegram), and again after the album was sent but before its follow-ups. A new
io worker and the sweep send what is missing once the delivery lease expired: the album
arrives exactly once, within lease + sweep interval (docs/ARCHITECTURE.md, "Delivery lease")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from db.models import JobStatus
from tests.utils.chat import JOB_SECONDS, send_selfie, text, use_style
from tests.utils.fake_telegram import FakeUser
from tests.utils.stack import Stack, open_stack
from tests.utils.workers import CliProcess, redis_available, redis_test_url

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
# Short, so the test waits seconds, not the default 30 s.
LEASE_SECONDS = 6
# How often the test runs the sweep, as beat would (BROKER_SWEEP_INTERVAL_SECONDS).
SWEEP_SECONDS = 2
# The stated bound: lease + sweep interval, plus the new io worker's send.
BOUND_SECONDS = LEASE_SECONDS + SWEEP_SECONDS + 15


def start_io_worker(stack: Stack) -> None:
    """The io worker with beat inside, as `facechain-bot run` starts it: the sweep runs every
    SWEEP_SECONDS."""
    n = len(list(stack.logs.glob("worker-io-*.log")))
    stack.workers["io"] = CliProcess(  # type: ignore[assignment]
        ["worker", "--queues=io", "--concurrency=4", "--beat", f"--hostname=io-{n}@%h"],
        stack.env,
        stack.logs / f"worker-io-{n}.log",
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Bot, a gpu worker, and an io worker with beat on this test worker's Redis database."""
    if not redis_available():
        pytest.skip("io worker crashes are tested on Redis (127.0.0.1:6379)")
    async with open_stack(
        database_url,
        redis_test_url(),
        tmp_path_factory.mktemp("delivery"),
        queues=("gpu",),
        BROKER_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
        BROKER_SWEEP_INTERVAL_SECONDS=str(int(SWEEP_SECONDS)),
    ) as s:
        start_io_worker(s)
        await s.wait_workers_ready()
        yield s


async def kill_io_worker_on(stack: Stack, user: FakeUser, method: str, selfie: str) -> float:
    """Start a portrait with `method` held at the fake Bot API; SIGKILL the io worker while
    its `method` call waits there (the call then fails, as if it never reached Telegram);
    start a new io worker and sweep. Seconds from the kill to the recorded delivery."""
    tg = stack.tg
    picker = await send_selfie(tg, user, selfie)
    await use_style(tg, user, picker)
    [job] = stack.jobs_of(user.id)
    gate = tg.hold(method)
    tg.held.clear()
    await stack.wait(
        lambda: any(c.chat_id == user.id for c in tg.held), JOB_SECONDS, f"{method} held"
    )
    stack.workers["io"].kill()
    killed = time.monotonic()
    tg.fail_next(method, 502)
    gate.set()
    # Restarted a few seconds later, as a supervisor would.
    await asyncio.sleep(2)
    start_io_worker(stack)
    await stack.wait(
        lambda: stack.job(job.id).delivered_at is not None,
        BOUND_SECONDS + 60,
        f"job {job.id} delivered again",
    )
    took = time.monotonic() - killed
    await tg.idle(quiet=1.0)
    assert stack.job(job.id).status is JobStatus.SUCCEEDED
    return took


def follow_ups_once(stack: Stack, user: FakeUser) -> None:
    """One album, one "what next" message, the status message showing the result."""
    tg = stack.tg
    assert len(stack.albums(user.id)) == 1
    assert len([t for t in tg.sent_texts(user.id) if t == text(user, "job.next")]) == 1
    [job] = stack.jobs_of(user.id)
    assert job.status_message_id is not None
    status = tg.messages[(user.id, job.status_message_id)]
    assert status["text"].startswith(text(user, "job.done", count=2))


async def test_io_worker_killed_while_sending_the_album(stack: Stack) -> None:
    user = stack.tg.user(850001, "Ida", "en")
    took = await kill_io_worker_on(stack, user, "sendMediaGroup", "woman_pose1.png")
    follow_ups_once(stack, user)
    assert took < BOUND_SECONDS


async def test_io_worker_killed_after_the_album_was_sent(stack: Stack) -> None:
    """The album call returned and was recorded; the worker dies on the "what next" message.
    The next delivery goes on from there: no second album."""
    user = stack.tg.user(850002, "Ivo", "en")
    took = await kill_io_worker_on(stack, user, "sendMessage", "man_pose3.png")
    follow_ups_once(stack, user)
    assert took < BOUND_SECONDS
