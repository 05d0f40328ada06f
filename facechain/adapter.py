"""FACT face adapter: serial gated self-attention in front of every UNet cross-attention.

Each transformer block's pre-cross-attention LayerNorm (`norm2`) moves into the attn2 processor
(`ln`), so attn2 sees the raw residual stream h and returns `y + h2 - h`: the block then adds h
back, giving h2 + y, where h2 is h plus the gated face self-attention and feed-forward and y is the
UNet's own cross-attention on ln(h2) over the text tokens. The face tokens are the last
16 * num_faces context tokens; ControlNet processors drop them so ControlNet sees text only.
Load / set-scale / unload follow diffusers' IP-Adapter loader, and unload puts back the very
processor and LayerNorm objects that were there before.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from facechain.errors import EngineError
from facechain.models.checkpoint import check_state_dict, load_strict
from facechain.models.projector import FaceProjector, projector_state_dict

logger = logging.getLogger(__name__)

TOKENS_PER_FACE = 16
# A diffusers attention processor: any callable (attn, hidden_states, context, mask, temb) -> out.
Processor = Any
_STATE_ATTR = "_facechain_face_adapter"
_CN_STATE_ATTR = "_facechain_hidden_face_tokens"


class FaceSelfAttention(nn.Module):
    """Self-attention over [visual; face] tokens returning the visual rows only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, num_visual: int, heads: int) -> torch.Tensor:
        b, n, c = x.shape
        # Only the visual rows are kept, so only they need queries.
        q = self.to_q(x[:, :num_visual]).view(b, num_visual, heads, c // heads).transpose(1, 2)
        k = self.to_k(x).view(b, n, heads, c // heads).transpose(1, 2)
        v = self.to_v(x).view(b, n, heads, c // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        result: torch.Tensor = self.to_out(out.transpose(1, 2).reshape(b, num_visual, c))
        return result


class GEGLU(nn.Module):
    """Gated GELU projection: value * GELU(gate)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected: torch.Tensor = self.proj(x)
        value, gate = projected.chunk(2, dim=-1)
        return value * F.gelu(gate)


class FaceFeedForward(nn.Module):
    """GEGLU feed-forward with 4x inner width (`net.0.proj`, `net.2`).

    On the CPU without autograd the rows go through in chunks of `CPU_CHUNK_ROWS`: the same
    per-row math (bit-identical here), but the (rows, 8C) projection stays 10 MiB instead of
    84 MiB at 64x64 latents, so it is not a fresh mmap that page-faults on every call, and it
    stays in cache for the GELU and the output projection (a 320-wide block at 64x64: 0.30 ->
    0.24 s on one core). CUDA keeps one pass (chunks would only add kernel launches).
    """

    CPU_CHUNK_ROWS = 1024

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.device.type != "cpu" or torch.is_grad_enabled() or rows <= self.CPU_CHUNK_ROWS:
            out: torch.Tensor = self.net(x)
            return out
        proj = cast(GEGLU, self.net[0]).proj
        down = cast(nn.Linear, self.net[2])
        flat = x.reshape(rows, x.shape[-1])
        chunks = []
        for start in range(0, rows, self.CPU_CHUNK_ROWS):
            value, gate = proj(flat[start : start + self.CPU_CHUNK_ROWS]).chunk(2, dim=-1)
            # value * GELU(gate), with the product written over the fresh GELU output.
            chunks.append(down(F.gelu(gate).mul_(value)))
        return torch.cat(chunks).view(*x.shape[:-1], down.out_features)


class FaceAttnProcessor(nn.Module):
    """attn2 processor: gated face self-attention + FF, then the block's own cross-attention.

    Args:
        hidden_size: block width C (320/640/1280 in SD1.5).
        cross_attention_dim: context width (768 in SD1.5); face tokens have the same width.
        heads: heads of the face self-attention (the attn2 module's heads).
        ln: the block's relocated `norm2` (a copy; the checkpoint's values are loaded into it).
        num_tokens: face tokens at the end of the context (16 per face).
        scale: adapter strength s multiplying both tanh gates.
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int,
        heads: int,
        ln: nn.Module,
        num_tokens: int = TOKENS_PER_FACE,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cross_attention_dim = cross_attention_dim
        self.heads = heads
        self.num_tokens = num_tokens
        self.scale = scale
        self.linear = nn.Linear(cross_attention_dim, hidden_size)
        self.attn = FaceSelfAttention(hidden_size)
        self.ff = FaceFeedForward(hidden_size)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.ln = ln
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        self.cross: Processor = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run one attn2 call.

        Args:
            attn: the block's attn2 module (its q/k/v/out weights do the text cross-attention).
            hidden_states: (B, N, C) residual stream h (norm2 was moved into this processor).
            encoder_hidden_states: (B, T + num_tokens, D) [text; face] context.
            attention_mask: optional mask over the text tokens.
            temb: unused by SD1.5 attention.

        Returns:
            (B, N, C) `y + h2 - h`, so that the block's residual add yields h2 + y.
        """
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= self.num_tokens:
            raise ValueError(
                f"face adapter needs [text; {self.num_tokens} face tokens] as context, got "
                f"{None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)}"
            )
        text = encoder_hidden_states[:, : -self.num_tokens]
        face = encoder_hidden_states[:, -self.num_tokens :]
        h = hidden_states
        if self.scale == 0.0:
            # Both gated terms vanish; skipping them keeps scale 0 bit-identical to plain SD.
            plain: torch.Tensor = self.cross(attn, self.ln(h), text, attention_mask, temb)
            return plain
        n = h.shape[1]
        gate_attn = self.scale * torch.tanh(self.alpha_attn)
        gate_dense = self.scale * torch.tanh(self.alpha_dense)
        tokens = self.norm1(torch.cat([h, self.linear(face)], dim=1))
        # addcmul fuses the gate multiply and the residual add (one pass over the activations).
        h2 = torch.addcmul(h, gate_attn, self.attn(tokens, n, self.heads))
        h2 = torch.addcmul(h2, gate_dense, self.ff(self.norm2(h2)))
        y: torch.Tensor = self.cross(attn, self.ln(h2), text, attention_mask, temb)
        # y is a fresh tensor owned here, so y + h2 - h can be formed in place.
        return y.add_(h2).sub_(h)


class FaceTokenDropProcessor:
    """ControlNet processor wrapper that hides the trailing face tokens from cross-attention."""

    def __init__(self, inner: Processor, num_tokens: int) -> None:
        self.inner = inner
        self.num_tokens = num_tokens

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states[:, : -self.num_tokens]
        out: torch.Tensor = self.inner(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb
        )
        return out


@dataclass
class _AdapterState:
    """What `load_face_adapter` replaced, to be put back by `unload_face_adapter`."""

    processors: dict[str, Processor]
    norms: dict[str, nn.Module]
    controlnets: list[nn.Module] = field(default_factory=list)


def _attn_processors(model: nn.Module) -> dict[str, Processor]:
    """diffusers' `attn_processors` of a UNet or ControlNet (mypy cannot see diffusers models)."""
    diffusers_model: Any = model
    return dict(diffusers_model.attn_processors)


def _set_attn_processors(model: nn.Module, processors: dict[str, Processor]) -> None:
    """diffusers' `set_attn_processor` with a full name -> processor map."""
    diffusers_model: Any = model
    diffusers_model.set_attn_processor(dict(processors))


def cross_attention_blocks(unet: nn.Module) -> dict[str, Any]:
    """Transformer blocks with a cross-attention (16 in SD1.5), by module name."""
    blocks: dict[str, Any] = {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock) and module.attn2 is not None
    }
    for name, block in blocks.items():
        if not isinstance(block.norm2, nn.LayerNorm):
            raise EngineError(f"{name}: face adapter needs LayerNorm blocks, got {block.norm2}")
    return blocks


def _build_processors(
    unet: nn.Module, num_tokens: int, scale: float
) -> dict[str, FaceAttnProcessor]:
    """One face processor per attn2, on the UNet's device and dtype."""
    param = next(unet.parameters())
    procs = {}
    for name, block in cross_attention_blocks(unet).items():
        attn2 = block.attn2
        if attn2.residual_connection or attn2.rescale_output_factor != 1.0:
            raise EngineError(f"{name}.attn2: unsupported residual/rescale settings")
        # Built directly on the UNet's device: no CPU allocation of ~200M parameters first.
        with param.device:
            proc = FaceAttnProcessor(
                hidden_size=attn2.to_q.in_features,
                cross_attention_dim=attn2.to_k.in_features,
                heads=attn2.heads,
                ln=copy.deepcopy(block.norm2),
                num_tokens=num_tokens,
                scale=scale,
            )
        procs[f"{name}.attn2.processor"] = proc.to(dtype=param.dtype)
    return procs


def adapter_state_dict_template(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter checkpoint key (without the projector) with a tensor of its shape."""
    procs = _build_processors(unet, TOKENS_PER_FACE, 1.0)
    return {
        f"{pname}.{key}": value
        for pname, proc in procs.items()
        for key, value in proc.state_dict().items()
    }


def hide_face_tokens(controlnet: nn.Module, num_tokens: int = TOKENS_PER_FACE) -> None:
    """Make every ControlNet attention ignore the trailing `num_tokens` context tokens."""
    if hasattr(controlnet, _CN_STATE_ATTR):
        return
    originals = _attn_processors(controlnet)
    _set_attn_processors(
        controlnet,
        {name: FaceTokenDropProcessor(proc, num_tokens) for name, proc in originals.items()},
    )
    setattr(controlnet, _CN_STATE_ATTR, originals)


def show_face_tokens(controlnet: nn.Module) -> None:
    """Undo `hide_face_tokens`, restoring the original processor objects."""
    originals = getattr(controlnet, _CN_STATE_ATTR, None)
    if originals is None:
        return
    _set_attn_processors(controlnet, originals)
    delattr(controlnet, _CN_STATE_ATTR)


def load_face_adapter(
    unet: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    projector: FaceProjector,
    controlnet: nn.Module | None = None,
    num_faces: int = 1,
    scale: float = 1.0,
) -> None:
    """Install the FACT adapter into a UNet and load its weights strictly.

    Args:
        unet: SD1.5-layout UNet2DConditionModel (16 cross-attention blocks).
        state_dict: FACT checkpoint: `...attn2.processor.*` keys for the UNet and
            `local_fac_prj.*` keys for the projector; other keys are ignored.
        projector: FaceProjector whose sizes match the checkpoint; loaded in place.
        controlnet: optional ControlNet whose attention must not see the face tokens.
        num_faces: faces concatenated in the context (16 tokens each).
        scale: initial adapter scale.
    """
    if hasattr(unet, _STATE_ATTR):
        raise EngineError("a face adapter is already loaded into this UNet")
    num_tokens = TOKENS_PER_FACE * num_faces
    procs = _build_processors(unet, num_tokens, scale)
    given = {k: v for k, v in state_dict.items() if "processor" in k}
    expected = {
        f"{pname}.{key}": value
        for pname, proc in procs.items()
        for key, value in proc.state_dict().items()
    }
    check_state_dict(expected, given, "face adapter")
    # All checks come before any change, so a bad checkpoint leaves the UNet as it was.
    load_strict(projector, projector_state_dict(state_dict), "face projector")
    for pname, proc in procs.items():
        prefix = pname + "."
        proc.load_state_dict(
            {k[len(prefix) :]: v for k, v in given.items() if k.startswith(prefix)}, strict=True
        )
    ignored = len(state_dict) - len(given) - len(projector.state_dict())
    if ignored:
        logger.debug("face adapter: ignored %d checkpoint entries", ignored)

    originals = _attn_processors(unet)
    _set_attn_processors(unet, {**originals, **procs})
    norms: dict[str, nn.Module] = {}
    for name, block in cross_attention_blocks(unet).items():
        norms[name] = block.norm2
        block.norm2 = nn.Identity()
    state = _AdapterState(processors=originals, norms=norms)
    if controlnet is not None and not hasattr(controlnet, _CN_STATE_ATTR):
        hide_face_tokens(controlnet, num_tokens)
        state.controlnets.append(controlnet)
    setattr(unet, _STATE_ATTR, state)
    logger.info("face adapter loaded into %d blocks (%d tokens)", len(procs), num_tokens)


def face_processors(unet: nn.Module) -> list[FaceAttnProcessor]:
    """The installed face processors in UNet order (down, mid, up)."""
    return [p for p in _attn_processors(unet).values() if isinstance(p, FaceAttnProcessor)]


def set_adapter_scale(unet: nn.Module, scale: float | Sequence[float]) -> None:
    """Set the adapter strength, one value for all blocks or one per block (UNet order)."""
    procs = face_processors(unet)
    if not procs:
        raise EngineError("no face adapter is loaded")
    scales = [float(scale)] * len(procs) if isinstance(scale, int | float) else list(scale)
    if len(scales) != len(procs):
        raise ValueError(f"expected {len(procs)} scales, got {len(scales)}")
    for proc, value in zip(procs, scales, strict=True):
        proc.scale = value


def get_adapter_scale(unet: nn.Module) -> list[float]:
    """Current per-block adapter scales (UNet order)."""
    return [p.scale for p in face_processors(unet)]


def unload_face_adapter(unet: nn.Module) -> None:
    """Remove the adapter: original processors and norm2 modules (the same objects) come back."""
    state: _AdapterState | None = getattr(unet, _STATE_ATTR, None)
    if state is None:
        raise EngineError("no face adapter is loaded")
    _set_attn_processors(unet, state.processors)
    blocks: dict[str, Any] = {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, BasicTransformerBlock) and module.attn2 is not None
    }
    for name, norm in state.norms.items():
        blocks[name].norm2 = norm
    for controlnet in state.controlnets:
        show_face_tokens(controlnet)
    delattr(unet, _STATE_ATTR)
    logger.info("face adapter unloaded")
