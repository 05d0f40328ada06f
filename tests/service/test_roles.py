"""Role processes as docker compose runs them: the `health` command against each role's probe,
and lean io workers and beat (no torch, diffusers or transformers; small RSS)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from service.cli import main
from service.probe import ProbeState, start_probe
from tests.utils.compose_stack import free_port
from tests.utils.stack import read_rss_kib
from tests.utils.workers import redis_available, redis_test_url

logger = logging.getLogger(__name__)

# The goal for an io worker or beat process (MiB of resident memory after start).
LEAN_RSS_MIB = 150


@pytest.fixture
def probe() -> Iterator[tuple[ProbeState, int]]:
    registry = CollectorRegistry()
    Counter("facechain_test_things", "things", registry=registry).inc()
    state = ProbeState("worker")
    server = start_probe("127.0.0.1", 0, state, registry)
    yield state, server.port
    server.shutdown()
    server.server_close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class TestProbe:
    def test_readiness_liveness_and_metrics(self, probe: tuple[ProbeState, int]) -> None:
        state, port = probe
        assert _get(port, "/healthz")[0] == 200
        status, body = _get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["reason"] == "starting"
        state.set_ready(queues=["io"])
        status, body = _get(port, "/readyz")
        report = json.loads(body)
        assert status == 200
        assert report["role"] == "worker"
        assert report["queues"] == ["io"]
        assert set(report["modules"]) == {"torch", "diffusers", "transformers"}
        status, body = _get(port, "/metrics")
        assert status == 200
        assert b"facechain_test_things_total 1.0" in body
        assert _get(port, "/api/v1/stats")[0] == 404

    def test_a_failing_check_makes_it_unready(self, probe: tuple[ProbeState, int]) -> None:
        state, port = probe
        state.set_ready()

        def broken() -> None:
            raise ConnectionError("broker gone")

        state.checks["broker"] = broken
        status, body = _get(port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] == {"broker": "ConnectionError"}


class TestHealthCommand:
    def test_exit_status_follows_readiness_and_role(
        self, probe: tuple[ProbeState, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        state, port = probe
        assert main(["health", "worker", "--port", str(port)]) == 1
        state.set_ready()
        assert main(["health", "worker", "--port", str(port)]) == 0
        # Another role's port is not this role's health.
        assert main(["health", "beat", "--port", str(port)]) == 1
        monkeypatch.setenv("PROBE_PORT", str(port))
        assert main(["health", "worker"]) == 0

    def test_unconfigured_and_unreachable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("PROBE_PORT", raising=False)
        assert main(["health", "bot"]) == 2
        assert main(["health", "bot", "--port", str(free_port())]) == 1


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            status, body = _get(port, "/readyz")
        except (urllib.error.URLError, OSError):
            status, body = 0, b""
        if status == 200:
            report: dict = json.loads(body)
            return report
        time.sleep(0.2)
    raise AssertionError(f"not ready after {seconds} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_io_worker_and_beat_never_import_torch(tmp_path: Path, database_url: str) -> None:
    broker = redis_test_url() if redis_available() else f"sqla+sqlite:///{tmp_path / 'b.db'}"
    env = {
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": database_url,
        "BROKER_URL": broker,
        "TELEGRAM_TOKEN": "123456:TEST-token-for-the-lean-test",
        "HF_HUB_OFFLINE": "1",
    }
    ports = {"worker": free_port(), "beat": free_port()}
    procs = {
        "worker": _start(
            ["worker", "--queues", "io", "--concurrency", "8"],
            {**env, "PROBE_PORT": str(ports["worker"])},
            tmp_path / "worker.log",
        ),
        "beat": _start(["beat"], {**env, "PROBE_PORT": str(ports["beat"])}, tmp_path / "beat.log"),
    }
    try:
        rss = {}
        for role, proc in procs.items():
            report = _wait_ready(ports[role], proc, tmp_path / f"{role}.log", 60)
            assert report["role"] == role
            assert report["modules"] == {"torch": False, "diffusers": False, "transformers": False}
            rss[role] = read_rss_kib(proc.pid) / 1024
        logger.warning("RSS after start: io worker %.0f MiB, beat %.0f MiB", *rss.values())
        assert all(mib <= LEAN_RSS_MIB for mib in rss.values()), rss
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)
