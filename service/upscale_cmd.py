"""`facechain-bot upscale`: FaceChain's RRDB ×4 super-resolution from the command line."""

from __future__ import annotations

import argparse
import logging
import sys

from core.settings import AppConfig

logger = logging.getLogger(__name__)


def upscale_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Upscale each image ×4 (long side capped at --size) and write `<stem>-<side>.png`."""
    from facechain.annotators.rrdb import build_upscaler
    from facechain.errors import FaceChainError
    from facechain.imageio import load_image

    profile = args.profile or config.engine.profile
    try:
        # Decode every input first: a bad file fails before the model is loaded.
        images = [(path, load_image(path.read_bytes())) for path in args.images]
        upscaler = build_upscaler(profile, config.engine.models_dir, config.engine.device)
        args.out.mkdir(parents=True, exist_ok=True)
        for path, image in images:
            result = upscaler.upscale(image, tile=args.tile, out_size=args.size)
            out = args.out / f"{path.stem}-{max(result.size)}.png"
            result.save(out)
            sys.stdout.write(f"{out}\t{result.width}x{result.height}\n")
    except FaceChainError as exc:
        sys.stderr.write(f"error [{exc.code}]: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0
