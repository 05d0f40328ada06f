"""FACT face projector: a Perceiver resampler from TransFace tokens to UNet context tokens.

Parameter names match the `local_fac_prj.` entries of the FACT adapter checkpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

CKPT_PREFIX = "local_fac_prj."


@dataclass(frozen=True)
class ProjectorConfig:
    """Resampler sizes; the defaults are the released FACT projector (144x512 -> 16x768)."""

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 512
    output_dim: int = 768
    ff_mult: int = 4


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, no biases (indices 0, 1, 3 carry weights)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs; latents]."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n_lat, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1)
        q, k, v = (t.view(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        # Scale split over q and k (dim_head^-1/4 each) keeps fp16 products in range.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n_lat, -1)
        result: torch.Tensor = self.to_out(out)
        return result


class FaceProjector(nn.Module):
    """Perceiver resampler: identity tokens -> face context tokens."""

    def __init__(self, config: ProjectorConfig | None = None) -> None:
        super().__init__()
        cfg = config or ProjectorConfig()
        self.config = cfg
        self.latents = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) / cfg.dim**0.5)
        self.proj_in = nn.Linear(cfg.embedding_dim, cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads),
                        feed_forward(cfg.dim, cfg.ff_mult),
                    ]
                )
                for _ in range(cfg.depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project identity tokens.

        Args:
            x: (B, 144, embedding_dim) TransFace tokens (all zeros for the negative branch).

        Returns:
            (B, num_queries, output_dim) face context tokens.
        """
        latents = self.latents.expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for layer in self.layers:
            attn, ff = layer[0], layer[1]  # type: ignore[index]
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        out: torch.Tensor = self.norm_out(self.proj_out(latents))
        return out


def projector_state_dict(
    adapter_state_dict: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The projector's entries of a FACT adapter checkpoint, prefix removed."""
    return {
        key[len(CKPT_PREFIX) :]: value
        for key, value in adapter_state_dict.items()
        if key.startswith(CKPT_PREFIX)
    }
