"""Every model the engine loads, named once, and the offline cache that holds them.

`download_models` fetches from ModelScope (pinned revisions; the safety checker from the Hugging
Face Hub at a pinned commit, where CompVis publishes it) or copies from a local folder, then
records each file's size and sha256 in `<cache>/manifest.json`. A later run skips files whose
size and mtime still match the manifest (resume) and, with `verify=True`, re-hashes everything
and fetches again what no longer matches. `resolve` only reads the cache and never the network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from facechain.errors import DownloadFailed, WeightsMissing

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOWNLOAD_COMMAND = "facechain-bot models download"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """One weight file or folder inside a ModelScope repository at a pinned revision."""

    name: str
    model_id: str
    revision: str
    path: str
    kind: Literal["file", "dir"]
    role: str
    # What runs when the model is absent (documented fallback, shown by `models list` and
    # logged when the engine starts); None = required by the feature named in `role`.
    fallback: str | None = None
    hub: Literal["modelscope", "huggingface"] = "modelscope"
    # A "dir" model made of just these files of its folder (a repository root holds others).
    files: tuple[str, ...] = ()

    @property
    def pattern(self) -> str:
        """ModelScope `allow_file_pattern` selecting just this file or folder (fnmatch)."""
        return self.path if self.kind == "file" else f"{self.path}/*"

    @property
    def patterns(self) -> list[str]:
        """Hub file patterns of this model (`files` when named, else `pattern`)."""
        if self.files:
            return [f"{self.path}/{f}" if self.path != "." else f for f in self.files]
        return [self.pattern]


BASE_FILM = ModelSpec(
    "base_film",
    "ly261666/cv_portrait_model",
    "v2.0",
    "film/film",
    "dir",
    "SD1.5 base 'film' (leosamsMoonfilm_filmGrain20), diffusers folder",
)
BASE_MAJIC = ModelSpec(
    "base_majic",
    "MAILAND/majicmixRealistic_v6",
    "v1.0.0",
    "realistic",
    "dir",
    "SD1.5 base 'majic' (MajicmixRealistic_v6), diffusers folder",
)
ADAPTER_FILM = ModelSpec(
    "adapter_film",
    "yucheng1996/FaceChain-FACT",
    "v1.0.0",
    "adapter_film_mask_large_new_reg001_faceshuffle_00290001.ckpt",
    "file",
    "FACT adapter + projector for the film base",
)
ADAPTER_MAJIC = ModelSpec(
    "adapter_majic",
    "yucheng1996/FaceChain-FACT",
    "v1.0.0",
    "adapter_maj_mask_large_new_reg001_faceshuffle_00290001.ckpt",
    "file",
    "FACT adapter + projector for the majic base",
)
TRANSFACE = ModelSpec(
    "transface",
    "yucheng1996/FaceChain-FACT",
    "v1.0.0",
    "ms1mv2_model_TransFace_S.pt",
    "file",
    "TransFace ViT-S identity encoder (MS1MV2)",
)
CONTROLNET_OPENPOSE = ModelSpec(
    "controlnet_openpose",
    "damo/face_chain_control_model",
    "v1.0.1",
    "model_controlnet/control_v11p_sd15_openpose",
    "dir",
    "OpenPose ControlNet v1.1",
)
OPENPOSE_ANNOTATOR = ModelSpec(
    "openpose_annotator",
    "damo/face_chain_control_model",
    "v1.0.1",
    "model_controlnet/ControlNet",
    "dir",
    "OpenPose annotator (controlnet_aux 0.0.6): body_pose_model.pth, hand_pose_model.pth, "
    "facenet.pth",
    fallback="pose photos are refused (a ready OpenPose skeleton map still works); template "
    "faces use 70 keypoints synthesised from the 5 detected landmarks",
)
FAIRFACE = ModelSpec(
    "fairface",
    "damo/cv_resnet34_face-attribute-recognition_fairface",
    "v2.0.2",
    "pytorch_model.pt",
    "file",
    "FairFace ResNet34 gender/age classifier (subject prompt prefix)",
    fallback="no automatic subject prefix (users can still choose one with /subject)",
)
# FaceChain never pinned a revision of this model; the manifest's sha256 pins what was fetched.
UPSCALER_RRDB = ModelSpec(
    "upscaler_rrdb",
    "damo/cv_rrdb_image-super-resolution",
    "master",
    "pytorch_model.pt",
    "file",
    "RRDB x4 super-resolution (HD portraits, 512 -> 2048)",
    fallback="none: the HD button answers that HD is unavailable (job error weights_missing)",
)
CONTROLNET_CANNY = ModelSpec(
    "controlnet_canny",
    "ly261666/cv_wanx_style_model",
    "v1.0.3",
    "contronet-canny",
    "dir",
    "Canny ControlNet (fixed-template inpainting)",
)
# diffusers' SD1.5 safety checker (CLIP ViT-L/14 + concept embeddings), CreativeML OpenRAIL-M.
# Not mirrored on ModelScope at a pinned revision: fetched from the Hugging Face Hub at the
# commit that ships `pytorch_model.bin`; the manifest's sha256 pins the bytes.
SAFETY_CHECKER = ModelSpec(
    "safety_checker",
    "CompVis/stable-diffusion-safety-checker",
    "cb41f3a270d63d454d385fc2e4f571c487c253c5",
    ".",
    "dir",
    "SD1.5 safety checker (CLIP ViT-L/14 + concept embeddings): every portrait and upload",
    fallback="SAFETY_REQUIRED=true (default): gpu workers take no job and uploads are "
    "refused; false: pictures are NOT checked",
    hub="huggingface",
    files=("config.json", "pytorch_model.bin"),
)
DEFAULT_STYLE_LORA = ModelSpec(
    "default_style_lora",
    "Cherrytest/zjz_mj_jiyi_small_addtxt_fromleo",
    "v1.0.0",
    "zjz_mj_jiyi_small_addtxt_fromleo.safetensors",
    "file",
    "style LoRA applied to styles that have none",
)

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        BASE_FILM,
        BASE_MAJIC,
        ADAPTER_FILM,
        ADAPTER_MAJIC,
        TRANSFACE,
        CONTROLNET_OPENPOSE,
        OPENPOSE_ANNOTATOR,
        FAIRFACE,
        UPSCALER_RRDB,
        CONTROLNET_CANNY,
        DEFAULT_STYLE_LORA,
        SAFETY_CHECKER,
    )
}

SnapshotFn = Callable[..., str]


def snapshot_download(model_id: str, **kwargs: Any) -> str:
    """ModelScope's snapshot download, imported on use (tests replace this function)."""
    from modelscope.hub.snapshot_download import snapshot_download as ms_snapshot

    return str(ms_snapshot(model_id, **kwargs))


def hf_snapshot_download(model_id: str, **kwargs: Any) -> str:
    """The Hugging Face Hub's snapshot download, imported on use (tests replace this function)."""
    from huggingface_hub import snapshot_download as hf_snapshot

    return str(hf_snapshot(model_id, **kwargs))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / MANIFEST
    if not path.is_file():
        return {"version": 1, "models": {}}
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    # Written after every model, via a rename, so an interrupted download keeps what it finished.
    tmp = cache_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(cache_dir / MANIFEST)


def _entry_for(manifest: dict[str, Any], spec: ModelSpec) -> dict[str, Any] | None:
    """The manifest entry of `spec`, or None when absent or recorded for another revision/path."""
    entry: dict[str, Any] | None = manifest["models"].get(spec.name)
    if entry is None:
        return None
    same = (entry["model_id"], entry["revision"], entry["path"]) == (
        spec.model_id,
        spec.revision,
        spec.path,
    )
    return entry if same else None


def _root(cache_dir: Path, entry: dict[str, Any]) -> Path:
    root = Path(entry["root"])
    return root if root.is_absolute() else cache_dir / root


def _stat_ok(path: Path, record: dict[str, Any]) -> bool:
    """Cheap check: same size and modification time as when the file was hashed."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return bool(st.st_size == record["size"] and st.st_mtime_ns == record["mtime_ns"])


def _bad_files(cache_dir: Path, entry: dict[str, Any], verify: bool) -> list[Path]:
    """Files of a manifest entry that are missing, changed, or (with verify) fail their sha256."""
    root = _root(cache_dir, entry)
    bad = []
    for rel, record in entry["files"].items():
        path = root / rel
        if not _stat_ok(path, record) or (verify and sha256_file(path) != record["sha256"]):
            bad.append(path)
    return bad


def _files_of(root: Path, spec: ModelSpec) -> list[Path]:
    target = root / spec.path
    if spec.files:
        return [target / name for name in spec.files if (target / name).is_file()]
    if spec.kind == "file":
        return [target] if target.is_file() else []
    return sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else []


def _copy_local(spec: ModelSpec, source: Path, dest_root: Path, link: bool) -> None:
    """Copy (or hard-link) a model from `<source>/<model_id>/<path>`; existing files are kept."""
    src_root = source / spec.model_id
    src_files = _files_of(src_root, spec)
    if not src_files:
        raise WeightsMissing(f"{spec.name}: {src_root / spec.path} not found in the local source")
    for src in src_files:
        dst = dest_root / src.relative_to(src_root)
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            try:
                os.link(src, dst)
                continue
            except OSError:
                logger.debug("cannot hard-link %s, copying", src)
        # copyfile, not copy2: a fresh mtime makes the manifest re-hash the new copy.
        shutil.copyfile(src, dst)


def _record(
    spec: ModelSpec, cache_dir: Path, root: Path, old: dict[str, Any] | None
) -> dict[str, Any]:
    """Manifest entry for a fetched model, re-hashing only files that changed since `old`."""
    files = _files_of(root, spec)
    if not files:
        raise WeightsMissing(f"{spec.name}: {root / spec.path} missing after download")
    previous = old["files"] if old is not None and _root(cache_dir, old) == root else {}
    records = {}
    for path in files:
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        if rel in previous and _stat_ok(path, previous[rel]):
            records[rel] = previous[rel]
        else:
            records[rel] = {
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": sha256_file(path),
            }
    try:
        root_str = root.relative_to(cache_dir).as_posix()
    except ValueError:
        root_str = str(root)
    return {
        "model_id": spec.model_id,
        "revision": spec.revision,
        "path": spec.path,
        "root": root_str,
        "files": records,
    }


def _select(only: Iterable[str] | None) -> list[ModelSpec]:
    if only is None:
        return list(REGISTRY.values())
    names = list(only)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(REGISTRY)}")
    return [REGISTRY[n] for n in names]


def download_models(
    cache_dir: Path,
    only: Iterable[str] | None = None,
    local_source: Path | None = None,
    verify: bool = False,
    link: bool = False,
) -> dict[str, Path]:
    """Fetch models into `cache_dir` and record their checksums; returns name -> local path.

    Args:
        cache_dir: cache root (created); holds the snapshots and `manifest.json`.
        only: registry names to fetch (default: all).
        local_source: offline source laid out as `<local_source>/<model_id>/<path>`;
            files are hard-linked when possible, else copied.
        verify: re-hash every recorded file; mismatching files are deleted and fetched again.
        link: hard-link from `local_source` instead of copying (saves disk; the cache then
            shares its files with the source).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(cache_dir)
    paths = {}
    for spec in _select(only):
        entry = _entry_for(manifest, spec)
        if entry is not None:
            bad = _bad_files(cache_dir, entry, verify)
            if not bad:
                logger.info("%s: up to date", spec.name)
                paths[spec.name] = _root(cache_dir, entry) / spec.path
                continue
            for path in bad:
                logger.warning("%s: %s is missing or corrupt, fetching again", spec.name, path)
                path.unlink(missing_ok=True)
        if local_source is not None:
            root = cache_dir / spec.model_id
            _copy_local(spec, local_source, root, link)
        else:
            logger.info(
                "%s: downloading %s@%s %s", spec.name, spec.model_id, spec.revision, spec.path
            )
            try:
                root = _fetch(spec, cache_dir)
            except Exception as exc:  # the hub client raises many unrelated types
                raise DownloadFailed(
                    f"{spec.name}: cannot download {spec.model_id}@{spec.revision} "
                    f"({_short_reason(exc)}); on a machine without access to ModelScope, copy "
                    f"the files there and import them with `{DOWNLOAD_COMMAND} --from DIR`"
                ) from exc
        manifest["models"][spec.name] = _record(spec, cache_dir, root, entry)
        _write_manifest(cache_dir, manifest)
        paths[spec.name] = root / spec.path
    return paths


def _fetch(spec: ModelSpec, cache_dir: Path) -> Path:
    """Download one model from its hub into the cache; the folder holding `spec.path`."""
    if spec.hub == "huggingface":
        # Real files in `<cache>/<model_id>` (no symlinks into a hub cache), like ModelScope's.
        root = cache_dir / spec.model_id
        hf_snapshot_download(
            spec.model_id,
            revision=spec.revision,
            local_dir=str(root),
            allow_patterns=spec.patterns,
        )
        return root
    return Path(
        snapshot_download(
            spec.model_id,
            revision=spec.revision,
            cache_dir=str(cache_dir),
            allow_file_pattern=spec.pattern if not spec.files else spec.patterns,
        )
    )


def verify_models(cache_dir: Path, only: Iterable[str] | None = None) -> dict[str, list[Path]]:
    """Re-hash recorded files; returns name -> files that are missing or fail their checksum."""
    manifest = _read_manifest(cache_dir)
    problems: dict[str, list[Path]] = {}
    for spec in _select(only):
        entry = _entry_for(manifest, spec)
        if entry is None:
            problems[spec.name] = [cache_dir / spec.model_id / spec.path]
            continue
        bad = _bad_files(cache_dir, entry, verify=True)
        if bad:
            problems[spec.name] = bad
    return problems


def resolve(spec: ModelSpec | str, cache_dir: Path) -> Path:
    """Local path of a downloaded model; never touches the network.

    Raises:
        WeightsMissing: not downloaded, or files missing or changed since download.
    """
    spec = REGISTRY[spec] if isinstance(spec, str) else spec
    entry = _entry_for(_read_manifest(cache_dir), spec)
    if entry is None:
        raise WeightsMissing(
            f"model {spec.name} ({spec.model_id}@{spec.revision}/{spec.path}) is not in "
            f"{cache_dir}; run `{DOWNLOAD_COMMAND}`"
        )
    root = _root(cache_dir, entry)
    missing = [rel for rel, rec in entry["files"].items() if not _size_ok(root / rel, rec)]
    if missing:
        raise WeightsMissing(
            f"model {spec.name}: {len(missing)} files missing or truncated in {root} "
            f"(e.g. {missing[0]}); run `{DOWNLOAD_COMMAND}`"
        )
    return root / spec.path


def present(spec: ModelSpec | str, cache_dir: Path) -> Path | None:
    """Local path of a downloaded model, or None when it is absent (never the network)."""
    try:
        return resolve(spec, cache_dir)
    except WeightsMissing:
        return None


def missing_fallbacks(cache_dir: Path) -> dict[str, str]:
    """Optional models that are absent, name -> the fallback that runs instead."""
    return {
        spec.name: spec.fallback
        for spec in REGISTRY.values()
        if spec.fallback is not None and present(spec, cache_dir) is None
    }


def _short_reason(exc: BaseException) -> str:
    """One line naming the root cause of a hub failure (no network, not found, ...)."""
    root: BaseException = exc
    for _ in range(32):
        nxt = root.__cause__ or root.__context__
        if nxt is None:
            break
        root = nxt
    text = str(root).splitlines()[0] if str(root) else type(root).__name__
    if any(s in text for s in ("Name or service not known", "Temporary failure in name")):
        return "no network: the hub's address does not resolve"
    return f"{type(root).__name__}: {text[:160]}"


def _size_ok(path: Path, record: dict[str, Any]) -> bool:
    try:
        return bool(path.stat().st_size == record["size"])
    except FileNotFoundError:
        return False
