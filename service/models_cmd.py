"""`facechain-bot models list|download|verify`."""

from __future__ import annotations

import argparse
import logging
import sys

from service.settings import AppConfig

logger = logging.getLogger(__name__)


def models_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Dispatch the models sub-action; returns the exit code."""
    from facechain import registry
    from facechain.errors import WeightsMissing

    cache = config.engine.models_dir
    action = args.models_command
    if action == "list":
        for spec in registry.REGISTRY.values():
            try:
                where = str(registry.resolve(spec, cache))
            except WeightsMissing:
                where = "missing"
            sys.stdout.write(
                f"{spec.name:<20} {spec.model_id}@{spec.revision}/{spec.path}\n"
                f"{'':<20} {spec.role}; {where}\n"
            )
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
    fetched_models = registry.download_models(
        cache, only=args.only, local_source=args.local_source
    )
    for name, path in fetched_models.items():
        sys.stdout.write(f"{name}: {path}\n")
    if args.styles:
        from db.session import Database
        from service.styles import download_style_loras

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
