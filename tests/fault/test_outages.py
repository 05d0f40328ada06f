"""Outages of the servers the service stands on, with the real bot, real workers, PostgreSQL and a
Redis of the test's own: Redis restarted (without persistence) while jobs are queued and running,
and the database unreachable for a while. Nothing is lost once they are back."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlalchemy.engine import make_url

from db.base import db_now
from db.models import Job, JobStatus
from tests.e2e.test_chat import album_of, delivered, freeze_gpu_child
from tests.utils.chat import JOB_SECONDS, prefix, press, send_selfie, text, use_style
from tests.utils.redis_server import OwnRedis, redis_server_available
from tests.utils.stack import Stack, open_stack
from tests.utils.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    """A redis-server only this module uses, so it can be killed."""
    if not redis_server_available():
        pytest.skip("redis-server is not installed")
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def db_proxy(database_url: str) -> Iterator[TcpProxy]:
    """A cuttable proxy in front of the test PostgreSQL (the bot and workers go through it)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the database outage test needs PostgreSQL")
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxy.start()
    yield proxy
    proxy.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str,
    own_redis: OwnRedis,
    db_proxy: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """Bot and workers on the module's own Redis and, through the proxy, the test database."""
    proxied = make_url(database_url).set(port=db_proxy.port).render_as_string(False)
    async with open_stack(
        database_url,
        own_redis.url,
        tmp_path_factory.mktemp("outages"),
        service_database_url=proxied,
    ) as running:
        yield running


def reconnects(stack: Stack) -> int:
    """How many times the workers (re)connected to the broker so far."""
    return sum(w.log().count("Connected to redis://") for w in stack.workers.values())


class TestRedisRestart:
    async def test_nothing_is_lost_when_redis_restarts(
        self, stack: Stack, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
    ) -> None:
        tg = stack.tg
        users = [tg.user(820001 + i, f"R{i}", "en") for i in range(4)]
        running_user, late_user = users[0], users[3]
        selfies = ("man_pose1.png", "woman_pose1.png", "man_pose2.png", "woman_pose2.png")
        pickers = [await send_selfie(tg, u, name) for u, name in zip(users, selfies, strict=True)]
        for user, picker in zip(users[:3], pickers[:3], strict=True):
            await use_style(tg, user, picker)
        [running] = stack.jobs_of(running_user.id)
        await stack.wait(
            lambda: stack.job(running.id).status is JobStatus.RUNNING, JOB_SECONDS, "running"
        )
        queued = [stack.jobs_of(u.id)[0].id for u in users[1:3]]
        await stack.wait(
            lambda: all(stack.job(j).dispatched_at for j in queued), 30, "jobs published"
        )
        assert own_redis.queue_length("gpu") == 2  # the two others wait in Redis

        caplog.set_level(logging.INFO)
        # Hold the running job still, so it is surely in flight when Redis goes away.
        child = await freeze_gpu_child(stack)
        try:
            own_redis.kill()
            # A style picked while Redis is down: the job is committed; the outbox sends it later.
            await use_style(tg, late_user, pickers[3])
            await stack.wait(
                lambda: any("not dispatched now" in r.getMessage() for r in caplog.records),
                60,
                "the bot gives up publishing",
            )
            [late] = stack.jobs_of(late_user.id)
            assert stack.job(late.id).dispatched_at is None
        finally:
            os.kill(child, signal.SIGCONT)
        # The running job finishes, but its delivery cannot be queued.
        gpu = stack.workers["gpu"]
        await stack.wait(
            lambda: f"job {running.id}: delivery not queued" in gpu.log(), JOB_SECONDS, "finished"
        )
        assert stack.job(running.id).status is JobStatus.SUCCEEDED
        before = reconnects(stack)
        own_redis.start()
        await stack.wait(lambda: reconnects(stack) >= before + 2, 60, "workers reconnect")

        # Five minutes on (`lifecycle.REQUEUE_AFTER`), no worker has claimed the two queued jobs:
        # the broker's lease on them expired, and the sweep re-queues them.
        with stack.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(queued))
                .values(lease_expires_at=db_now(s) - timedelta(seconds=1))
            )
        swept = stack.sweep(redeliver_after=timedelta(0))
        assert swept["resent"] == 3  # two lost messages and the never-sent one
        assert swept["redelivered"] == 1  # the lost album
        for user in users:
            await album_of(stack, user)
        for user in users:
            [job] = stack.jobs_of(user.id)
            await delivered(stack, job.id)
            assert len(stack.albums(user.id)) == 1
            assert stack.job(job.id).attempts == 1


class TestDatabaseOutage:
    async def test_bot_says_busy_and_work_resumes(self, stack: Stack, db_proxy: TcpProxy) -> None:
        tg = stack.tg
        ann = tg.user(820101, "Ann", "en")
        ben = tg.user(820102, "Ben", "en")
        cid = tg.user(820103, "Cid", "ru")
        picker = await send_selfie(tg, ann, "man_pose3.png")
        await use_style(tg, ben, await send_selfie(tg, ben, "woman_pose3.png"))
        [ben_job] = stack.jobs_of(ben.id)
        await stack.wait(
            lambda: stack.job(ben_job.id).status is JobStatus.RUNNING, JOB_SECONDS, "running"
        )
        gpu = stack.workers["gpu"]
        child = await freeze_gpu_child(stack)
        db_proxy.cut()
        try:
            since = await press(tg, ann, picker, text(ann, "btn.use_style"), answer=False)
            await tg.wait_text(ann.id, text(ann, "error.busy"), since=since)
            since = len(tg.calls)
            tg.send_text(cid, "/start")
            await tg.wait_text(cid.id, text(cid, "error.busy"), since=since)
            # The running job meets the outage too: its progress is not recorded, it goes on.
            offset = len(gpu.log())
            os.kill(child, signal.SIGCONT)
            await stack.wait(
                lambda: "progress not recorded" in gpu.log()[offset:], 60, "progress skipped"
            )
            os.kill(child, signal.SIGSTOP)
        finally:
            db_proxy.restore()
            os.kill(child, signal.SIGCONT)

        since = await press(tg, ann, picker, text(ann, "btn.use_style"))
        await tg.wait_text(ann.id, prefix(ann, "job.queued"), since=since)
        since = len(tg.calls)
        tg.send_text(cid, "/start")
        await tg.wait_text(cid.id, prefix(cid, "start.welcome"), since=since)
        await album_of(stack, ben)
        await album_of(stack, ann)
        [ben_job] = stack.jobs_of(ben.id)
        assert ben_job.attempts == 1
        assert len(stack.albums(ben.id)) == 1
        assert stack.app is not None
        assert stack.app.running
        assert all(w.proc.poll() is None for w in stack.workers.values())
