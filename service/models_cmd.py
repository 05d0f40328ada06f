"""`facechain-bot models list|download|verify`."""

from __future__ import annotations

import argparse
import logging
import sys

from core.settings import AppConfig

logger = logging.getLogger(__name__)


def _quiet_hub_client() -> None:
    """Silence the hub client's per-retry warnings; one line below says what failed."""
    try:
        import modelscope.hub.snapshot_download  # noqa: F401  (creates its loggers)
    except ImportError:
        return
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("modelscope", "modelscope_hub")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _checker_state(config: AppConfig) -> str:
    """What a missing safety checker means under this configuration."""
    if config.safety.outputs == "off" and config.safety.inputs == "off":
        return "MISSING, unused (SAFETY_OUTPUTS=off, SAFETY_INPUTS=off)"
    if config.safety.required:
        return (
            "MISSING, required (SAFETY_REQUIRED=true: gpu workers take no job, uploads are "
            "refused)"
        )
    return "MISSING, fallback: pictures are NOT checked (SAFETY_REQUIRED=false)"


def models_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Dispatch the models sub-action; returns the exit code."""
    from facechain import registry
    from facechain.errors import WeightsMissing

    cache = config.engine.models_dir
    action = args.models_command
    if action == "list":
        for spec in registry.REGISTRY.values():
            path = registry.present(spec, cache)
            if path is not None:
                state = f"present: {path}"
            elif spec is registry.SAFETY_CHECKER:
                state = _checker_state(config)
            elif spec.fallback is not None:
                state = f"MISSING, fallback: {spec.fallback}"
            else:
                state = "MISSING, required"
            sys.stdout.write(
                f"{spec.name:<20} {spec.model_id}@{spec.revision}/{spec.path}\n"
                f"{'':<20} {spec.role}\n"
                f"{'':<20} {state}\n"
            )
        if config.engine.profile == "tiny":
            sys.stdout.write("ENGINE_PROFILE=tiny: workers build seeded random models instead\n")
        return 0
    if action == "verify":
        problems = registry.verify_models(cache)
        for name, paths in problems.items():
            sys.stdout.write(f"{name}: {len(paths)} bad or missing file(s), e.g. {paths[0]}\n")
        if problems:
            sys.stdout.write(f"run `{registry.DOWNLOAD_COMMAND}` to fetch them again\n")
            return 1
        sys.stdout.write(f"all models present and intact in {cache}\n")
        return 0
    _quiet_hub_client()
    try:
        fetched_models = registry.download_models(
            cache, only=args.only, local_source=args.local_source
        )
    except WeightsMissing as exc:
        sys.stderr.write(f"models download failed: {exc}\n")
        return 1
    for name, path in fetched_models.items():
        sys.stdout.write(f"{name}: {path}\n")
    if args.styles:
        from db.session import Database
        from domain.loras import download_style_loras

        db = Database.from_url(config.database.url)
        try:
            with db.session() as session:
                fetched = download_style_loras(session, cache)
        finally:
            db.dispose()
        sys.stdout.write(f"style LoRAs: {fetched.summary()}\n")
        for ref, reason in fetched.failed.items():
            sys.stdout.write(f"  failed: {ref}: {reason}\n")
        if fetched.failed:
            return 1
    return 0
