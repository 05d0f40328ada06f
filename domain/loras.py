"""Style LoRA files: where each style's weights live on a worker, and checking uploaded ones.

Catalog styles name a ModelScope LoRA (id, revision, file) that is downloaded on first use into
`<models_dir>/styles/<model_id>/<revision>/` and recorded with its size and sha256; uploaded and
trained styles keep their LoRA in the blob store and are copied into a local cache file named
by the blob key. On the tiny profile a catalog style gets seeded stand-in weights instead
(`facechain.tiny.catalog_style_lora`). Uploads are validated before anything is stored:
safetensors only (pickled checkpoints are refused without being read), tensor names and shapes
against the SD1.5 UNet and text encoder, rank, and the LIMITS_MAX_LORA_BYTES size limit.

`facechain.lora` (torch) is imported where it is used, so the admin web does not load torch
until an upload arrives."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy.orm import Session

from core.blobstore import BlobStore, sha256_hex, write_atomic
from core.errors import BlobMissing, InvalidStyleUpload, StyleLoRAMissing
from core.settings import LimitsSettings
from db.models import Style
from db.repositories.styles import StyleRepository
from domain.workerfiles import lora_cache_dir
from facechain import registry
from facechain.errors import InvalidLoRA

if TYPE_CHECKING:
    from facechain.lora import LoRAInfo

logger = logging.getLogger(__name__)

Profile = Literal["real", "tiny"]

STYLES_CACHE = "styles"
DOWNLOAD_COMMAND = "facechain-bot models download --styles"
# torch.save writes a zip archive (PK..), older torch and pickle files start with the pickle
# protocol opcode 0x80: both would execute code on load, so they are refused unread.
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


@dataclass
class LoRADownloadReport:
    """Outcome of `download_style_loras`, keyed by `model_id@revision/file`."""

    downloaded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"style LoRAs: {len(self.downloaded)} downloaded, {len(self.cached)} already cached, "
            f"{len(self.failed)} failed"
        )


# --- LoRA files ---------------------------------------------------------------------------


def styles_cache_dir(models_dir: Path) -> Path:
    """Root of the style LoRA cache inside the models folder."""
    return models_dir / STYLES_CACHE


def catalog_lora_path(models_dir: Path, model_id: str, revision: str, filename: str) -> Path:
    """Where a catalog LoRA lives once downloaded (revisions kept apart)."""
    if ".." in Path(model_id).parts or ".." in Path(filename).parts or ".." in revision:
        raise ValueError(f"unsafe LoRA reference {model_id}@{revision}/{filename}")
    return styles_cache_dir(models_dir) / model_id / revision / filename


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached_ok(path: Path) -> bool:
    """The file is there and has the size recorded when it was downloaded and checked."""
    record = _record_path(path)
    if not path.is_file() or not record.is_file():
        return False
    size = json.loads(record.read_text(encoding="utf-8")).get("size")
    return bool(path.stat().st_size == size)


def _lora_ref(model_id: str, revision: str, filename: str) -> str:
    return f"{model_id}@{revision}/{filename}"


def fetch_catalog_lora(models_dir: Path, model_id: str, revision: str, filename: str) -> Path:
    """Download one catalog LoRA from ModelScope (cached), check it, record size and sha256.

    Raises:
        StyleLoRAMissing: the download failed or the file is not a usable SD1.5 LoRA.
    """
    path = catalog_lora_path(models_dir, model_id, revision, filename)
    if _cached_ok(path):
        return path
    ref = _lora_ref(model_id, revision, filename)
    logger.info("downloading style LoRA %s", ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        registry.snapshot_download(
            model_id, revision=revision, local_dir=str(path.parent), allow_file_pattern=filename
        )
    except Exception as exc:  # network, hub or disk: all mean "not available now"
        raise StyleLoRAMissing(
            f"style LoRA {ref} could not be downloaded ({type(exc).__name__}: {exc}); "
            f"check the network and run `{DOWNLOAD_COMMAND}`",
            ref=ref,
        ) from exc
    if not path.is_file():
        raise StyleLoRAMissing(f"style LoRA {ref}: {filename} is not in the repository", ref=ref)
    from facechain.lora import inspect_lora

    try:
        info = inspect_lora(path)
    except InvalidLoRA as exc:
        path.unlink(missing_ok=True)
        raise StyleLoRAMissing(f"style LoRA {ref} is not usable: {exc}", ref=ref) from exc
    record = {
        "model_id": model_id,
        "revision": revision,
        "file": filename,
        "size": path.stat().st_size,
        "sha256": registry.sha256_file(path),
        "format": info.format,
        "rank": info.rank,
    }
    _record_path(path).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return path


def _blob_lora_path(models_dir: Path, blobs: BlobStore, key: str) -> Path:
    """A local file holding the LoRA blob `key` (written once, atomically).

    A cached file is used only while its blob still exists: once the blob is deleted (/forget,
    a deleted style) the file is dropped here, and `workerfiles.prune_lora_cache` drops the ones
    nobody asks for."""
    path = lora_cache_dir(models_dir) / f"{key}.safetensors"
    if path.is_file():
        if blobs.exists(key):
            return path
        path.unlink(missing_ok=True)
        raise BlobMissing(f"blob {key} not found")
    data = blobs.get(key)
    if sha256_hex(data) != key:
        raise StyleLoRAMissing(f"LoRA blob {key} is corrupt (checksum mismatch)", blob=key)
    write_atomic(path, data)
    return path


def resolve_style_lora(
    style: Style,
    models_dir: Path,
    blobs: BlobStore,
    *,
    profile: Profile = "real",
    download: bool = True,
) -> Path | None:
    """Local path of a style's LoRA, fetching it on first use; None = the default style LoRA.

    On the tiny profile a catalog style's LoRA is a seeded stand-in in the tiny UNet's layout.

    Raises:
        StyleLoRAMissing: the file is not cached and cannot be fetched (the message says how).
    """
    if style.lora_blob:
        try:
            return _blob_lora_path(models_dir, blobs, style.lora_blob)
        except BlobMissing as exc:
            raise StyleLoRAMissing(
                f"style {style.slug!r}: its LoRA blob {style.lora_blob} is missing from the blob "
                "store; upload the LoRA again or delete the style",
                style=style.slug,
            ) from exc
    if not style.lora_model_id:
        return None
    if profile == "tiny":
        return tiny_catalog_lora(models_dir, style.slug)
    if not (style.lora_revision and style.lora_file):
        raise StyleLoRAMissing(f"style {style.slug!r} names a LoRA repository but no file")
    path = catalog_lora_path(models_dir, style.lora_model_id, style.lora_revision, style.lora_file)
    if _cached_ok(path):
        return path
    ref = _lora_ref(style.lora_model_id, style.lora_revision, style.lora_file)
    if not download:
        raise StyleLoRAMissing(
            f"style {style.slug!r}: LoRA {ref} is not downloaded; run `{DOWNLOAD_COMMAND}`",
            style=style.slug,
            ref=ref,
        )
    try:
        return fetch_catalog_lora(
            models_dir, style.lora_model_id, style.lora_revision, style.lora_file
        )
    except StyleLoRAMissing as exc:
        raise StyleLoRAMissing(f"style {style.slug!r}: {exc}", style=style.slug, ref=ref) from exc


def tiny_catalog_lora(models_dir: Path, slug: str) -> Path:
    """The tiny profile's stand-in for a catalog style's LoRA (written once per slug)."""
    from facechain import tiny

    return tiny.catalog_style_lora(models_dir / "tiny-style-loras", slug)


def download_style_loras(
    session: Session, models_dir: Path, *, enabled_only: bool = False
) -> LoRADownloadReport:
    """Fetch every catalog style's LoRA (each distinct file once); failures are reported."""
    report = LoRADownloadReport()
    seen: set[str] = set()
    for style in StyleRepository(session).catalog_with_lora():
        if enabled_only and not style.enabled:
            continue
        if not (style.lora_model_id and style.lora_revision and style.lora_file):
            continue
        ref = _lora_ref(style.lora_model_id, style.lora_revision, style.lora_file)
        if ref in seen:
            continue
        seen.add(ref)
        path = catalog_lora_path(
            models_dir, style.lora_model_id, style.lora_revision, style.lora_file
        )
        if _cached_ok(path):
            report.cached.append(ref)
            continue
        try:
            fetch_catalog_lora(
                models_dir, style.lora_model_id, style.lora_revision, style.lora_file
            )
        except StyleLoRAMissing as exc:
            logger.warning("%s", exc)
            report.failed[ref] = str(exc)
        else:
            report.downloaded.append(ref)
    logger.info("%s", report.summary())
    return report


# --- uploads --------------------------------------------------------------------------------


def validate_lora_bytes(data: bytes, *, max_bytes: int | None = None) -> LoRAInfo:
    """Check an uploaded LoRA without unpickling anything.

    Raises:
        InvalidStyleUpload: empty, too big, a pickle/.ckpt, not safetensors, or not an SD1.5
            LoRA (tensor names, shapes, rank, LoCon layers).
    """
    limit = max_bytes if max_bytes is not None else LimitsSettings().max_lora_bytes
    if not data:
        raise InvalidStyleUpload("the LoRA file is empty")
    if len(data) > limit:
        raise InvalidStyleUpload(f"the LoRA file is {len(data)} bytes; the limit is {limit}")
    if data.startswith(_PICKLE_MAGIC):
        raise InvalidStyleUpload(
            "pickled checkpoints (.ckpt, .pt, .bin) are not accepted because loading them can "
            "run code; convert the LoRA to .safetensors"
        )
    with tempfile.TemporaryDirectory(prefix="lora-upload-") as tmp:
        path = Path(tmp) / "upload.safetensors"
        path.write_bytes(data)
        from facechain.lora import inspect_lora

        try:
            return inspect_lora(path)
        except InvalidLoRA as exc:
            raise InvalidStyleUpload(str(exc).replace("upload.safetensors: ", "")) from exc
