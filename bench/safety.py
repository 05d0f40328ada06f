"""What the safety checker adds to the tiny flow on the CPU (goal: under 5 %).

The README's tiny flow (`ENGINE_PROFILE=tiny facechain-bot run`) paints 6 candidates of 64 px
with the tiny engine (30 steps unless ENGINE_STEPS says otherwise) and keeps 4. This script times
that set with the tiny safety checker (what the tiny profile runs) and with no checker, the two
alternating, median process CPU time each (other load on the machine does not inflate it), plus
the checker alone on the 6 candidates and on one upload (a 1280 px photo, as the bot's screen
checks it). Last line: `tiny_checker_share_pct: X.XX` (checker / set without it).

Run: `python bench/safety.py [--repeats N] [--steps S] [--threads T]`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from facechain.engine import Engine, EngineConfig, PortraitRequest, StyleSpec
from facechain.safety import SafetyChecker

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "faces" / "woman_pose1.png"
STYLE = StyleSpec(name="bench", base_model="film", prompt="armor", lora_weight=0.25)


def figure(label: str, value: object) -> None:
    """One `label: value` line (bench/run.py collects them)."""
    print(f"{label}: {value}", flush=True)


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed sets per configuration")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (tiny flow: 30)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    engine = Engine.from_config(EngineConfig(profile="tiny", device="cpu", steps=args.steps))
    checker = engine.safety
    assert isinstance(checker, SafetyChecker)
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    order = iter(range(10**9, 0, -1))
    request = PortraitRequest(
        selfies=[crop],
        style=STYLE,
        seed=1234,
        num_images=4,
        num_candidates=6,
        scorer=lambda _: float(next(order)),
    )

    def with_checker() -> object:
        engine.set_safety_checker(checker)
        return engine.portraits(request)

    def without() -> object:
        engine.set_safety_checker(None)
        return engine.portraits(request)

    with_checker()  # warm-up (lazy base load, allocator)
    timed: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(args.repeats):
        timed["with"].append(cpu_seconds(with_checker))
        timed["without"].append(cpu_seconds(without))
    engine.set_safety_checker(checker)
    candidates = [im.image for im in engine.portraits(request)] * 2
    candidates = candidates[:6]
    alone = statistics.median(
        cpu_seconds(lambda: checker.check(candidates)) for _ in range(args.repeats * 4)
    )
    upload = Image.open(FIXTURE).convert("RGB")
    upload = upload.resize((1280, round(1280 * upload.height / upload.width)))
    one_upload = statistics.median(
        cpu_seconds(lambda: checker.check([upload])) for _ in range(args.repeats * 4)
    )
    with_s, without_s = (statistics.median(timed[k]) for k in ("with", "without"))
    print(
        f"tiny engine on CPU, {args.threads} thread(s), {args.steps} steps, 6 candidates -> 4, "
        f"{args.repeats} sets each (median process CPU time)"
    )
    figure("tiny_set_with_checker_s", f"{with_s:.3f}")
    figure("tiny_set_without_checker_s", f"{without_s:.3f}")
    figure("tiny_checker_6_candidates_ms", f"{alone * 1000:.1f}")
    figure("tiny_checker_one_upload_ms", f"{one_upload * 1000:.1f}")
    figure("tiny_checker_share_pct", f"{100 * alone / without_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
