"""The perimeter networks at full size: OpenPose body, hand and face, FairFace, RRDB upscaler.

Random weights of the published architectures (speed does not depend on the values), real
inputs: a fixture portrait letterboxed to FaceChain's 512x512 detect size. Each figure is the
median seconds per call after one warm-up:

- body: one body pass at the 512 px detect size (FaceChain's single 0.5 scale: a 184x184 input)
- hand: one hand crop at FaceChain's four scales (184..736 px), i.e. one hand
- face: one face crop (384x384 input)
- fairface: one aligned 112 px face (224x224 input)
- upscale: one 512 -> 2048 RRDB pass, tiled 256 px with 16 px overlap

The upscale's peak memory runs in a child process of its own so the figure is that pass alone:
peak RSS (VmHWM) on the CPU, `torch.cuda.max_memory_allocated` on CUDA (fp16).

Run: `python bench/annotators.py [--repeats N] [--threads T] [--device cpu|cuda]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facechain.annotators.fairface import FairFace  # noqa: E402
from facechain.annotators.openpose import OpenposeAnnotator  # noqa: E402
from facechain.annotators.rrdb import Upscaler  # noqa: E402
from facechain.engine import letterbox  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "faces" / "woman_pose1.png"


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall seconds of `fn` after one warm-up call (synchronised on CUDA)."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    fn()
    return statistics.median(timed() for _ in range(repeats))


def portrait() -> Image.Image:
    """The fixture portrait (or a gradient when the fixture is absent)."""
    if FIXTURE.is_file():
        return Image.open(FIXTURE).convert("RGB")
    ramp = np.linspace(0, 255, 512, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (512, 1))] * 3, axis=-1))


def _rss_mib(field: str = "VmRSS") -> float:
    """This process's resident (or, with VmHWM, peak resident) memory in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upscale_child(device: str) -> None:
    """One warm 512 -> 2048 pass, then print its peak memory as JSON (run in a child)."""
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    upscaler = Upscaler.random(seed=0, device=dev, dtype=dtype)
    image = letterbox(portrait(), 512)
    before = _rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = upscaler.upscale(image, tile=256, overlap=16)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak: dict[str, float] = {
        "seconds": seconds,
        "size": float(out.width),
        "rss_before_mib": before,
        "rss_mib": _rss_mib("VmHWM"),
    }
    if dev.type == "cuda":
        peak["vram_mib"] = torch.cuda.max_memory_allocated() / 2**20
    sys.stdout.write(json.dumps(peak) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--upscale-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.upscale_child:
        upscale_child(args.device)
        return
    device = torch.device(args.device)
    label = "cuda" if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"device: {label}")

    annotator = OpenposeAnnotator.random(seed=0, device=device)
    image = np.asarray(letterbox(portrait(), 512))
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    hand_crop = np.ascontiguousarray(bgr[300:460, 180:340])
    face_crop = np.ascontiguousarray(bgr[100:300, 160:360])
    figures = {
        "body": lambda: annotator.body_maps(bgr),
        "hand": lambda: annotator.hand_heatmap(hand_crop),
        "face": lambda: annotator.face_heatmaps(face_crop),
    }
    fairface = FairFace.random(seed=0, device=device)
    aligned = np.asarray(portrait().resize((112, 112)))
    figures["fairface"] = lambda: fairface.predict([aligned])
    for name, fn in figures.items():
        print(f"{label} seconds per {name} pass: {median_seconds(fn, args.repeats, device):.3f}")

    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--upscale-child",
            "--device",
            args.device,
            "--threads",
            str(args.threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"{label} seconds per upscale 512->2048: {peak['seconds']:.2f}")
    print(f"{label} upscale output side: {int(peak['size'])}")
    print(f"{label} upscale rss before the pass MiB: {peak['rss_before_mib']:.0f}")
    print(f"{label} upscale peak rss MiB: {peak['rss_mib']:.0f}")
    if "vram_mib" in peak:
        print(f"{label} upscale peak vram MiB: {peak['vram_mib']:.0f}")
    if device.type != "cuda":
        print("cuda annotators: skipped (no CUDA device)")


if __name__ == "__main__":
    main()
