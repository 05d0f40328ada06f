"""`facechain-bot`: the one entry point, a subcommand per role.

Each role builds the configuration once from the environment and passes it down. Errors a
person can fix (configuration, missing weights, no face) print one readable line and exit
non-zero; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import AppError, ConfigError
from core.settings import AppConfig, load_config
from facechain.errors import FaceChainError
from service.health_cmd import add_parser as health_parser
from service.logging_setup import setup_logging

if TYPE_CHECKING:
    from service.probe import ProbeState
    from service.worker_status import StatusWriter

logger = logging.getLogger(__name__)

# Queues whose workers hold a model on the GPU: one task at a time (not the threads pool).
GPU_QUEUES = frozenset({"gpu", "train"})
# The queue whose workers build the engine before consuming and run tasks in-process (solo).
WARM_QUEUE = "gpu"

NO_TOKEN_HELP = """\
TELEGRAM_TOKEN is not set, so the bot cannot connect to Telegram.

How to get a token:
  1. Open Telegram and start a chat with @BotFather (https://t.me/BotFather).
  2. Send /newbot, choose a display name and a username ending in "bot".
  3. BotFather replies with a token like 123456789:AAH...; keep it secret.
  4. Run:  TELEGRAM_TOKEN=123456789:AAH... facechain-bot run
     (or put TELEGRAM_TOKEN=... in a .env file in this folder).
"""


def _config() -> AppConfig:
    from facechain.imageio import configure_decoding

    config = load_config()
    setup_logging(config.log_level)
    # Every role decodes uploads (the bot, the workers, the web API): bound them per process.
    configure_decoding(config.limits.decode_concurrency)
    return config


def _require_token(config: AppConfig) -> None:
    if config.telegram.token is None:
        sys.stderr.write(NO_TOKEN_HELP)
        raise SystemExit(2)


def cmd_run(args: argparse.Namespace) -> int:
    """Everything on one machine: migrate, then bot + admin web + gpu and io workers."""
    from service.runner import run_all

    config = _config()
    _require_token(config)
    return run_all(config, with_workers=not args.no_workers)


def cmd_bot(args: argparse.Namespace) -> int:
    """The Telegram bot alone: long polling, or the updates `web` receives (webhook mode)."""
    from service.runner import run_bot

    config = _config()
    _require_token(config)
    return run_bot(config)


def cmd_web(args: argparse.Namespace) -> int:
    """The admin web server alone."""
    from service.runner import run_web

    config = _config()
    if args.host:
        config.admin.host = args.host
    if args.port is not None:
        config.admin.port = args.port
    return run_web(config)


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker for the given queues (gpu workers run one task at a time)."""
    from celery import signals

    from core.metrics import default_metrics
    from service.probe import GpuMemoryCollector, serve_probe
    from tasks.celery_app import create_celery

    config = _config()
    queues = args.queues
    names = [q for q in queues.split(",") if q]
    # Only the task modules of these queues: an io worker never imports torch.
    app = create_celery(config, queues=names)
    # The process counters (delivery errors on io workers) plus GPU memory on gpu workers.
    registry = default_metrics().registry
    if {"gpu", "train"} & set(names):
        registry.register(GpuMemoryCollector())
    probe = serve_probe("worker", config.probe.host, config.probe.port, registry)
    probe.details["queues"] = names
    hostname = args.hostname or queues.replace(",", "-") + "@%h"
    status: StatusWriter | None = None
    if config.broker.effective_url.startswith(("redis://", "rediss://")):
        from service.worker_status import StatusWriter as Writer

        # The admin web's /readyz lists every worker from these (a gpu worker's engine too).
        name = f"{hostname.replace('%h', socket.gethostname())}:{os.getpid()}"
        status = Writer(config.broker.effective_url, name, names, probe).start()

    def ready(**_: object) -> None:
        probe.set_ready()

    def stopping(**_: object) -> None:
        from tasks.warm import STOPPING

        probe.set_unready("shutting down")
        # A training in hand checkpoints and hands its job over (tasks.train_style).
        STOPPING.set()

    signals.worker_ready.connect(ready, weak=False)
    signals.worker_shutting_down.connect(stopping, weak=False)
    concurrency = args.concurrency or (1 if GPU_QUEUES & set(names) else 4)
    argv = [
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        f"--hostname={hostname}",
        f"--loglevel={config.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    if WARM_QUEUE in names:
        # The engine is built here, before Celery starts consuming, and the tasks run in this
        # very process (solo pool), so the first job finds it resident.
        if not _warm_up(probe):
            if status is not None:
                status.stop()
            return 1
        argv.append("--pool=solo")
    elif GPU_QUEUES & set(names):
        # train: in-process too, so a warm shutdown reaches the training (checkpoint, hand over).
        from tasks.warm import SoloTimeLimits

        SoloTimeLimits().connect()
        argv.append("--pool=solo")
    else:
        argv.append("--pool=threads")
    if args.beat:
        argv += ["--beat", f"--schedule={config.storage.data_dir / 'celerybeat-schedule'}"]
    try:
        app.worker_main(argv)
    finally:
        if status is not None:
            status.stop()
    return 0


def _warm_up(probe: ProbeState) -> bool:
    """Build the gpu engine before consuming (retrying with back-off); False when stopped."""
    import signal
    import threading

    from tasks.context import get_context
    from tasks.warm import SoloTimeLimits, build_until_ready

    stop = threading.Event()

    def interrupted(signum: int, frame: object) -> None:
        stop.set()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    probe.set_unready("building the engine")
    try:
        report = build_until_ready(
            get_context(), on_failure=lambda reason: probe.set_unready(reason), stop=stop
        )
    except SystemExit:
        logger.warning("stopped before the engine was built; nothing was consumed")
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if report is None:
        return False
    logger.info("%s", report.line())
    probe.set_unready("engine ready; connecting to the broker", **report.details())
    SoloTimeLimits().connect()
    return True


def cmd_beat(args: argparse.Namespace) -> int:
    """The periodic scheduler (outbox sweep, stuck jobs, selfie expiry)."""
    from celery import signals

    from service.probe import serve_probe
    from tasks.celery_app import create_celery

    config = _config()
    config.storage.data_dir.mkdir(parents=True, exist_ok=True)
    # Beat only sends tasks by name: it imports no task module (and so no torch).
    app = create_celery(config, queues=())
    probe = serve_probe("beat", config.probe.host, config.probe.port)

    def ready(**_: object) -> None:
        probe.set_ready()

    signals.beat_init.connect(ready, weak=False)
    app.start(
        [
            "beat",
            f"--schedule={config.storage.data_dir / 'celerybeat-schedule'}",
            f"--loglevel={config.log_level}",
        ]
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the database schema to a revision (default: the newest)."""
    from service.migrate import downgrade, upgrade

    config = _config()
    if args.downgrade:
        downgrade(config.database.url, args.downgrade)
        return 0
    upgrade(config.database.url, args.revision)
    if args.import_styles:
        from service.catalog_cmd import styles_command

        # Idempotent: a second run reports every catalog style unchanged.
        return styles_command(config, argparse.Namespace(styles_command="import"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List, download or verify model weights."""
    from service.models_cmd import models_command

    return models_command(_config(), args)


def cmd_styles(args: argparse.Namespace) -> int:
    """Import or list the style catalog."""
    from service.catalog_cmd import styles_command

    return styles_command(_config(), args)


def cmd_blobs(args: argparse.Namespace) -> int:
    """Delete the stored files no row points at (beat does it daily)."""
    from service.blobs_cmd import blobs_command

    return blobs_command(_config(), args)


def cmd_portrait(args: argparse.Namespace) -> int:
    """One portrait set from the command line, no Telegram or database."""
    from service.portrait_cmd import portrait_command

    return portrait_command(_config(), args)


def cmd_inpaint(args: argparse.Namespace) -> int:
    """Put a selfie's face into a template photo from the command line."""
    from service.portrait_cmd import inpaint_command

    return inpaint_command(_config(), args)


def cmd_upscale(args: argparse.Namespace) -> int:
    """HD: RRDB ×4 super-resolution of images (FaceChain's 512 -> 2048), no Telegram."""
    from service.upscale_cmd import upscale_command

    return upscale_command(_config(), args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="facechain-bot",
        description="FaceChain Bot: identity-preserving portraits from one selfie, on Telegram. "
        "Settings come from environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run everything on this machine (bot, web, workers)",
        description=cmd_run.__doc__,
    )
    p.add_argument(
        "--no-workers",
        action="store_true",
        help="do not start gpu/io workers (they run elsewhere)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bot", help="run the Telegram bot", description=cmd_bot.__doc__)
    p.set_defaults(func=cmd_bot)

    p = sub.add_parser("web", help="run the admin web server", description=cmd_web.__doc__)
    p.add_argument("--host", help="bind address (default ADMIN_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default ADMIN_PORT or 8080)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("worker", help="run a Celery worker", description=cmd_worker.__doc__)
    p.add_argument(
        "--queues",
        default="gpu,io",
        help="comma-separated queues: gpu, train, io (default gpu,io)",
    )
    p.add_argument("--concurrency", type=int, help="processes/threads (gpu: 1)")
    p.add_argument("--hostname", help="worker node name")
    p.add_argument("--beat", action="store_true", help="also run the periodic scheduler")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="run the periodic scheduler", description=cmd_beat.__doc__)
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser(
        "migrate", help="apply database migrations", description=cmd_migrate.__doc__
    )
    p.add_argument("--revision", default="head", help="target revision (default head)")
    p.add_argument("--downgrade", metavar="REV", help="downgrade to REV instead ('base' = empty)")
    p.add_argument(
        "--import-styles",
        action="store_true",
        help="then import FaceChain's style catalog (idempotent; the compose one-shot step)",
    )
    p.set_defaults(func=cmd_migrate)

    health_parser(sub)

    p = sub.add_parser(
        "models", help="list, download or verify weights", description=cmd_models.__doc__
    )
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    d = msub.add_parser("download", help="fetch weights from ModelScope into ENGINE_MODELS_DIR")
    d.add_argument("--only", nargs="*", metavar="NAME", help="only these registry entries")
    d.add_argument(
        "--from",
        dest="local_source",
        type=Path,
        metavar="DIR",
        help="copy from a local folder instead of downloading (offline machines)",
    )
    d.add_argument("--styles", action="store_true", help="also fetch every catalog style LoRA")
    msub.add_parser("list", help="show every model, its source and whether it is present")
    msub.add_parser("verify", help="check sizes and checksums of downloaded weights")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "styles", help="import or list the style catalog", description=cmd_styles.__doc__
    )
    ssub = p.add_subparsers(dest="styles_command", required=True, metavar="ACTION")
    ssub.add_parser("import", help="import FaceChain's catalog (idempotent)")
    sl = ssub.add_parser("list", help="print the catalog")
    sl.add_argument("--lang", default="en", help="language of the names (en, ru, zh)")
    p.set_defaults(func=cmd_styles)

    p = sub.add_parser(
        "blobs",
        help="maintain the blob store (stored images and LoRAs)",
        description=cmd_blobs.__doc__,
    )
    bsub = p.add_subparsers(dest="blobs_command", required=True, metavar="ACTION")
    gc = bsub.add_parser(
        "gc",
        help="delete blobs no row points at, older than a day (or twice the longest job)",
    )
    gc.add_argument("--dry-run", action="store_true", help="count them, delete nothing")
    p.set_defaults(func=cmd_blobs)

    p = sub.add_parser(
        "portrait", help="generate portraits from a selfie", description=cmd_portrait.__doc__
    )
    p.add_argument("selfie", type=Path, help="a photo with one face")
    p.add_argument("--style", help="style name or slug from the catalog (default: a neutral one)")
    p.add_argument(
        "--pose", type=Path, help="pose: a photo of a person, or a ready OpenPose skeleton map"
    )
    p.add_argument(
        "--subject",
        default="auto",
        choices=["auto", "man", "woman", "boy", "girl", "mature_man", "mature_woman"],
        help="who the portraits show (default auto: FairFace decides from the selfie)",
    )
    p.add_argument("--num", type=int, default=4, help="number of portraits (default 4)")
    p.add_argument("--seed", type=int, help="random seed (default random)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--profile", choices=["real", "tiny"], help="engine profile (default ENGINE_PROFILE)"
    )
    p.set_defaults(func=cmd_portrait)

    p = sub.add_parser(
        "inpaint",
        help="put a selfie's face into a template photo",
        description=cmd_inpaint.__doc__,
    )
    p.add_argument("template", type=Path, help="template photo")
    p.add_argument("selfie", type=Path, nargs="+", help="one selfie per face to replace")
    p.add_argument(
        "--face", type=int, nargs="+", default=[1], help="face number(s), 1 = leftmost (default 1)"
    )
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--profile", choices=["real", "tiny"], help="engine profile (default ENGINE_PROFILE)"
    )
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser(
        "upscale", help="HD: upscale images x4 (RRDB)", description=cmd_upscale.__doc__
    )
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="images to upscale")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--size",
        type=_positive,
        default=2048,
        help="cap on the long side; a larger x4 result is shrunk (default 2048)",
    )
    p.add_argument(
        "--tile", type=_positive, default=256, help="input tile side in pixels (default 256)"
    )
    p.add_argument(
        "--profile", choices=["real", "tiny"], help="engine profile (default ENGINE_PROFILE)"
    )
    p.set_defaults(func=cmd_upscale)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    except (AppError, FaceChainError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
