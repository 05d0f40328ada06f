"""Fixed-template inpainting cost: seconds per template job (one face, two faces).

CPU part: the tiny profile on the 1680x1260 group template (tests/fixtures/faces), the engine's
default 30 scheduler steps (stage 1: 30, inpaint at strength 0.6: 18, refine at 0.1: 3 UNet
steps per face). It measures everything around the UNet too: detection, masks, control maps,
VAE round trips, paste-back. Lines: `cpu seconds per template, 1 face: X` (process CPU time, all
threads) and the wall time beside it; template analysis (YuNet) is timed on its own.
CUDA part (when available): the same job with full-size SD1.5 parts (random weights, same
compute as the real checkpoints), fp16, 512 px working crops, peak VRAM.

Tiny models are dominated by per-op overhead, where extra intra-op threads only spin (and on a
shared machine inflate CPU time many times over), so the CPU part runs on `--threads` (default 1).

Run: `python bench/template.py [--repeats N] [--steps N] [--threads N]`.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facechain import tiny  # noqa: E402
from facechain.engine import Engine, EngineConfig, id_crop  # noqa: E402
from facechain.faces import default_detector  # noqa: E402
from facechain.imageio import load_image, to_rgb_array  # noqa: E402
from facechain.inpaint import InpaintRequest, TemplateInpainter, analyze_template  # noqa: E402

FACES = ROOT / "tests" / "fixtures" / "faces"


def load(name: str) -> np.ndarray:
    """A fixture as an RGB array."""
    return to_rgb_array(load_image((FACES / name).read_bytes()))


def identity_crops() -> list[np.ndarray]:
    """ID crops of the fixture man and woman."""
    crops = []
    for name in ("man_pose1.png", "woman_pose1.png"):
        image = load(name)
        crops.append(id_crop(image, default_detector().detect_faces(image)[0]))
    return crops


def timed(fn: Callable[[], object], repeats: int, sync: bool = False) -> tuple[float, float]:
    """Median (CPU seconds, wall seconds) of `fn` after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def run_jobs(
    inpainter: TemplateInpainter, label: str, repeats: int, steps: int, sync: bool
) -> None:
    """Time one-face and two-face jobs on the group template and print them."""
    template = load("template_group.jpg")
    crops = identity_crops()
    analysis = analyze_template(template)
    for faces in ([2], [1, 2]):
        request = InpaintRequest(
            template=template,
            identities=[[crops[i % 2]] for i in range(len(faces))],
            faces=faces,
            seed=0,
            steps=steps,
            analysis=analysis,
        )
        cpu, wall = timed(functools.partial(inpainter.run, request), repeats, sync)
        n = len(faces)
        print(
            f"{label} seconds per template, {n} face{'s' if n > 1 else ''}: {cpu:.2f} "
            f"(wall {wall:.2f} s)"
        )


def cpu_part(repeats: int, steps: int) -> None:
    """Tiny profile on the CPU."""
    torch.manual_seed(0)
    template = load("template_group.jpg")
    detect_cpu, detect_wall = timed(lambda: analyze_template(template), repeats)
    print(
        f"cpu template analysis (1680x1260, YuNet 2 passes): {detect_cpu:.3f} s CPU, "
        f"{detect_wall:.3f} s wall"
    )
    engine = Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=steps))
    print(f"cpu: tiny profile, 64 px crops, {steps} steps, {torch.get_num_threads()} thread(s)")
    run_jobs(TemplateInpainter.of(engine), "cpu", repeats, steps, sync=False)


def full_size_inpainter(device: torch.device, size: int) -> TemplateInpainter:
    """An inpainter whose engine base and ControlNets have SD1.5's full sizes, random weights."""
    import sd15
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    from facechain.adapter import adapter_state_dict_template, load_face_adapter
    from facechain.engine import _Base, make_scheduler
    from facechain.lora import parse_lora
    from facechain.models.projector import CKPT_PREFIX, FaceProjector
    from facechain.models.transface import TransFaceViT

    config = EngineConfig(profile="real", device=device.type, image_size=size, steps=30)
    dtype = config.torch_dtype(device)
    torch.manual_seed(0)
    unet = sd15.unet()
    vae = sd15.vae()
    text_encoder = sd15.text_encoder()
    openpose = ControlNetModel.from_unet(unet).to(device, dtype)
    canny = ControlNetModel.from_unet(unet)
    projector = FaceProjector()
    gen = torch.Generator().manual_seed(0)
    state = {
        k: (
            torch.tensor(0.5)
            if k.endswith(("alpha_attn", "alpha_dense"))
            else 0.02 * torch.randn(v.shape, generator=gen)
        )
        for k, v in adapter_state_dict_template(unet).items()
    }
    state.update({CKPT_PREFIX + k: v for k, v in projector.state_dict().items()})
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny.tokenizer(),
        unet=unet,
        scheduler=make_scheduler(config.scheduler, tiny.SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    projector = projector.to(device)
    load_face_adapter(pipe.unet, {k: v.to(dtype) for k, v in state.items()}, projector, scale=0.5)
    pose_pipe = StableDiffusionControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=openpose,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    lora = parse_lora(tiny.style_lora(tiny.unet(), tiny.text_encoder()))
    engine = Engine(config, TransFaceViT(), openpose, lora)
    with torch.no_grad():
        negative = projector(torch.zeros(1, 144, 512, device=device)).to(dtype)
    # Benchmark only: put the random full-size base where `from_config` would load the real one.
    engine._bases["majic"] = _Base(
        pipe=pipe, pose_pipe=pose_pipe, projector=projector, negative_tokens=negative
    )
    return TemplateInpainter(engine, canny_controlnet=canny.to(dtype))


def cuda_part(repeats: int) -> None:
    """Full-size random-weight job on CUDA, fp16, 512 px crops."""
    device = torch.device("cuda")
    inpainter = full_size_inpainter(device, 512)
    print(
        f"cuda {torch.cuda.get_device_name()}: SD1.5-size parts (random), fp16, 512 px, 30 steps"
    )
    torch.cuda.reset_peak_memory_stats()
    run_jobs(inpainter, "cuda", repeats, 30, sync=True)
    print(f"cuda peak VRAM: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    """CPU timings on the tiny profile, CUDA timings when a GPU is present."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cpu_part(args.repeats, args.steps)
    torch.set_num_threads(previous)
    if torch.cuda.is_available():
        cuda_part(args.repeats)
    else:
        print("cuda: skipped (no CUDA device): no full-size template timings or peak VRAM")


if __name__ == "__main__":
    main()
