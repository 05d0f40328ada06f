"""Model registry: fake ModelScope download, local source, checksums, resume, offline resolve."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from facechain import registry
from facechain.errors import DownloadFailed, WeightsMissing
from facechain.registry import (
    ADAPTER_FILM,
    BASE_FILM,
    REGISTRY,
    TRANSFACE,
    download_models,
    resolve,
    verify_models,
)

# What the fake hub serves: per repo, relative path -> bytes.
REMOTE: dict[str, dict[str, bytes]] = {
    "ly261666/cv_portrait_model": {
        "film/film/unet/diffusion_pytorch_model.safetensors": b"unet" * 100,
        "film/film/model_index.json": b"{}",
        "realistic/unet/other.bin": b"not requested",
    },
    "yucheng1996/FaceChain-FACT": {
        ADAPTER_FILM.path: b"adapter" * 50,
        TRANSFACE.path: b"transface" * 50,
        ADAPTER_FILM.path.replace("film", "maj"): b"other adapter",
    },
}


class FakeHub:
    """Stands in for modelscope's snapshot_download, honouring allow_file_pattern."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, model_id: str, **kwargs: Any) -> str:
        self.calls.append({"model_id": model_id, **kwargs})
        root = Path(kwargs["cache_dir"]) / model_id
        for rel, data in REMOTE[model_id].items():
            if fnmatch.fnmatch(rel, kwargs["allow_file_pattern"]):
                path = root / rel
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
        return str(root)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(registry, "snapshot_download", fake)
    return fake


def corrupt_same_size(path: Path) -> None:
    """Flip the first byte in place (size unchanged), and keep the recorded mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class TestRegistry:
    def test_every_model_named_once_with_pinned_revision(self) -> None:
        assert set(REGISTRY) == {
            "base_film",
            "base_majic",
            "adapter_film",
            "adapter_majic",
            "transface",
            "controlnet_openpose",
            "openpose_annotator",
            "fairface",
            "upscaler_rrdb",
            "controlnet_canny",
            "default_style_lora",
            "safety_checker",
        }
        # FaceChain never pinned the RRDB upscaler (reference §3.1); its manifest sha256 pins it.
        assert all(
            spec.revision.startswith("v")
            for spec in REGISTRY.values()
            if spec.name != "upscaler_rrdb" and spec.hub == "modelscope"
        )
        # Hugging Face models are pinned to a commit.
        assert all(
            re.fullmatch(r"[0-9a-f]{40}", spec.revision)
            for spec in REGISTRY.values()
            if spec.hub == "huggingface"
        )
        locations = [(s.model_id, s.revision, s.path) for s in REGISTRY.values()]
        assert len(set(locations)) == len(locations)
        assert BASE_FILM.pattern == "film/film/*"
        assert TRANSFACE.pattern == "ms1mv2_model_TransFace_S.pt"


class TestDownload:
    def test_download_records_checksums_and_resolves(self, tmp_path: Path, hub: FakeHub) -> None:
        paths = download_models(tmp_path, only=["base_film", "transface"])

        assert [c["model_id"] for c in hub.calls] == [BASE_FILM.model_id, TRANSFACE.model_id]
        assert hub.calls[0]["revision"] == "v2.0"
        assert hub.calls[0]["allow_file_pattern"] == "film/film/*"
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        files = manifest["models"]["base_film"]["files"]
        assert set(files) == {
            "film/film/unet/diffusion_pytorch_model.safetensors",
            "film/film/model_index.json",
        }
        assert files["film/film/model_index.json"]["size"] == 2
        assert resolve(BASE_FILM, tmp_path) == paths["base_film"]
        assert (
            resolve("transface", tmp_path).read_bytes()
            == REMOTE[TRANSFACE.model_id][TRANSFACE.path]
        )
        assert verify_models(tmp_path, only=["base_film", "transface"]) == {}

    def test_resume_skips_good_models(self, tmp_path: Path, hub: FakeHub, monkeypatch) -> None:
        download_models(tmp_path, only=["base_film", "transface"])
        hashed: list[Path] = []
        real_sha = registry.sha256_file
        monkeypatch.setattr(registry, "sha256_file", lambda p: hashed.append(p) or real_sha(p))

        download_models(tmp_path, only=["base_film", "transface"])
        assert len(hub.calls) == 2
        assert hashed == []

        # A deleted file: only its model is fetched again, only that file is hashed again.
        gone = tmp_path / BASE_FILM.model_id / "film/film/model_index.json"
        gone.unlink()
        download_models(tmp_path, only=["base_film", "transface"])
        assert [c["model_id"] for c in hub.calls[2:]] == [BASE_FILM.model_id]
        assert hashed == [gone]

    def test_checksum_catches_corruption_and_verify_refetches(
        self, tmp_path: Path, hub: FakeHub
    ) -> None:
        download_models(tmp_path, only=["adapter_film"])
        ckpt = resolve(ADAPTER_FILM, tmp_path)
        corrupt_same_size(ckpt)

        assert verify_models(tmp_path, only=["adapter_film"]) == {"adapter_film": [ckpt]}
        download_models(tmp_path, only=["adapter_film"])  # cheap check cannot see it
        assert len(hub.calls) == 1
        download_models(tmp_path, only=["adapter_film"], verify=True)
        assert len(hub.calls) == 2
        assert ckpt.read_bytes() == REMOTE[ADAPTER_FILM.model_id][ADAPTER_FILM.path]
        assert verify_models(tmp_path, only=["adapter_film"]) == {}

    def test_local_source(self, tmp_path: Path, hub: FakeHub) -> None:
        source = tmp_path / "usb"
        for model_id, files in REMOTE.items():
            for rel, data in files.items():
                (source / model_id / rel).parent.mkdir(parents=True, exist_ok=True)
                (source / model_id / rel).write_bytes(data)
        cache = tmp_path / "cache"

        download_models(cache, only=["base_film", "adapter_film"], local_source=source)

        assert hub.calls == []
        assert resolve(BASE_FILM, cache).is_dir()
        assert not (cache / BASE_FILM.model_id / "realistic").exists()
        adapter = resolve(ADAPTER_FILM, cache)
        corrupt_same_size(adapter)
        download_models(cache, only=["adapter_film"], local_source=source, verify=True)
        assert verify_models(cache, only=["adapter_film"]) == {}
        with pytest.raises(WeightsMissing, match="local source"):
            download_models(cache, only=["controlnet_canny"], local_source=source)


class TestResolve:
    def test_missing_weights_name_the_download_command(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsMissing, match="facechain-bot models download") as exc:
            resolve(BASE_FILM, tmp_path)
        assert exc.value.code == "weights_missing"

    def test_truncated_file_is_missing(self, tmp_path: Path, hub: FakeHub) -> None:
        download_models(tmp_path, only=["transface"])
        path = resolve(TRANSFACE, tmp_path)
        path.write_bytes(b"short")
        with pytest.raises(WeightsMissing, match="facechain-bot models download"):
            resolve(TRANSFACE, tmp_path)

    def test_unknown_name(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="unknown models"):
            download_models(tmp_path, only=["sdxl"])


class TestUnreachableHub:
    def test_network_failure_is_one_readable_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def offline(model_id: str, **kwargs: Any) -> str:
            try:
                raise OSError("[Errno -2] Name or service not known")
            except OSError as dns:
                raise ConnectionError("Max retries exceeded with url: /api/v1/models") from dns

        monkeypatch.setattr(registry, "snapshot_download", offline)
        with pytest.raises(DownloadFailed) as info:
            download_models(tmp_path, only=["fairface"])
        message = str(info.value)
        assert "\n" not in message
        assert "fairface" in message
        assert "no network" in message
        assert "--from DIR" in message
        assert isinstance(info.value, WeightsMissing)

    def test_cli_download_without_network_prints_one_line_and_fails(self, tmp_path: Path) -> None:
        # The real hub client against an address that refuses at once (no DNS, no wait).
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DATA_DIR": str(tmp_path / "data"),
            "MODELSCOPE_DOMAIN": "127.0.0.1:9",
            "HF_HUB_OFFLINE": "1",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "service.cli", "models", "download", "--only", "fairface"],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout
        errors = [line for line in proc.stderr.splitlines() if "download failed" in line]
        assert len(errors) == 1, proc.stderr
        assert "fairface" in errors[0]


class TestHuggingFaceDownload:
    def test_the_checker_comes_from_the_hub_at_its_commit_with_only_its_files(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[dict[str, Any]] = []
        served = {
            "config.json": b"{}",
            "pytorch_model.bin": b"w" * 64,
            "README.md": b"card",
            "model.onnx": b"not requested",
        }

        def fake_hf(model_id: str, **kwargs: Any) -> str:
            calls.append({"model_id": model_id, **kwargs})
            root = Path(kwargs["local_dir"])
            root.mkdir(parents=True, exist_ok=True)
            for name, data in served.items():
                if any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"]):
                    (root / name).write_bytes(data)
            return str(root)

        monkeypatch.setattr(registry, "hf_snapshot_download", fake_hf)
        spec = registry.SAFETY_CHECKER
        paths = download_models(tmp_path, only=["safety_checker"])
        [call] = calls
        assert call["model_id"] == "CompVis/stable-diffusion-safety-checker"
        assert call["revision"] == spec.revision
        assert call["allow_patterns"] == ["config.json", "pytorch_model.bin"]
        folder = resolve(spec, tmp_path)
        assert folder == paths["safety_checker"]
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin"]
        files = json.loads((tmp_path / "manifest.json").read_text())["models"]["safety_checker"]
        assert set(files["files"]) == {"config.json", "pytorch_model.bin"}
        assert verify_models(tmp_path, only=["safety_checker"]) == {}
        corrupt_same_size(folder / "pytorch_model.bin")
        assert list(verify_models(tmp_path, only=["safety_checker"])) == ["safety_checker"]


class TestModelsList:
    def test_list_shows_presence_and_fallbacks(
        self, tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]
    ) -> None:
        download_models(tmp_path / "models", only=["transface"])
        code = main(["models", "list"], env_models_dir=tmp_path / "models")
        out = capsys.readouterr().out
        assert code == 0
        blocks = {b.split()[0]: b for b in out.split("\n") if b and not b.startswith(" ")}
        assert set(REGISTRY) <= set(blocks)
        text = out
        assert "present:" in section(text, "transface")
        assert "MISSING, fallback: no automatic subject prefix" in section(text, "fairface")
        assert "MISSING, fallback: pose photos are refused" in section(text, "openpose_annotator")
        assert "MISSING, required" in section(text, "base_film")
        checker = section(text, "safety_checker")
        assert "CompVis/stable-diffusion-safety-checker@" in checker
        assert "MISSING, required (SAFETY_REQUIRED=true: gpu workers take no job" in checker

    def test_list_says_unchecked_when_the_checker_is_optional(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("SAFETY_REQUIRED", "false")
        assert main(["models", "list"], env_models_dir=tmp_path / "models") == 0
        checker = section(capsys.readouterr().out, "safety_checker")
        assert "MISSING, fallback: pictures are NOT checked (SAFETY_REQUIRED=false)" in checker

    def test_missing_fallbacks(self, tmp_path: Path) -> None:
        missing = registry.missing_fallbacks(tmp_path)
        assert set(missing) == {s.name for s in REGISTRY.values() if s.fallback}
        assert {"openpose_annotator", "fairface", "upscaler_rrdb"} <= set(missing)


def section(text: str, name: str) -> str:
    """The three `models list` lines of one model."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
    return "\n".join(lines[start : start + 3])


def main(argv: list[str], env_models_dir: Path) -> int:
    """`facechain-bot models ...` in this process with ENGINE_MODELS_DIR set."""
    from service import cli

    old = os.environ.get("ENGINE_MODELS_DIR")
    os.environ["ENGINE_MODELS_DIR"] = str(env_models_dir)
    try:
        return int(cli.main(argv) or 0)
    finally:
        if old is None:
            os.environ.pop("ENGINE_MODELS_DIR")
        else:
            os.environ["ENGINE_MODELS_DIR"] = old
