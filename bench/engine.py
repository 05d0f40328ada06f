"""FACT adapter cost per UNet step, and a portrait set of ours beside FaceChain's configuration.

Everything runs on the CPU with the full-size SD1.5 UNet (860 M parameters, random weights: speed
does not depend on the values), CFG batch 2, context 77 text tokens (plain) or 77 + 16 face
tokens (adapter), on one thread by default. The configurations being compared alternate step by
step, and every figure is the median process CPU time, which other load on the machine does not
inflate the way it inflates wall time.

- 32x32 latents: plain and adapter step; `adapter_overhead_ratio` (the figure of earlier runs).
- 64x64 latents (512 px images): one step each of the plain UNet, ours (adapter, no ControlNet)
  and FaceChain's configuration built from our own modules: adapter + the OpenPose ControlNet
  (it sees the text tokens only), run at every step with conditioning scale 0 as FaceChain runs
  it without a pose.
- One VAE decode of a 512 px image, and the SFace ranking of one candidate (YuNet detection and
  SFace embedding of a 512 px portrait, the scorer the engine ranks with).
- UNet and ControlNet calls per image, counted by running the two samplers in real diffusers
  pipelines (tiny UNet): DPM++ 2M Karras with 30 steps makes 30 UNet calls; PNDM with 50 steps
  (`skip_prk_steps`, SD1.5's config) makes 51 UNet calls and 51 ControlNet calls.

A 4-portrait set costs, for ours, k candidates x (UNet calls x our step + decode) + k SFace
rankings when k > 4 (default k = 6; k = 4 has no ranking), and for FaceChain 4 x (UNet calls x
its step + decode). Text encoding and the face tokens (TransFace + projector), under 0.1 % of a
set for both, are left out. The last two lines are `adapter_overhead_ratio_64: X.XX` and
`set_speedup_vs_facechain: X.XX` (FaceChain's set / ours with 6 candidates; goals <= 1.45 and
>= 1.3); the 4-candidate speedup (goal >= 2.0) comes on its own line before them.

GPU figures come from `bench/gpu.py`.

Run: `python bench/engine.py [--repeats N] [--threads T]`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sd15
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from facechain import tiny
from facechain.adapter import TOKENS_PER_FACE, hide_face_tokens, load_face_adapter
from facechain.engine import SchedulerName, letterbox, make_scheduler
from facechain.models.projector import FaceProjector

OUR_STEPS, FACECHAIN_STEPS = 30, 50
SET_SIZE, OUR_CANDIDATES = 4, 6
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faces" / "woman_pose1.png"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, list[float]]]:
    """Median CPU seconds (and the wall times) of each fn, calls alternating, after a warm-up."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    # Alternating calls, so load from other processes hits every configuration alike.
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(timed(fn))
    return {
        name: (statistics.median(c for _, c in values), [w for w, _ in values])
        for name, values in runs.items()
    }


def report(label: str, cpu_s: float, walls: list[float]) -> None:
    print(
        f"{label}: median {cpu_s:.3f} s CPU, {statistics.median(walls):.3f} s wall "
        f"(wall {', '.join(f'{w:.2f}' for w in walls)})"
    )


@dataclass
class Models:
    """The plain UNet, its copy with the adapter, and a ControlNet made from it."""

    plain: UNet2DConditionModel
    adapter: UNet2DConditionModel
    controlnet: ControlNetModel


def build_models() -> Models:
    torch.manual_seed(0)
    plain = sd15.unet().eval()
    # Same weights in a second UNet that gets the adapter, so the two can be timed alternately.
    adapter = copy.deepcopy(plain)
    projector = FaceProjector()
    state = sd15.random_adapter_state(adapter, projector)
    load_face_adapter(adapter, state, projector, scale=0.5)
    controlnet = ControlNetModel.from_unet(plain).eval()
    # FaceChain's ControlNet processors drop the face tokens too (reference §2.4).
    hide_face_tokens(controlnet)
    return Models(plain, adapter, controlnet)


def steps_at(models: Models, side: int, repeats: int, facechain: bool) -> dict[str, float]:
    """Median CPU seconds of one CFG step at side x side latents for each configuration."""
    latents = torch.randn(2, 4, side, side)
    text = torch.randn(2, 77, 768)
    context = torch.cat([text, torch.randn(2, TOKENS_PER_FACE, 768)], dim=1)
    t = torch.tensor(500)
    pose = torch.rand(2, 3, side * 8, side * 8)

    def facechain_step() -> object:
        down, mid = models.controlnet(
            latents, t, context, controlnet_cond=pose, conditioning_scale=0.0, return_dict=False
        )
        return models.adapter(
            latents,
            t,
            context,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )

    fns: dict[str, Callable[[], object]] = {
        "plain": lambda: models.plain(latents, t, text),
        "ours": lambda: models.adapter(latents, t, context),
    }
    if facechain:
        fns["facechain"] = facechain_step
    labels = {
        "plain": "plain UNet step",
        "ours": "ours (adapter) UNet step",
        "facechain": "FaceChain configuration step (adapter + ControlNet at scale 0)",
    }
    with torch.inference_mode():
        measured = alternate(fns, repeats)
    for name, (cpu_s, walls) in measured.items():
        report(f"cpu {side}x{side} {labels[name]}", cpu_s, walls)
    return {name: cpu_s for name, (cpu_s, _) in measured.items()}


def vae_decode_seconds(repeats: int) -> float:
    torch.manual_seed(0)
    vae = sd15.vae().eval()
    latents = torch.randn(1, 4, 64, 64)
    with torch.inference_mode():
        measured = alternate({"decode": lambda: vae.decode(latents)}, repeats)
    cpu_s, walls = measured["decode"]
    report("cpu VAE decode of one 512 px image", cpu_s, walls)
    return cpu_s


def ranking_seconds(repeats: int) -> float | None:
    """CPU seconds to score one 512 px candidate with SFace, or None when it cannot run."""
    try:
        import numpy as np

        from facechain.similarity import IdentityScorer

        portrait = Image.open(FIXTURE).convert("RGB")
        scorer = IdentityScorer.from_images([np.asarray(portrait)])
        candidate = letterbox(portrait, 512)
        if scorer(candidate) <= 0.0:
            raise RuntimeError("no face found in the 512 px candidate")
    except Exception as exc:  # the figure is optional: say why it is missing
        print(f"cpu SFace ranking per candidate: not measured ({exc})")
        return None
    measured = alternate({"rank": lambda: scorer(candidate)}, max(repeats, 5))
    cpu_s, walls = measured["rank"]
    report("cpu SFace ranking per candidate (YuNet + SFace, 512 px)", cpu_s, walls)
    return cpu_s


def count_calls(scheduler_name: SchedulerName, steps: int, controlnet: bool) -> tuple[int, int]:
    """(UNet calls, ControlNet calls) per image with this sampler, counted in a real pipeline."""
    unet = tiny.unet(0)
    calls = {"unet": 0, "controlnet": 0}

    def counter(key: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            calls[key] += 1

        return hook

    unet.register_forward_pre_hook(counter("unet"))
    parts = {
        "vae": tiny.vae(0),
        "text_encoder": tiny.text_encoder(0),
        "tokenizer": tiny.tokenizer(),
        "unet": unet,
        "scheduler": make_scheduler(scheduler_name, tiny.SD15_SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    extra: dict[str, object] = {}
    if controlnet:
        net = tiny.controlnet(unet, seed=0)
        net.register_forward_pre_hook(counter("controlnet"))
        pipe = StableDiffusionControlNetPipeline(controlnet=net, **parts)
        extra = {"image": Image.new("RGB", (64, 64)), "controlnet_conditioning_scale": 0.0}
    else:
        pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        pipe(
            prompt="a portrait",
            num_inference_steps=steps,
            guidance_scale=7.0,
            height=64,
            width=64,
            output_type="latent",
            **extra,
        )
    return calls["unet"], calls["controlnet"]


def main() -> None:
    """Run the CPU comparison and print the two key figures last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    ours_calls, _ = count_calls("dpmpp_2m_karras", OUR_STEPS, controlnet=False)
    fc_calls, fc_cn_calls = count_calls("pndm", FACECHAIN_STEPS, controlnet=True)
    print(
        f"UNet calls per image: ours {ours_calls} (DPM++ 2M Karras, {OUR_STEPS} steps); "
        f"FaceChain {fc_calls} UNet + {fc_cn_calls} ControlNet (PNDM, {FACECHAIN_STEPS} steps)"
    )
    if fc_cn_calls != fc_calls:
        raise SystemExit("the FaceChain step assumes one ControlNet call per UNet call")

    models = build_models()
    print(
        f"cpu: SD1.5 UNet {sum(p.numel() for p in models.plain.parameters()) / 1e6:.0f} M params, "
        f"CFG batch 2, threads {torch.get_num_threads()}, repeats {args.repeats}"
    )
    small = steps_at(models, 32, args.repeats, facechain=False)
    ratio_32 = small["ours"] / small["plain"]
    print(f"adapter_overhead_ratio: {ratio_32:.2f}")
    full = steps_at(models, 64, args.repeats, facechain=True)
    del models
    decode = vae_decode_seconds(args.repeats)
    rank = ranking_seconds(args.repeats)

    def our_set(candidates: int) -> float:
        ranking = (rank or 0.0) * candidates if candidates > SET_SIZE else 0.0
        return candidates * (ours_calls * full["ours"] + decode) + ranking

    facechain_set = SET_SIZE * (fc_calls * full["facechain"] + decode)
    ours_6, ours_4 = our_set(OUR_CANDIDATES), our_set(SET_SIZE)
    print(f"cpu seconds per set, ours {OUR_CANDIDATES} candidates ranked to 4: {ours_6:.0f}")
    print(f"cpu seconds per set, ours 4 candidates (no ranking): {ours_4:.0f}")
    print(f"cpu seconds per set, FaceChain configuration 4 images: {facechain_set:.0f}")
    print(
        f"cpu FaceChain step / our step at 64x64: {full['facechain'] / full['ours']:.2f} "
        f"(ControlNet at scale 0 on every step)"
    )
    print(f"set_speedup_vs_facechain_4_candidates: {facechain_set / ours_4:.2f}")
    print(f"adapter_overhead_ratio_64: {full['ours'] / full['plain']:.2f}")
    print(f"set_speedup_vs_facechain: {facechain_set / ours_6:.2f}")


if __name__ == "__main__":
    main()
