"""`facechain-bot styles import|list`."""

from __future__ import annotations

import argparse
import sys

from core.blobstore import create_blob_store
from core.settings import AppConfig
from db.session import Database


def styles_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Import FaceChain's catalog into the database, or print it."""
    from domain.catalog import import_catalog, list_catalog
    from service.migrate import upgrade

    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(config.database.url)
    db = Database.from_url(config.database.url)
    try:
        with db.session() as session:
            if args.styles_command == "import":
                report = import_catalog(session, create_blob_store(config.storage))
                sys.stdout.write(f"{report.summary()}\n")
                return 0
            rows = list_catalog(session, args.lang)
    finally:
        db.dispose()
    if not rows:
        sys.stdout.write("the catalog is empty; run `facechain-bot styles import`\n")
        return 1
    for row in rows:
        flag = "" if row.enabled else "  [disabled]"
        sys.stdout.write(
            f"{row.position:>3}  {row.slug:<40} {row.name:<40} {row.category:<12} "
            f"{row.base_model:<6} w={row.weight:.2f}  {row.lora}{flag}\n"
        )
    sys.stdout.write(f"{len(rows)} styles\n")
    return 0
