"""A warm gpu worker: engine load time, its ready line to the first denoising step, and RSS.

A portrait job is queued (its message on the `gpu` queue) before a real `facechain-bot worker
--queues gpu` process starts, as after a deploy with a backlog. The figures:

- `engine load`: the worker's own `engine ready in X s` figure (both bases, ControlNet, the
  annotators present), all of it before the worker consumed anything;
- `ready line -> first step`: from the timestamp of that log line to the first progress row
  the engine's step callback wrote (the database is polled every 2 ms), i.e. broker connect,
  claim, selfie loading, pose/subject decisions and the first UNet step: no model loading;
- `ready line -> consuming`: to Celery's own `... ready.` line (broker connection, consumer);
- `first job total`: ready line to the job's outcome;
- `second job sent -> first step`: the same per-job work on a worker that has run a job
  already (publish to first step), the reference for "no model loading" in the first job;
- `worker RSS after ready`: VmRSS of the worker process (solo pool: it runs the tasks).

Needs PostgreSQL (DATABASE_URL, default the local test server; a fresh database is made and
dropped) and Redis (BROKER_URL, default 127.0.0.1:6379/13). Defaults of the README's tiny flow
otherwise (`ENGINE_PROFILE=tiny`, nothing else set).

Run: `python bench/warm_worker.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONSUMING = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*@\S+ ready\.$", re.M)
READY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*engine ready in ([\d.]+) s", re.M)


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(database_url: str, broker_url: str, data: Path) -> dict[str, float]:
    import redis
    from sqlalchemy import select

    from core.blobstore import LocalBlobStore
    from core.settings import AppConfig
    from db.models import Job, JobStatus
    from db.session import Database
    from tasks.celery_app import create_celery
    from tests.utils.factories import make_portrait_job, make_selfie, make_style, make_user

    redis.Redis.from_url(broker_url).flushdb()
    env = {
        **os.environ,
        "DATA_DIR": str(data),
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "ENGINE_PROFILE": "tiny",
        "TELEGRAM_TOKEN": "123:bench",
        "TELEGRAM_API_BASE_URL": "http://127.0.0.1:9/bot",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "INFO",
    }
    os.environ.update({k: env[k] for k in ("DATA_DIR", "DATABASE_URL", "BROKER_URL")})
    config = AppConfig()
    db = Database.from_url(database_url)
    blobs = LocalBlobStore(config.storage.blobs_path)
    with db.session() as s:
        user = make_user(s, telegram_id=int(time.time() * 1000) % 2_000_000_000)
        job_id = make_portrait_job(
            s, user, make_selfie(s, blobs, user), make_style(s, slug=f"b{user.id}")
        ).id
    celery = create_celery(config)
    celery.send_task("portrait.generate", args=[job_id], queue="gpu")

    log_path = data / f"worker-{job_id}.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--queues=gpu"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def wait(job: int) -> tuple[float, float]:
        """(first step, done) wall times of a job, polling its row every 2 ms."""
        first_step = None
        deadline = time.time() + 600
        while time.time() < deadline:
            with db.session() as s:
                status, progress = s.execute(
                    select(Job.status, Job.progress).where(Job.id == job)
                ).one()
            now = time.time()
            if first_step is None and progress and progress > 0:
                first_step = now
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                if status is not JobStatus.SUCCEEDED or first_step is None:
                    tail = log_path.read_text()[-3000:]
                    raise SystemExit(f"job {job} {status.value}:\n{tail}")
                return first_step, now
            if worker.poll() is not None:
                raise SystemExit(f"worker exited:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.002)
        raise SystemExit(f"job {job} did not finish:\n{log_path.read_text()[-3000:]}")

    try:
        first_step, done = wait(job_id)
        # The same work on a worker that has run a job already: what no loading costs.
        with db.session() as s:
            user = make_user(s, telegram_id=int(time.time() * 1000) % 2_000_000_000 + 1)
            style = make_style(s, slug=f"c{user.id}")
            second = make_portrait_job(s, user, make_selfie(s, blobs, user), style).id
        sent = time.time()
        celery.send_task("portrait.generate", args=[second], queue="gpu")
        second_step, _ = wait(second)
        match = READY.search(log_path.read_text())
        if match is None:
            raise SystemExit(f"no ready line or no step:\n{log_path.read_text()[-3000:]}")
        ready_at = _stamp(match.group(1))
        consuming = CONSUMING.search(log_path.read_text())
        consuming_at = _stamp(consuming.group(1)) if consuming else float("nan")
        rss = _rss_mib(worker.pid)
        after_ready = log_path.read_text()[match.end() :]
        loaded = [line for line in after_ready.splitlines() if "building" in line]
        if loaded:
            raise SystemExit(f"models were built after the ready line: {loaded}")
        return {
            "engine_load_s": float(match.group(2)),
            "ready_to_first_step_s": first_step - ready_at,
            "ready_to_consuming_s": consuming_at - ready_at,
            "ready_to_done_s": done - ready_at,
            "second_job_sent_to_first_step_s": second_step - sent,
            "rss_mib": rss,
        }
    finally:
        worker.terminate()
        worker.wait(60)
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tests.conftest import (
        drop_postgres_database,
        fresh_postgres_database,
        migrate,
        postgres_available,
    )

    broker_url = os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/13")
    own_db = None
    database_url = os.environ.get("DATABASE_URL")
    if database_url is None:
        if not postgres_available():
            raise SystemExit("no PostgreSQL: set DATABASE_URL")
        own_db = f"bench_warm_{os.getpid()}"
        database_url = fresh_postgres_database(own_db)
        migrate(database_url)
    try:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in range(args.runs):
                figures = one_run(database_url, broker_url, Path(tmp) / f"run{n}")
                print(
                    f"  run {n + 1}, engine load {figures['engine_load_s']:.2f} s, ready line -> "
                    f"first step {figures['ready_to_first_step_s']:.3f} s (Celery consuming after "
                    f"{figures['ready_to_consuming_s']:.3f} s), ready -> done "
                    f"{figures['ready_to_done_s']:.2f} s, second job sent -> first step "
                    f"{figures['second_job_sent_to_first_step_s']:.3f} s, "
                    f"worker RSS {figures['rss_mib']:.0f} MiB",
                    flush=True,
                )
                runs.append(figures)
    finally:
        if own_db is not None:
            drop_postgres_database(own_db)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"cpu tiny warm worker engine load seconds: {med('engine_load_s'):.2f}")
    first = med("ready_to_first_step_s")
    print(f"cpu tiny warm worker ready line to first step seconds: {first:.3f}")
    print(
        f"cpu tiny warm worker ready line to first job done seconds: {med('ready_to_done_s'):.2f}"
    )
    consuming = med("ready_to_consuming_s")
    print(f"cpu tiny warm worker ready line to Celery consuming seconds: {consuming:.3f}")
    second = med("second_job_sent_to_first_step_s")
    print(f"cpu tiny warm worker second job sent to first step seconds: {second:.3f}")
    print(f"cpu tiny warm worker RSS MiB: {med('rss_mib'):.0f}")


if __name__ == "__main__":
    main()
