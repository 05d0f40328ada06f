"""The io worker's Bot API use and limits (issue 14): one initialised Bot per process (getMe
once, not per delivery or progress edit), a hung Bot API call cut off at the io time limit
(Celery's threads pool enforces none), and a Redis visibility timeout per worker role."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.metrics import default_metrics
from core.settings import (
    AppConfig,
    BrokerSettings,
    DatabaseSettings,
    StorageSettings,
    TelegramSettings,
)
from db.models import Job, JobKind, JobStatus
from db.session import Database
from tasks.celery_app import create_celery
from tasks.context import WorkerContext, set_context
from tasks.deliver import send_progress, send_result
from tests.utils.factories import make_user
from tests.utils.fake_telegram import TOKEN, ApiCall, FakeTelegram

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"
IO_LIMIT_S = 2


@pytest.fixture
async def tg() -> Any:
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
def ctx(
    tg: FakeTelegram, db: Database, tmp_path: Path, database_url: str
) -> Iterator[WorkerContext]:
    config = AppConfig(
        telegram=TelegramSettings(
            token=TOKEN, api_base_url=tg.api_base_url, file_base_url=tg.file_base_url
        ),
        database=DatabaseSettings(url=database_url),
        broker=BrokerSettings(url="memory://", io_time_limit=IO_LIMIT_S),
        storage=StorageSettings(DATA_DIR=tmp_path, blob_dir=tmp_path / "blobs"),  # type: ignore[call-arg]
    )
    context = WorkerContext(config, create_celery(config))
    context.db = db
    set_context(context)
    yield context
    set_context(None)
    context.close()


def _job(ctx: WorkerContext, status: JobStatus, telegram_id: int, **fields: Any) -> int:
    with ctx.db.session() as s:
        user = make_user(s, telegram_id=telegram_id)
        job = Job(
            user_id=user.id,
            kind=JobKind.PORTRAIT,
            params={},
            chat_id=telegram_id,
            status_message_id=1,
            **fields,
        )
        s.add(job)
        s.flush()
        job.transition(JobStatus.RUNNING)
        if status is not JobStatus.RUNNING:
            job.transition(status)
        return job.id


async def test_one_bot_per_process_no_getme_per_delivery(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    image = ctx.blobs.put((FACES / "man_pose1.png").read_bytes())
    jobs = [
        _job(ctx, JobStatus.SUCCEEDED, 8100 + n, result_blobs=[image, image]) for n in range(3)
    ]
    running = _job(ctx, JobStatus.RUNNING, 8200)
    for _ in range(3):
        await asyncio.to_thread(send_progress, running)
    for job_id in jobs:
        assert await asyncio.to_thread(send_result, job_id) == "delivered"
    assert len(tg.calls_to("sendMediaGroup")) == 3
    assert len([c for c in tg.calls if c.method == "editMessageText"]) >= 3
    # One getMe for the whole process, however many deliveries and edits.
    assert len(tg.calls_to("getMe")) == 1


async def test_a_hung_bot_api_call_ends_the_task_within_the_io_limit(
    tg: FakeTelegram, ctx: WorkerContext
) -> None:
    image = ctx.blobs.put((FACES / "man_pose1.png").read_bytes())
    job_id = _job(ctx, JobStatus.SUCCEEDED, 8300, result_blobs=[image, image])
    hung: list[float] = []

    async def hang(call: ApiCall) -> Any:
        hung.append(time.monotonic())
        await asyncio.sleep(120)

    tg._m_sendMediaGroup = hang  # type: ignore[method-assign]
    before = _delivery_errors("maybe_delivered")
    started = time.monotonic()
    outcome = await asyncio.to_thread(send_result, job_id)
    elapsed = time.monotonic() - started
    assert hung, "the album call never reached the fake Bot API"
    assert elapsed < IO_LIMIT_S + 3, f"the task ran {elapsed:.1f} s past a {IO_LIMIT_S} s limit"
    # The album may have arrived: it is not sent twice (the user has /history).
    assert outcome == "delivered"
    assert len(hung) == 1
    # Counted for the dashboard's delivery errors panel (the io worker's probe /metrics).
    assert _delivery_errors("maybe_delivered") == before + 1

    # The process's Bot is still usable afterwards.
    other = _job(ctx, JobStatus.RUNNING, 8301)
    await asyncio.to_thread(send_progress, other)
    # The task has returned, so its call is recorded (answered 400: the fake never sent it).
    assert [c for c in tg.calls if c.method == "editMessageText" and c.chat_id == 8301]


def _delivery_errors(reason: str) -> float:
    value = default_metrics().registry.get_sample_value(
        "facechain_delivery_errors_total", {"reason": reason}
    )
    return value or 0.0


def _config(**broker: Any) -> AppConfig:
    return AppConfig(broker=BrokerSettings(url="redis://127.0.0.1:6379/9", **broker))


@pytest.mark.parametrize(
    ("queues", "timeout"),
    [(["io"], 120 + 300), (["gpu"], 900 + 300), (["train"], 6 * 3600 + 300)],
)
def test_visibility_timeout_per_worker_role(queues: list[str], timeout: int) -> None:
    app = create_celery(_config(), queues=queues)
    options = app.conf.broker_transport_options
    assert options["visibility_timeout"] == timeout
    # Each role restores only its own unacked messages: an io worker's short timeout never
    # hands a running gpu or training message to a second worker.
    assert options["unacked_key"] == f"unacked:{queues[0]}"
    assert options["unacked_index_key"] == f"unacked_index:{queues[0]}"
    assert options["unacked_mutex_key"] == f"unacked_mutex:{queues[0]}"


def test_visibility_timeout_follows_the_limits_and_mixed_roles_take_the_longest() -> None:
    config = _config(io_time_limit=30, gpu_time_limit=600)
    assert create_celery(config, ["io"]).conf.broker_transport_options["visibility_timeout"] == (
        30 + 300
    )
    mixed = create_celery(config, ["io", "gpu"]).conf.broker_transport_options
    assert mixed["visibility_timeout"] == 600 + 300
    assert mixed["unacked_key"] == "unacked:gpu-io"
    # Producers consume nothing and keep the shared keys.
    producer = create_celery(config).conf.broker_transport_options
    assert "unacked_key" not in producer
    assert producer["visibility_timeout"] == 6 * 3600 + 300


async def test_a_task_s_bot_api_calls_share_its_time_limit(ctx: WorkerContext) -> None:
    """Two calls in one task cannot take twice the limit: each gets what is left of it."""
    from tasks import context as context_module
    from telegram_ui.client import DeadlineExceeded

    async def hang(bot: Any) -> None:
        await asyncio.sleep(60)

    def task_body() -> float:
        # What Celery's task_prerun does for an io task whose limit is IO_LIMIT_S.
        context_module._start_task_clock(task=type("T", (), {"soft_time_limit": IO_LIMIT_S}))
        started = time.monotonic()
        try:
            for _ in range(2):
                with pytest.raises(DeadlineExceeded):
                    ctx.call_telegram(hang)
        finally:
            context_module._stop_task_clock()
        return time.monotonic() - started

    elapsed = await asyncio.to_thread(task_body)
    assert IO_LIMIT_S - 0.2 < elapsed < IO_LIMIT_S + 1.0
