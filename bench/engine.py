"""FACT adapter cost: one SD1.5 UNet step with and without the face adapter, plus GPU sets.

CPU part: full-size SD1.5 UNet (random weights), latents 2x4x32x32 (CFG batch), context 77 text
tokens (plain) or 77 + 16 face tokens (adapter); plain and adapter steps alternate, on one thread
by default, and the ratio uses the median process CPU time per step, which other load on the
machine does not inflate the way it inflates wall time. The last line is
`adapter_overhead_ratio: X.XX` (adapter step time / plain step time; target <= 1.5).
CUDA part (when available): seconds per 4-image set at 512x512, 30 steps, CFG, fp16, with and
without the OpenPose ControlNet, and peak VRAM; random full-size weights, same compute as real.

Run: `python bench/engine.py [--repeats N] [--threads T]`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from collections.abc import Callable

import sd15
import torch
from diffusers import (
    ControlNetModel,
    DPMSolverMultistepScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from facechain import tiny
from facechain.adapter import (
    TOKENS_PER_FACE,
    adapter_state_dict_template,
    hide_face_tokens,
    load_face_adapter,
)
from facechain.models.projector import CKPT_PREFIX, FaceProjector


def random_adapter_state(
    unet: UNet2DConditionModel, projector: FaceProjector
) -> dict[str, torch.Tensor]:
    """Random FACT checkpoint with open gates so the adapter path does its full work."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, value in adapter_state_dict_template(unet).items():
        if key.endswith(("alpha_attn", "alpha_dense")):
            state[key] = torch.tensor(0.5)
        else:
            state[key] = 0.02 * torch.randn(value.shape, generator=gen, dtype=torch.float32)
    state.update({CKPT_PREFIX + k: v for k, v in projector.state_dict().items()})
    return {k: v.to(next(unet.parameters()).dtype) for k, v in state.items()}


def median_seconds(fn: Callable[[], object], repeats: int, sync: bool = False) -> float:
    """Median wall time of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_overhead(repeats: int) -> float:
    """Adapter/plain ratio of one CFG UNet step on CPU."""
    torch.manual_seed(0)
    plain_unet = sd15.unet().eval()
    # Same weights in a second UNet that gets the adapter, so the two can be timed alternately.
    adapter_unet = copy.deepcopy(plain_unet)
    projector = FaceProjector()
    load_face_adapter(
        adapter_unet, random_adapter_state(adapter_unet, projector), projector, scale=0.5
    )
    latents = torch.randn(2, 4, 32, 32)
    text = torch.randn(2, 77, 768)
    context = torch.cat([text, torch.randn(2, TOKENS_PER_FACE, 768)], dim=1)
    t = torch.tensor(500)
    print(
        f"cpu: SD1.5 UNet {sum(p.numel() for p in plain_unet.parameters()) / 1e6:.0f} M params, "
        f"latents {tuple(latents.shape)}, threads {torch.get_num_threads()}, repeats {repeats}"
    )

    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "adapter": []}
    with torch.inference_mode():
        plain_unet(latents, t, text)
        adapter_unet(latents, t, context)
        # Alternating steps, so load from other processes hits both sides alike.
        for _ in range(repeats):
            runs["plain"].append(timed(lambda: plain_unet(latents, t, text)))
            runs["adapter"].append(timed(lambda: adapter_unet(latents, t, context)))
    cpu_s = {}
    for name, values in runs.items():
        wall = statistics.median(w for w, _ in values)
        cpu_s[name] = statistics.median(c for _, c in values)
        print(
            f"cpu {name:7s} UNet step: median {wall:.3f} s wall, {cpu_s[name]:.3f} s CPU "
            f"(wall {', '.join(f'{w:.2f}' for w, _ in values)})"
        )
    return cpu_s["adapter"] / cpu_s["plain"]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def cuda_sets(repeats: int) -> None:
    """Seconds per 4-image 512px set (30 steps, CFG, fp16) with/without ControlNet; peak VRAM."""
    device, dtype = torch.device("cuda"), torch.float16
    torch.manual_seed(0)
    unet = sd15.unet()
    vae = sd15.vae()
    text_encoder = sd15.text_encoder()
    controlnet = ControlNetModel.from_unet(unet)
    projector = FaceProjector()
    state = random_adapter_state(unet, projector)
    scheduler = DPMSolverMultistepScheduler.from_config(
        tiny.SD15_SCHEDULER_CONFIG, algorithm_type="dpmsolver++", use_karras_sigmas=True
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny.tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    controlnet = controlnet.to(device, dtype)
    load_face_adapter(pipe.unet, state, projector.to(device), scale=0.5)
    hide_face_tokens(controlnet)
    pose_pipe = StableDiffusionControlNetPipeline(
        **{k: v for k, v in pipe.components.items() if k != "image_encoder"},
        controlnet=controlnet,
    )
    embeds = torch.randn(1, 77 + TOKENS_PER_FACE, 768, device=device, dtype=dtype)
    pose = Image.new("RGB", (512, 512))
    common = {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": torch.zeros_like(embeds),
        "num_images_per_prompt": 4,
        "num_inference_steps": 30,
        "guidance_scale": 7.0,
        "height": 512,
        "width": 512,
        "output_type": "pil",
    }
    with torch.inference_mode():
        torch.cuda.reset_peak_memory_stats()
        plain = median_seconds(lambda: pipe(**common), repeats, sync=True)
        peak_plain = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        posed = median_seconds(lambda: pose_pipe(image=pose, **common), repeats, sync=True)
        peak_pose = torch.cuda.max_memory_allocated() / 2**30
    print(f"cuda {torch.cuda.get_device_name()}: 4x512px, 30 steps, CFG, fp16, adapter on")
    print(f"cuda seconds per set, no ControlNet: {plain:.2f} s (peak VRAM {peak_plain:.1f} GiB)")
    print(f"cuda seconds per set, ControlNet:    {posed:.2f} s (peak VRAM {peak_pose:.1f} GiB)")


def main() -> None:
    """Run the CPU comparison, the CUDA sets when possible, and print the ratio last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    ratio = cpu_overhead(args.repeats)
    if torch.cuda.is_available():
        cuda_sets(args.repeats)
    else:
        print("cuda: skipped (no CUDA device): no 512px set timings or peak VRAM")
    print(f"adapter_overhead_ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
