"""`bench/gpu.py --device cpu --tiny`: the GPU benchmark's code path, run on the tiny profile."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"
# The figures the GPU run must report (issue 15), whatever else it adds.
REQUIRED = (
    "set_4_p50_s",
    "set_4_p90_s",
    "set_6to4_p50_s",
    "pose_set_4_p50_s",
    "inpaint_1_face_p50_s",
    "upscale_512_to_2048_p50_s",
    "peak_vram_gib",
    "images_per_hour_batch_4",
    "images_per_hour_batch_8",
    "facechain_set_4_p50_s",
    "set_speedup_vs_facechain_gpu",
    "opt_channels_last_speedup",
    "opt_fused_qkv_within_fp16_tolerance",
    "opt_compile_recompiles_per_style_change",
    "opt_vae_nan_guard_nonfinite_images_guarded",
    "opt_cuda_graphs_speedup",
)


def declared_labels() -> list[str]:
    """`LABELS` of bench/gpu.py, read from its source (importing it would touch sys.path)."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    namespace: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in {"OPTIMISATIONS", "LABELS"} for t in node.targets
        ):
            exec(compile(ast.Module([node], []), str(SCRIPT), "exec"), namespace)
    return list(namespace["LABELS"])  # type: ignore[call-overload]


def test_tiny_cpu_run_prints_every_figure() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--runs", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = dict(
        m.groups() for m in re.finditer(r"^([a-z0-9_]+): (.+)$", proc.stdout, re.MULTILINE)
    )
    labels = declared_labels()
    assert set(REQUIRED) <= set(labels)
    missing = [label for label in labels if label not in figures]
    assert not missing, f"not printed: {missing}\n{proc.stdout[-3000:]}"
    assert proc.stdout.rstrip().splitlines()[-1].startswith("set_speedup_vs_facechain_gpu: ")
    # The same code path really ran: numbers, not failures.
    failed = {k: v for k, v in figures.items() if v.startswith(("failed", "not measured"))}
    assert not failed, failed
    assert float(figures["set_4_p50_s"]) > 0
    assert int(figures["facechain_unet_calls_per_image"]) == 6  # PNDM 5 steps + 1
    for name in ("channels_last", "fused_qkv", "vae_nan_guard", "compile"):
        assert figures[f"opt_{name}_within_fp16_tolerance"] == "yes"
    assert figures["opt_compile_recompiles_per_style_change"] == "0.0"
    assert figures["opt_compile_style_swap_image_mean_abs_diff"] == "0.000"
    assert figures["opt_cuda_graphs_speedup"] == "skipped (CUDA only)"
