"""TransFace ViT (insightface-style) with the parameter names of `ms1mv2_model_TransFace_S.pt`.

FACT feeds the projector with the final-LayerNorm output of all patch tokens; the SE-weighted
512-d global embedding head is kept so the released checkpoint loads strictly, and is exposed
as `embed` for identity similarity.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facechain.models.checkpoint import load_strict

logger = logging.getLogger(__name__)

FACE_SIZE = 112


@dataclass(frozen=True)
class TransFaceConfig:
    """Architecture of a TransFace ViT; the defaults are the released ViT-S."""

    img_size: int = FACE_SIZE
    patch_size: int = 9
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_features: int = 512

    @property
    def num_patches(self) -> int:
        """Number of patch tokens (144 for 112 px and patch 9)."""
        return (self.img_size // self.patch_size) ** 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)
        return out.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention without qkv bias, computed in fp32 like the original."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).float().unbind(0)
        # The released model was trained with attention in fp32; half precision shifts the tokens.
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, c).to(x.dtype)
        result: torch.Tensor = self.proj(out)
        return result


class Mlp(nn.Module):
    """Two-layer MLP with ReLU6."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class TransFaceViT(nn.Module):
    """TransFace ViT; `forward` returns the final-LayerNorm patch tokens."""

    def __init__(self, config: TransFaceConfig | None = None) -> None:
        super().__init__()
        cfg = config or TransFaceConfig()
        self.config = cfg
        dim, n = cfg.embed_dim, cfg.num_patches
        self.patch_embed = PatchEmbed(cfg.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
        # Only used for masked training; present in the checkpoint.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(dim * n, dim, bias=False),
            nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, cfg.num_features, bias=False),
            nn.BatchNorm1d(cfg.num_features, eps=2e-5),
        )
        self.senet = nn.Sequential(
            nn.Linear(dim * n, n, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(n, n, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of aligned faces.

        Args:
            x: (B, 3, 112, 112) RGB in [-1, 1].

        Returns:
            (B, num_patches, embed_dim) final-LayerNorm tokens, fp32.
        """
        if x.shape[-2:] != (self.config.img_size, self.config.img_size):
            raise ValueError(f"expected {self.config.img_size}px faces, got {tuple(x.shape)}")
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        tokens: torch.Tensor = self.norm(x.float())
        return tokens

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global identity embedding (SE patch weighting + feature head).

        Args:
            x: (B, 3, 112, 112) RGB in [-1, 1].

        Returns:
            (B, num_features) embedding, not normalised.
        """
        tokens = self.forward(x)
        flat = tokens.flatten(1)
        weights = self.senet(flat).unsqueeze(-1)
        emb: torch.Tensor = self.feature((weights * tokens).flatten(1))
        return emb


def faces_to_tensor(
    faces: Sequence[np.ndarray | Image.Image], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Stack aligned face crops into the encoder's input.

    Args:
        faces: aligned 112x112 RGB crops, uint8 arrays (112, 112, 3) or PIL images.
        device: target device.

    Returns:
        (N, 3, 112, 112) fp32 in [-1, 1].
    """
    if not faces:
        raise ValueError("no face crops given")
    arrays = []
    for face in faces:
        arr = np.asarray(face.convert("RGB") if isinstance(face, Image.Image) else face)
        if arr.shape != (FACE_SIZE, FACE_SIZE, 3) or arr.dtype != np.uint8:
            raise ValueError(
                f"face crops must be uint8 (112, 112, 3), got {arr.dtype} {arr.shape}"
            )
        arrays.append(arr)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return ((batch / 255.0 - 0.5) / 0.5).to(device)


def load_transface(
    path: Path, config: TransFaceConfig | None = None, device: torch.device | str = "cpu"
) -> TransFaceViT:
    """Build TransFace and load a checkpoint strictly (all keys, no extras): eval, frozen, fp32."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = TransFaceViT(config)
    load_strict(model, state_dict, "TransFace")
    logger.info("loaded TransFace from %s (%d tensors)", path, len(state_dict))
    return model.eval().requires_grad_(False).to(device)
