"""The console entry point: help for every subcommand, readable failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]

SUBCOMMANDS = [
    "run",
    "bot",
    "web",
    "worker",
    "beat",
    "migrate",
    "models",
    "styles",
    "portrait",
    "inpaint",
]


class TestHelp:
    def test_top_level_lists_every_subcommand(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        for name in SUBCOMMANDS:
            assert f"    {name} " in out

    @pytest.mark.parametrize("name", SUBCOMMANDS)
    def test_each_subcommand_has_help(self, name: str, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: facechain-bot {name}" in out
        assert len(out.splitlines()) >= 3

    def test_console_script_runs(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0
        assert "FaceChain Bot" in proc.stdout


class TestFailures:
    def test_run_without_token_explains_and_exits_2(self, tmp_path: Path) -> None:
        env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2
        assert "@BotFather" in proc.stderr
        assert "TELEGRAM_TOKEN=" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_bad_setting_is_one_readable_line(self, tmp_path: Path) -> None:
        env = {
            "PATH": "/usr/bin:/bin",
            "DATA_DIR": str(tmp_path),
            "ENGINE_PROFILE": "huge",
            "HOME": str(tmp_path),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "migrate"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2
        assert "ENGINE_PROFILE:" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_webhook_mode_with_a_short_secret_refuses_to_start(self, tmp_path: Path) -> None:
        """A guessable webhook secret (3 characters) stops the bot before it starts, with one
        line that names the variable."""
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(ROOT),
            "DATA_DIR": str(tmp_path),
            "HOME": str(tmp_path),
            "TELEGRAM_TOKEN": "123456:TEST-token",
            "TELEGRAM_MODE": "webhook",
            "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/webhook",
            "TELEGRAM_WEBHOOK_SECRET": "abc",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "bot"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tmp_path,
        )
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        [line] = [x for x in proc.stderr.splitlines() if "TELEGRAM_WEBHOOK_SECRET" in x]
        reason = "must be at least 16 characters (try: openssl rand -hex 24)"
        assert line.strip() == f"TELEGRAM_WEBHOOK_SECRET: {reason}"

    def test_parser_requires_a_command(self) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args([])


class TestDecodeBound:
    def test_every_role_bounds_its_decodes_from_the_setting(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # bot, web and worker all build their config through _config(): the bound is set there.
        from facechain import imageio
        from service import cli

        monkeypatch.setenv("LIMITS_DECODE_CONCURRENCY", "3")
        try:
            cli._config()
            slots = imageio._decode_slots
            assert [slots.acquire(blocking=False) for _ in range(4)] == [True] * 3 + [False]
            for _ in range(3):
                slots.release()
        finally:
            imageio.configure_decoding(imageio.DEFAULT_DECODE_CONCURRENCY)
