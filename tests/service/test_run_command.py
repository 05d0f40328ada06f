"""`facechain-bot run` with the embedded defaults (SQLite, SQLite broker, local blobs): it
starts every role, a user gets an album through it, and Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from core.settings import EngineSettings
from telegram_ui.i18n import translate
from tests.utils.fake_telegram import TOKEN, FakeTelegram

FACES = Path(__file__).resolve().parents[1] / "fixtures" / "faces"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"run exited early:\n{log.read_text()[-3000:]}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"web never became healthy:\n{log.read_text()[-3000:]}")


async def test_run_serves_a_user_and_stops_on_ctrl_c(tg: FakeTelegram, tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "BROKER_", "TELEGRAM_", "STORAGE_", "ENGINE_"))
    }
    env.update(
        {
            "TELEGRAM_TOKEN": TOKEN,
            "TELEGRAM_API_BASE_URL": tg.api_base_url,
            "TELEGRAM_FILE_BASE_URL": tg.file_base_url,
            "DATA_DIR": str(tmp_path / "data"),
            "ADMIN_PORT": str(port),
            # The README's newcomer flow: the tiny profile and nothing else (default steps,
            # images, candidates and likeness floor; tiny images never pass the floor).
            "ENGINE_PROFILE": "tiny",
        }
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
        user = tg.user(9001, "Ann", "en")
        tg.send_text(user, "/start")
        await tg.wait_for("sendMessage", chat_id=user.id, within=30)
        tg.send_photo(user, (FACES / "woman_pose1.png").read_bytes())
        await tg.wait_for("sendPhoto", chat_id=user.id, within=60)
        picker = tg.bot_messages(user.id)[-1]
        tg.press_button(user, picker, translate("en", "btn.use_style"))
        album = await tg.wait_for("sendMediaGroup", chat_id=user.id, within=240)
        assert album.ok
        assert len(album.get("media")) == EngineSettings.model_fields["num_images"].default
        # Noise never resembles the selfie: the album still comes, with the likeness tip.
        await tg.wait_text(user.id, translate("en", "job.low_likeness"), within=30)
        assert (tmp_path / "data" / "facechain.db").exists()
        assert (tmp_path / "data" / "broker.db").exists()
        # A worker per queue: gpu, train (a training never holds portraits up) and io + beat
        # (a worker's pool or embedded beat process repeats its command line).
        commands = [
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            for pid in processes_with_env(f"DATA_DIR={tmp_path / 'data'}")
        ]
        for queues in ("--queues=gpu", "--queues=train", "--queues=io --beat"):
            assert any(queues in command for command in commands), (queues, commands)

        # The gpu worker dies (SIGKILL to its process group): run starts it again, and the
        # next portrait is painted by the new one.
        [gpu] = worker_pids(tmp_path, "--queues=gpu")
        os.killpg(gpu, signal.SIGKILL)
        since = len(tg.calls)
        deadline = time.monotonic() + 120
        while worker_pids(tmp_path, "--queues=gpu") in ([], [gpu]):
            assert time.monotonic() < deadline, "the gpu worker was not started again"
            await asyncio.sleep(0.5)
        tg.press_button(user, picker, translate("en", "btn.use_style"))
        album = await tg.wait_for("sendMediaGroup", chat_id=user.id, since=since, within=240)
        assert album.ok
        assert "worker gpu started again" in log.read_text()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- run log ---\n{log.read_text()[-4000:]}") from None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    leftovers = processes_with_env(f"DATA_DIR={tmp_path / 'data'}")
    described = [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in leftovers
    ]
    assert leftovers == [], described


def worker_pids(tmp_path: Path, queues: str) -> list[int]:
    """The run's worker processes for these queues (a solo-pool worker is one process)."""
    found = []
    for pid in processes_with_env(f"DATA_DIR={tmp_path / 'data'}"):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if queues in command and "defunct" not in command:
            found.append(pid)
    return found


def processes_with_env(entry: str) -> list[int]:
    """Pids of live processes whose environment holds `entry` (the run's worker children)."""
    pids = []
    needle = entry.encode()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            pids.append(int(proc_dir.name))
    return pids


def _run_env(tmp_path: Path, api_base_url: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BROKER_"))}
    env.update(
        {
            "TELEGRAM_TOKEN": token,
            "TELEGRAM_API_BASE_URL": api_base_url,
            "DATA_DIR": str(tmp_path / "data"),
            "ADMIN_PORT": str(free_port()),
            "ENGINE_PROFILE": "tiny",
        }
    )
    return env


async def test_rejected_token_is_one_readable_line(tg: FakeTelegram, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        "run",
        env=_run_env(tmp_path, tg.api_base_url, "999:not-the-token"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    text = err.decode()
    assert "TELEGRAM_TOKEN was rejected" in text
    assert "Traceback" not in text
    assert processes_with_env(f"DATA_DIR={tmp_path / 'data'}") == []


async def test_unreachable_api_is_one_readable_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/bot"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        "run",
        env=_run_env(tmp_path, url, TOKEN),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1
    text = err.decode()
    assert f"cannot reach the Telegram Bot API at {url}" in text
    assert "Traceback" not in text
