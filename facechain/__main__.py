"""Entry point: `python -m facechain portrait SELFIE --out DIR [...]`."""

from __future__ import annotations

import logging
import sys

from facechain.cli import run_portrait_cli

COMMANDS = {"portrait": run_portrait_cli}


def main() -> int:
    """Dispatch the sub-command."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        logging.getLogger(__name__).error(
            "usage: python -m facechain portrait SELFIE --out DIR ..."
        )
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
