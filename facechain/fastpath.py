"""Opt-in fast paths for the engine's resident pipelines, each behind an `EngineConfig` flag.

All are off by default until measured on a GPU (`bench/gpu.py` times each one alone against the
eager pipeline and checks its output stays within fp16 tolerance); each also runs on the CPU in
the tests on the tiny profile, so the code path is exercised without a GPU.

- `channels_last`: the 4-D weights of the UNet, VAE and ControlNet in NHWC; cuDNN's convolutions
  then run without layout transposes (tensor cores prefer NHWC).
- `fuse_qkv`: diffusers' fused projections for the UNet's own attention: one q|k|v GEMM in every
  attn1 and one k|v GEMM in every attn2 (text cross-attention, run by the face processors'
  `cross`). The face adapter's own layers are untouched, so its math is unchanged. to_q / to_k /
  to_v stay as views into the fused weight, so a style LoRA merged into them in place (and its
  restore) updates the fused weight too, and hot swapping keeps working.
- `compile_unet`: `torch.compile` of the UNet's forward in place (`nn.Module.compile`), so the
  pipelines, the adapter helpers and the LoRA merge see the same module. LoRA merges change
  weights in place and cause no recompile; every new input shape (batch size, with or without
  ControlNet residuals) and every new adapter scale value compiles once. `compile_mode=
  "reduce-overhead"` adds CUDA graphs (see bench/README.md for what they need).
- `vae_nan_guard`: fp16 VAE decodes stay fp16; a decoded image with a non-finite value is decoded
  again in fp32 (a lazily made fp32 copy of the VAE), so an fp16 overflow never reaches a user.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from torch import nn

from facechain.adapter import FaceAttnProcessor, _attn_processors, _set_attn_processors

logger = logging.getLogger(__name__)

_FUSED_ATTR = "_facechain_fused_qkv"
_GUARD_ATTR = "_facechain_vae_guard"


def set_channels_last(models: list[nn.Module], enabled: bool = True) -> None:
    """Put the 4-D weights of `models` in channels-last (or back in contiguous) layout."""
    fmt = torch.channels_last if enabled else torch.contiguous_format
    for model in models:
        module: Any = model
        module.to(memory_format=fmt)


def _alias(module: nn.Linear, fused: torch.Tensor) -> None:
    """Make `module.weight` a view into `fused` (same values), so in-place updates reach both."""
    module.weight = nn.Parameter(fused, requires_grad=module.weight.requires_grad)


def fuse_qkv(unet: nn.Module) -> int:
    """Fuse the q/k/v projections of every attention in `unet`; returns how many were fused.

    Self-attentions get one q|k|v GEMM, cross-attentions one k|v GEMM (diffusers'
    `fuse_projections`). Processors: plain SDPA ones become `FusedAttnProcessor2_0`; a face
    processor keeps its own layers and only its text cross-attention (`cross`) is fused. Call it
    after the model has its final device and dtype (moving it again would split the views).
    """
    if hasattr(unet, _FUSED_ATTR):
        return 0
    count = 0
    with torch.no_grad():
        for module in unet.modules():
            if not isinstance(module, Attention) or module.to_q.bias is not None:
                continue
            module.fuse_projections(fuse=True)
            if module.is_cross_attention:
                weight = module.to_kv.weight
                n = module.to_k.out_features
                _alias(module.to_k, weight.data[:n])
                _alias(module.to_v, weight.data[n:])
            else:
                weight = module.to_qkv.weight
                n, m = module.to_q.out_features, module.to_k.out_features
                _alias(module.to_q, weight.data[:n])
                _alias(module.to_k, weight.data[n : n + m])
                _alias(module.to_v, weight.data[n + m :])
            count += 1
    originals = _attn_processors(unet)
    fused: dict[str, Any] = {}
    for name, proc in originals.items():
        if isinstance(proc, FaceAttnProcessor):
            proc.cross = FusedAttnProcessor2_0()
            fused[name] = proc
        elif type(proc) is AttnProcessor2_0:
            fused[name] = FusedAttnProcessor2_0()
        else:
            fused[name] = proc
    _set_attn_processors(unet, fused)
    setattr(unet, _FUSED_ATTR, originals)
    logger.info("fused q/k/v projections of %d attention modules", count)
    return count


def unfuse_qkv(unet: nn.Module) -> None:
    """Go back to the separate projections (the fused weights stay; they are views anyway)."""
    originals: dict[str, Any] | None = getattr(unet, _FUSED_ATTR, None)
    if originals is None:
        return
    current = _attn_processors(unet)
    restored: dict[str, Any] = {}
    for name, proc in current.items():
        if isinstance(proc, FaceAttnProcessor):
            proc.cross = AttnProcessor2_0()
            restored[name] = proc
        elif isinstance(proc, FusedAttnProcessor2_0):
            restored[name] = originals.get(name, AttnProcessor2_0())
        else:
            restored[name] = proc
    _set_attn_processors(unet, restored)
    for module in unet.modules():
        if isinstance(module, Attention) and getattr(module, "fused_projections", False):
            module.fused_projections = False
    delattr(unet, _FUSED_ATTR)


def compile_unet(unet: nn.Module, mode: str | None = None, backend: str = "inductor") -> None:
    """`torch.compile` the UNet's forward in place (the module object stays the same)."""
    unet.compile(mode=mode, backend=backend)
    logger.info("UNet compiled (backend %s, mode %s)", backend, mode or "default")


def uncompile_unet(unet: nn.Module) -> None:
    """Back to the eager forward."""
    unet._compiled_call_impl = None


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class _GuardedDecode:
    """`vae.decode` replacement: fp16 decode, fp32 again for images with non-finite pixels."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self.fp32: Any = None
        self.fallbacks = 0

    def _fp32_vae(self) -> Any:
        if self.fp32 is None:
            vae_copy = copy.deepcopy(self.vae)
            vae_copy.__dict__.pop("decode", None)
            vae_copy.__dict__.pop(_GUARD_ATTR, None)
            self.fp32 = vae_copy.float()
        return self.fp32

    def __call__(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = type(self.vae).decode(self.vae, z, *args, **kwargs)
        sample: torch.Tensor = out[0] if isinstance(out, tuple) else out.sample
        if sample.dtype == torch.float32:
            return out
        bad = ~torch.isfinite(sample).flatten(1).all(dim=1)
        if bool(bad.any()):
            redone = int(bad.sum())
            self.fallbacks += redone
            logger.warning("VAE decode: %d non-finite image(s) in fp16, decoded in fp32", redone)
            fp32 = self._fp32_vae()
            redo = type(fp32).decode(fp32, z[bad].float(), return_dict=False)[0]
            sample[bad] = redo.to(sample.dtype)
        return out


def guard_vae_decode(vae: Any) -> _GuardedDecode:
    """Install the NaN guard on `vae.decode` (idempotent); returns it (`fallbacks` counts)."""
    guard: _GuardedDecode | None = getattr(vae, _GUARD_ATTR, None)
    if guard is None:
        guard = _GuardedDecode(vae)
        vae.decode = guard
        setattr(vae, _GUARD_ATTR, guard)
    return guard


def unguard_vae_decode(vae: nn.Module) -> None:
    """Remove the NaN guard."""
    if getattr(vae, _GUARD_ATTR, None) is not None:
        vae.__dict__.pop("decode", None)
        delattr(vae, _GUARD_ATTR)


def apply(
    unet: nn.Module,
    vae: nn.Module,
    *,
    channels_last: bool = False,
    fuse: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    vae_nan_guard: bool = False,
) -> None:
    """Apply the enabled fast paths to one base's UNet and VAE, in a safe order (layout first,
    then the fused views of the final weights, then the compile that traces them)."""
    if channels_last:
        set_channels_last([unet, vae])
    if fuse:
        fuse_qkv(unet)
    if vae_nan_guard:
        guard_vae_decode(vae)
    if compile:
        compile_unet(unet, compile_mode, compile_backend)
