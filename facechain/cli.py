"""`python -m facechain portrait ...`: one generation from the command line, no Telegram."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from facechain.engine import Engine, EngineConfig, PortraitRequest, StyleSpec, id_crop
from facechain.errors import FaceChainError
from facechain.faces import align_face, default_detector, select_single_face
from facechain.imageio import downscale, load_image, to_rgb_array
from facechain.posemap import is_skeleton_map
from facechain.prompts import SUBJECTS, SubjectPrompt, subject_prompt
from facechain.similarity import IdentityScorer

logger = logging.getLogger(__name__)

# FaceChain shrinks selfies above 1000 px before anything else (reference §3 step 2).
SELFIE_MAX_SIDE = 1000


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the `portrait` command."""
    parser = argparse.ArgumentParser(prog="facechain portrait", description=__doc__)
    parser.add_argument("selfie", type=Path, help="photo with exactly one face")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--style-prompt", default="", help="style fragment for the template")
    parser.add_argument("--template", choices=["cloth", "style"], default="cloth")
    parser.add_argument("--base", choices=["film", "majic"], default="film")
    parser.add_argument(
        "--lora", type=Path, default=None, help="style LoRA (default LoRA if unset)"
    )
    parser.add_argument("--lora-weight", type=float, default=0.25)
    parser.add_argument(
        "--pose",
        type=Path,
        default=None,
        help="pose: a photo of a person (OpenPose-annotated first) or a ready skeleton map",
    )
    parser.add_argument(
        "--subject",
        choices=["auto", *SUBJECTS],
        default="auto",
        help="who the portrait shows; auto = FairFace decides from the selfie",
    )
    parser.add_argument("--num", type=int, default=1, help="portraits to write")
    parser.add_argument("--candidates", type=int, default=None, help="images to rank (>= --num)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--profile", choices=["real", "tiny"], default="real")
    parser.add_argument("--models-dir", type=Path, default=Path("data/models"))
    parser.add_argument("--device", default="auto")
    return parser


def run_portrait_cli(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, generate, write PNGs to --out; returns the exit code (2 on a typed error)."""
    args = build_parser().parse_args(argv)
    try:
        image = downscale(load_image(args.selfie.read_bytes()), SELFIE_MAX_SIDE)
        rgb = to_rgb_array(image)
        face = select_single_face(default_detector().detect_faces(rgb), image.size)
        engine = Engine.from_config(
            EngineConfig(profile=args.profile, models_dir=args.models_dir, device=args.device)
        )
        pose = None
        if args.pose is not None:
            # The same steps as the gpu worker: a ready map as is, a photo through OpenPose.
            pose = load_image(args.pose.read_bytes())
            if not is_skeleton_map(pose):
                pose = engine.extract_pose(pose).map
        subject: SubjectPrompt | None = (
            engine.subject_for([align_face(rgb, face.landmarks)])
            if args.subject == "auto"
            else subject_prompt(args.subject)
        )
        request = PortraitRequest(
            selfies=[id_crop(rgb, face)],
            style=StyleSpec(
                name="cli",
                base_model=args.base,
                prompt=args.style_prompt,
                template=args.template,
                lora_path=args.lora,
                lora_weight=args.lora_weight,
            ),
            pose=pose,
            num_images=args.num,
            num_candidates=args.candidates,
            seed=args.seed,
            scorer=IdentityScorer.from_images([rgb]),
            steps=args.steps,
            prompt_prefix=subject.prefix if subject else "",
            negative_suffix=subject.negative_suffix if subject else "",
        )
        if subject is not None:
            logger.info("subject: %s", subject.prefix.strip(", "))
        portraits = engine.portraits(
            request, progress=lambda done, total: logger.info("step %d/%d", done, total)
        )
    except FaceChainError as exc:
        # One readable line for the person at the terminal; no traceback for their mistake.
        sys.stderr.write(f"error [{exc.code}]: {exc}\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for rank, portrait in enumerate(portraits):
        path = args.out / f"portrait_{rank}_seed{portrait.seed}.png"
        portrait.image.save(path)
        score = "n/a" if portrait.similarity is None else f"{portrait.similarity:.4f}"
        # The result listing is the command's output, so it goes to stdout, not the log.
        sys.stdout.write(f"{path}\tsimilarity={score}\n")
    return 0
