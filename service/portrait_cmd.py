"""`facechain-bot portrait` and `facechain-bot inpaint`: the engine from the command line.

Styles are looked up by name in the shipped catalog (no database needed); their LoRA comes
from the model cache (downloaded on first use) or, on the tiny profile, from seeded weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.errors import ValidationFailed
from core.settings import AppConfig

# FaceChain's own first style: a cloth-template style that needs no style LoRA download.
DEFAULT_STYLE = "t-shirt"


def find_style(query: str | None):  # type: ignore[no-untyped-def]
    """The catalog style whose slug or any-language name matches `query` (case-insensitive)."""
    from domain.catalog import load_catalog

    styles = load_catalog()
    wanted = (query or DEFAULT_STYLE).strip().lower()
    for style in styles:
        names = {style.slug.lower(), *(n.lower() for n in style.names.values())}
        if wanted in names:
            return style
    partial = [s for s in styles if any(wanted in n.lower() for n in (s.slug, *s.names.values()))]
    if len(partial) == 1:
        return partial[0]
    hint = ", ".join(s.slug for s in (partial or styles)[:8])
    raise ValidationFailed(f"no single style matches {query!r}; try one of: {hint}, ...")


def _style_lora(config: AppConfig, profile: str, style) -> Path | None:  # type: ignore[no-untyped-def]
    if not style.lora_model_id:
        return None
    from domain.loras import fetch_catalog_lora, tiny_catalog_lora

    if profile == "tiny":
        return tiny_catalog_lora(config.engine.models_dir, style.slug)

    return fetch_catalog_lora(
        config.engine.models_dir, style.lora_model_id, style.lora_revision, style.lora_file
    )


def portrait_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Generate portraits of the selfie in a catalog style and print their likeness scores."""
    from facechain.cli import run_portrait_cli

    profile = args.profile or config.engine.profile
    style = find_style(args.style)
    argv = [
        str(args.selfie),
        "--out",
        str(args.out),
        "--style-prompt",
        style.prompt,
        "--template",
        style.prompt_template,
        "--base",
        style.base_model.value,
        "--lora-weight",
        str(style.weight),
        "--num",
        str(args.num),
        "--profile",
        profile,
        "--models-dir",
        str(config.engine.models_dir),
        "--device",
        config.engine.device,
    ]
    lora = _style_lora(config, profile, style)
    if lora is not None:
        argv += ["--lora", str(lora)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.pose is not None:
        argv += ["--pose", str(args.pose)]
    argv += ["--subject", args.subject]
    if config.engine.steps:
        argv += ["--steps", str(config.engine.steps)]
    sys.stdout.write(f"style: {style.slug} ({style.names.get('en', style.slug)})\n")
    return run_portrait_cli(argv)


def inpaint_command(config: AppConfig, args: argparse.Namespace) -> int:
    """Put the selfie's face (one selfie per chosen face) into the template; write one PNG."""
    from facechain.engine import Engine, EngineConfig, id_crop
    from facechain.errors import FaceChainError
    from facechain.faces import default_detector, select_single_face
    from facechain.imageio import load_image, to_rgb_array
    from facechain.inpaint import inpaint_template

    faces = list(args.face)
    if len(args.selfie) not in (1, len(faces)):
        sys.stderr.write("error: give one selfie, or one selfie per --face number\n")
        return 2
    try:
        template = load_image(args.template.read_bytes())
        identities = []
        for path in args.selfie:
            rgb = to_rgb_array(load_image(path.read_bytes()))
            face = select_single_face(
                default_detector().detect_faces(rgb), (rgb.shape[1], rgb.shape[0])
            )
            identities.append([id_crop(rgb, face)])
        if len(identities) == 1:
            identities = identities * len(faces)
        engine_config = EngineConfig(
            profile=args.profile or config.engine.profile,
            models_dir=config.engine.models_dir,
            device=config.engine.device,
        )
        if config.engine.steps:
            engine_config.steps = config.engine.steps
        engine = Engine.from_config(engine_config)
        result = inpaint_template(engine, template, identities, faces, seed=args.seed)
    except FaceChainError as exc:
        sys.stderr.write(f"error [{exc.code}]: {exc}\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.template.stem}_faces{'-'.join(map(str, faces))}.png"
    result.save(out)
    sys.stdout.write(f"{out}\t{result.width}x{result.height}\n")
    return 0
