"""`.ci/run` insists on the real servers: without PostgreSQL or Redis it stops at once with one
line instead of running a suite whose row-lock and Redis tests would skip or fall back."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fake_tools(bin_dir: Path, *, postgres: bool, redis: bool) -> None:
    """Stand-ins for the service tools on PATH: each server up or down as asked."""
    scripts = {
        "pg_isready": "exit 0" if postgres else "exit 2",
        "pg_ctlcluster": "exit 1",
        "redis-cli": "echo PONG" if redis else "exit 1",
        "redis-server": "exit 1",
        "sleep": "exit 0",
        # Past the service checks the script must not get anywhere: a venv in the copy only.
        "python3": "echo 'install reached' >&2; exit 97",
    }
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_ci(tmp_path: Path, *, postgres: bool, redis: bool) -> subprocess.CompletedProcess[str]:
    # A copy of the script in an empty tree: it cds to its parent's parent, never to this repo.
    (tmp_path / "repo" / ".ci").mkdir(parents=True)
    script = tmp_path / "repo" / ".ci" / "run"
    shutil.copy(ROOT / ".ci" / "run", script)
    fake_tools(tmp_path / "bin", postgres=postgres, redis=redis)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": path},
        check=False,
    )


@pytest.mark.parametrize(
    ("postgres", "redis", "line"),
    [
        (False, True, "CI needs PostgreSQL on 127.0.0.1:5432 and it could not be started"),
        (True, False, "CI needs Redis on 127.0.0.1:6379 and it could not be started"),
    ],
)
def test_ci_stops_without_a_server(tmp_path: Path, postgres: bool, redis: bool, line: str) -> None:
    result = run_ci(tmp_path, postgres=postgres, redis=redis)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == line
    assert "install reached" not in result.stderr


def test_ci_goes_on_with_both_servers(tmp_path: Path) -> None:
    result = run_ci(tmp_path, postgres=True, redis=True)
    assert result.returncode == 97
    assert "install reached" in result.stderr
