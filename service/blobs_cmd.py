"""`facechain-bot blobs gc`: delete the blobs no row points at (what beat runs daily)."""

from __future__ import annotations

import argparse
import sys

from core.blobstore import create_blob_store
from core.settings import AppConfig
from db.session import Database


def blobs_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Collect unreferenced blobs older than the grace period (or list how many, --dry-run)."""
    from domain.blobs import collect_garbage, gc_grace

    db = Database.from_url(config.database.url)
    try:
        found = collect_garbage(
            db,
            create_blob_store(config.storage),
            grace=gc_grace(config.broker),
            dry_run=args.dry_run,
        )
    finally:
        db.dispose()
    verb = "would delete" if args.dry_run else "deleted"
    sys.stdout.write(
        f"{found.scanned} blobs older than the grace period, {found.unreferenced} unreferenced, "
        f"{verb} {found.unreferenced if args.dry_run else found.deleted}\n"
    )
    return 0
