"""Real Celery worker processes for tests: `facechain-bot worker` in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

REDIS_URL = "redis://127.0.0.1:6379"


def redis_available() -> bool:
    """Whether the test Redis answers."""
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_test_url() -> str:
    """A Redis database of its own for this xdist worker, emptied."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = 5 + int("".join(c for c in worker if c.isdigit()) or 0)
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    return url


class CliProcess:
    """A `facechain-bot ...` child in its own process group; stop() is SIGTERM, kill() SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the group and wait (warm shutdown); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL the whole group (parent and children): no shutdown code runs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


class WorkerProcess(CliProcess):
    """A running `facechain-bot worker`."""

    def __init__(
        self,
        env: dict[str, str],
        queues: str,
        log_path: Path,
        concurrency: int = 1,
        hostname: str | None = None,
    ) -> None:
        super().__init__(
            [
                "worker",
                f"--queues={queues}",
                f"--concurrency={concurrency}",
                f"--hostname={hostname or f'test-{queues}-{os.getpid()}@%h'}",
            ],
            env,
            log_path,
        )


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, worker: WorkerProcess | None = None
) -> object:
    """Poll until predicate() is truthy; fail with the worker log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({worker.proc.returncode}) while waiting for "
                f"{what}\n--- worker log ---\n{worker.log()[-4000:]}"
            )
        time.sleep(0.2)
    detail = f"\n--- worker log ---\n{worker.log()[-4000:]}" if worker else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
