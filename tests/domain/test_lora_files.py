"""Style LoRA files: catalog LoRAs downloaded on first use and cached, blob LoRAs copied to a
cache file, missing ones reported with the command that fetches them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from core.blobstore import LocalBlobStore
from core.errors import StyleLoRAMissing
from domain.catalog import import_catalog
from domain.loras import (
    DOWNLOAD_COMMAND,
    catalog_lora_path,
    download_style_loras,
    resolve_style_lora,
)
from domain.workerfiles import lora_cache_dir, prune_lora_cache
from facechain import registry
from tests.domain.lora_data import kohya_lora, to_bytes
from tests.utils.factories import make_style


class FakeHub:
    """Stands in for ModelScope: writes a valid LoRA for each requested file."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail or set()

    def __call__(self, model_id: str, **kwargs: Any) -> str:
        filename = kwargs["allow_file_pattern"]
        self.calls.append((model_id, kwargs["revision"], filename))
        if model_id in self.fail:
            raise ConnectionError("hub unreachable")
        target = Path(kwargs["local_dir"]) / filename
        target.write_bytes(to_bytes(kohya_lora(seed=len(self.calls))))
        return kwargs["local_dir"]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(registry, "snapshot_download", fake)
    return fake


def catalog_style(session: Session, **kw: Any):  # type: ignore[no-untyped-def]
    return make_style(
        session,
        slug=kw.pop("slug", "polaroid-style"),
        prompt_template="style",
        lora_model_id=kw.pop("model_id", "YorickHe/polaroid_lora"),
        lora_revision="v1.0.0",
        lora_file=kw.pop("lora_file", "InstantPhotoX3.safetensors"),
        **kw,
    )


class TestCatalogLoRA:
    def test_downloaded_on_first_use_then_cached(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path, hub: FakeHub
    ) -> None:
        style = catalog_style(session)
        path = resolve_style_lora(style, tmp_path, blobs)
        assert path == tmp_path / "styles/YorickHe/polaroid_lora/v1.0.0/InstantPhotoX3.safetensors"
        assert hub.calls == [("YorickHe/polaroid_lora", "v1.0.0", "InstantPhotoX3.safetensors")]
        record = json.loads(path.with_name(path.name + ".json").read_text())
        assert record["size"] == path.stat().st_size
        assert len(record["sha256"]) == 64
        assert record["format"] == "kohya"
        assert resolve_style_lora(style, tmp_path, blobs, download=False) == path
        assert len(hub.calls) == 1

    def test_missing_without_download_says_how_to_fetch(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path, hub: FakeHub
    ) -> None:
        style = catalog_style(session)
        with pytest.raises(StyleLoRAMissing) as info:
            resolve_style_lora(style, tmp_path, blobs, download=False)
        message = str(info.value)
        assert "polaroid-style" in message
        assert "InstantPhotoX3.safetensors" in message
        assert DOWNLOAD_COMMAND in message
        assert info.value.code == "style_lora_missing"
        assert hub.calls == []

    def test_unreachable_hub_is_a_typed_error(
        self,
        session: Session,
        blobs: LocalBlobStore,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(
            registry, "snapshot_download", FakeHub(fail={"YorickHe/polaroid_lora"})
        )
        with pytest.raises(StyleLoRAMissing, match="could not be downloaded"):
            resolve_style_lora(catalog_style(session), tmp_path, blobs)

    def test_a_file_that_is_not_a_lora_is_not_kept(
        self,
        session: Session,
        blobs: LocalBlobStore,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def bad_hub(model_id: str, **kwargs: Any) -> str:
            (Path(kwargs["local_dir"]) / kwargs["allow_file_pattern"]).write_bytes(b"<html>")
            return str(kwargs["local_dir"])

        monkeypatch.setattr(registry, "snapshot_download", bad_hub)
        style = catalog_style(session)
        with pytest.raises(StyleLoRAMissing, match="not usable"):
            resolve_style_lora(style, tmp_path, blobs)
        assert not catalog_lora_path(
            tmp_path, "YorickHe/polaroid_lora", "v1.0.0", "InstantPhotoX3.safetensors"
        ).exists()

    def test_cloth_styles_use_the_default_lora(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path, hub: FakeHub
    ) -> None:
        assert resolve_style_lora(make_style(session), tmp_path, blobs) is None
        assert hub.calls == []

    def test_download_all_fetches_each_file_once(
        self,
        session: Session,
        blobs: LocalBlobStore,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import_catalog(session, blobs)
        hub = FakeHub(fail={"Licht000/witch"})
        monkeypatch.setattr(registry, "snapshot_download", hub)
        report = download_style_loras(session, tmp_path)
        # 68 catalog styles have a LoRA, 63 distinct files (InstantPhotoX3 backs six styles).
        assert len(hub.calls) == len(set(hub.calls)) == 63
        assert len(report.downloaded) == 62
        assert list(report.failed) == ["Licht000/witch@v1.0.0/Moon Witch.safetensors"]
        again = download_style_loras(session, tmp_path)
        assert len(again.cached) == 62
        assert len(hub.calls) == 64


class TestBlobLoRA:
    def test_blob_copied_to_a_cache_file(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path
    ) -> None:
        data = to_bytes(kohya_lora())
        style = make_style(session, slug="mine", lora_blob=blobs.put(data))
        path = resolve_style_lora(style, tmp_path, blobs)
        assert path is not None
        assert path.read_bytes() == data
        assert path.name == f"{style.lora_blob}.safetensors"

    def test_missing_blob_is_reported(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path
    ) -> None:
        style = make_style(session, slug="gone", lora_blob="0" * 64)
        with pytest.raises(StyleLoRAMissing, match="missing from the blob store"):
            resolve_style_lora(style, tmp_path, blobs)

    def test_a_cached_copy_is_not_used_once_its_blob_is_deleted(
        self, session: Session, blobs: LocalBlobStore, tmp_path: Path
    ) -> None:
        data = to_bytes(kohya_lora())
        style = make_style(session, slug="forgotten", lora_blob=blobs.put(data))
        path = resolve_style_lora(style, tmp_path, blobs)
        assert path is not None
        assert path.is_file()
        blobs.delete(style.lora_blob)  # /forget (or a deleted style), on another machine
        with pytest.raises(StyleLoRAMissing, match="missing from the blob store"):
            resolve_style_lora(style, tmp_path, blobs)
        assert not path.exists()

    def test_prune_drops_cached_copies_whose_blob_is_gone(
        self, blobs: LocalBlobStore, tmp_path: Path
    ) -> None:
        kept_key = blobs.put(b"kept-lora")
        gone_key = blobs.put(b"gone-lora")
        folder = lora_cache_dir(tmp_path)
        folder.mkdir(parents=True)
        for key in (kept_key, gone_key):
            (folder / f"{key}.safetensors").write_bytes(b"x")
        (folder / ".tmp-abc").write_bytes(b"being written")
        blobs.delete(gone_key)
        assert prune_lora_cache(tmp_path, blobs) == 1
        assert sorted(p.name for p in folder.iterdir()) == [".tmp-abc", f"{kept_key}.safetensors"]
