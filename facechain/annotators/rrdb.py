"""RRDB ×4 super-resolution (ESRGAN/BasicSR `RRDBNet`, as FaceChain's HD option ran it).

FaceChain (train-based, 2023-11 → 2024-06) called ModelScope's pipeline for
`damo/cv_rrdb_image-super-resolution`: RGB /255 in, one ×4 forward, clamp, round, then an
optional INTER_AREA resize (2048 for SD1.5's 512 px portraits). This module keeps those numbers
and the published key layout, and adds tiling so that peak memory stays bounded for any image
size. The network is plain torch; the weights (`pytorch_model.pt`, an unwrapped state dict) load
strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from facechain import registry
from facechain.errors import Cancelled, EngineError, WeightsInvalid
from facechain.models.checkpoint import load_strict

logger = logging.getLogger(__name__)

SCALE = 4
# FaceChain's pipeline config: in/out 3, scale 4, num_feat 64, num_block 23, num_grow_ch 32.
NUM_FEAT = 64
NUM_BLOCK = 23
NUM_GROW_CH = 32
# The tiny profile's stand-in: same classes and code path, one narrow block, seeded weights.
TINY = {"num_block": 1, "num_feat": 16, "num_grow_ch": 8}
# FaceChain's choice for SD1.5 (512 px generations): SR to 2048, no resize.
HD_SIZE = 2048
WRAPPER_KEYS = ("params_ema", "params")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    # In place: every input here is a fresh conv output nobody else holds (saves a full copy
    # of the largest activations at ×4 resolution).
    return F.leaky_relu(x, 0.2, inplace=True)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3×3 convs; out = x + 0.2·conv5([x, x1..x4])."""

    def __init__(self, num_feat: int = NUM_FEAT, num_grow_ch: int = NUM_GROW_CH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_feat, H, W) -> same shape."""
        x1 = _lrelu(self.conv1(x))
        x2 = _lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = _lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = _lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        out: torch.Tensor = x + 0.2 * x5
        return out


class RRDB(nn.Module):
    """Residual in residual dense block: three RDBs, out = x + 0.2·rdb3(rdb2(rdb1(x)))."""

    def __init__(self, num_feat: int = NUM_FEAT, num_grow_ch: int = NUM_GROW_CH) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_feat, H, W) -> same shape."""
        out: torch.Tensor = x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))
        return out


class RRDBNet(nn.Module):
    """ESRGAN generator for scale 4 (no pixel-unshuffle); key names match the published file.

    Full size (the defaults): 702 tensors, 16,697,987 parameters.
    """

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = NUM_FEAT,
        num_block: int = NUM_BLOCK,
        num_grow_ch: int = NUM_GROW_CH,
    ) -> None:
        super().__init__()
        self.num_block = num_block
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve.

        Args:
            x: (N, 3, H, W) RGB in [0, 1], the module's dtype and device.

        Returns:
            (N, 3, 4H, 4W), not clamped (callers clamp to [0, 1]).
        """
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = _lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = _lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out: torch.Tensor = self.conv_last(_lrelu(self.conv_hr(feat)))
        return out


def receptive_radius(num_block: int) -> int:
    """Input pixels on each side that can influence one output pixel (an upper bound).

    Every 3×3 conv at input resolution reaches one pixel: conv_first, 15 per RRDB (three RDBs
    whose conv1..conv5 form a chain of five), conv_body. After the two nearest ×2 upsamplings,
    conv_up1 (at ×2) and conv_up2, conv_hr, conv_last (at ×4) reach at most one more input pixel
    each way per resolution: two in all. A tile overlap of at least this many pixels makes
    tiled output identical to one pass.
    """
    return 1 + 15 * num_block + 1 + 2


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an RRDB `pytorch_model.pt` (torch.load, weights only, on the CPU).

    Raises:
        WeightsInvalid: a BasicSR/Real-ESRGAN `params_ema`/`params` wrapper, or not a mapping
            of names to tensors.
    """
    raw: Any = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, Mapping):
        raise WeightsInvalid(f"{path}: expected a state dict, found {type(raw).__name__}")
    wrapped = [k for k in WRAPPER_KEYS if isinstance(raw.get(k), Mapping)]
    if wrapped:
        raise WeightsInvalid(
            f"{path} is a BasicSR-style checkpoint wrapped in {wrapped[0]!r}; the RRDB loader "
            f"takes the bare state dict FaceChain's pipeline loads. Unwrap it once: python -c "
            f"\"import torch; p='{path}'; torch.save(torch.load(p, weights_only=True)"
            f"['{wrapped[0]}'], p)\""
        )
    bad = [str(k) for k, v in raw.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsInvalid(f"{path}: {len(bad)} entries are not named tensors, e.g. {bad[:3]}")
    return dict(raw)


class Upscaler:
    """An RRDBNet on a device, with tiled inference from PIL to PIL."""

    def __init__(
        self, net: RRDBNet, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.net = net.eval().requires_grad_(False).to(device=self.device, dtype=self.dtype)

    @classmethod
    def from_file(
        cls, path: Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> Upscaler:
        """Load the published full-size weights strictly (all 702 keys, no extras).

        Raises:
            WeightsInvalid: wrapped, not a state dict, or keys missing, unexpected or of
                another shape.
        """
        state_dict = read_state_dict(path)
        net = RRDBNet()
        try:
            load_strict(net, state_dict, "RRDBNet")
        except EngineError as exc:
            raise WeightsInvalid(f"{path}: {exc}") from exc
        logger.info("loaded RRDBNet from %s (%d tensors)", path, len(state_dict))
        return cls(net, device, dtype)

    @classmethod
    def random(
        cls,
        seed: int = 0,
        *,
        num_block: int = NUM_BLOCK,
        num_feat: int = NUM_FEAT,
        num_grow_ch: int = NUM_GROW_CH,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Upscaler:
        """Seeded random weights: full size by default (benchmarks), smaller for the tiny profile.

        The tiny profile builds fewer and narrower blocks: it changes which weights are built,
        never which code runs.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = RRDBNet(num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
        return cls(net, device, dtype)

    @torch.inference_mode()
    def upscale(
        self,
        image: Image.Image,
        tile: int = 256,
        overlap: int = 16,
        out_size: int | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
    ) -> Image.Image:
        """Super-resolve ×4, tile by tile.

        Each `tile`×`tile` input tile runs with `overlap` pixels of real neighbouring context on
        every side (fewer at the image border) and only its own ×4 region is kept, so there are
        no seams and peak memory depends on `tile + 2·overlap`, not on the image. With `overlap`
        ≥ `receptive_radius(num_block)` the output equals a single pass exactly.

        Args:
            image: PIL image (converted to RGB), any size.
            tile: input tile side in pixels (≥ 1).
            overlap: context pixels around each tile (≥ 0).
            out_size: cap on the long side of the result: a larger ×4 output is shrunk with
                cv2.INTER_AREA (FaceChain's 768/1024 choices); None or a cap at or above the ×4
                size keeps the plain ×4 output (2048 for 512 px portraits).
            progress: called as progress(done_tiles, total_tiles) after each tile.
            cancel: checked before each tile; True raises `Cancelled`.

        Returns:
            RGB PIL image, (4W, 4H) or shrunk to `out_size` on its long side.
        """
        if tile < 1 or overlap < 0:
            raise ValueError(f"tile must be >= 1 and overlap >= 0, got {tile}, {overlap}")
        if out_size is not None and out_size < 1:
            raise ValueError(f"out_size must be positive, got {out_size}")
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy for torch
        height, width = rgb.shape[:2]
        pixels = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
        out = np.empty((height * SCALE, width * SCALE, 3), dtype=np.uint8)
        boxes = [
            (y, x, min(y + tile, height), min(x + tile, width))
            for y in range(0, height, tile)
            for x in range(0, width, tile)
        ]
        for done, (y0, x0, y1, x1) in enumerate(boxes, start=1):
            if cancel is not None and cancel():
                raise Cancelled("upscaling cancelled")
            py0, px0 = max(0, y0 - overlap), max(0, x0 - overlap)
            py1, px1 = min(height, y1 + overlap), min(width, x1 + overlap)
            inp = pixels[:, :, py0:py1, px0:px1].to(torch.float32).div_(255.0)
            sr = self.net(inp.to(device=self.device, dtype=self.dtype))
            crop = sr[
                0,
                :,
                (y0 - py0) * SCALE : (y1 - py0) * SCALE,
                (x0 - px0) * SCALE : (x1 - px0) * SCALE,
            ]
            # FaceChain: clamp to [0, 1], ×255, round, uint8 (fp16 is widened to fp32 first).
            wide = crop if crop.dtype == torch.float64 else crop.float()
            rounded = wide.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            out[y0 * SCALE : y1 * SCALE, x0 * SCALE : x1 * SCALE] = (
                rounded.permute(1, 2, 0).cpu().numpy()
            )
            del sr, crop, wide, rounded
            if progress is not None:
                progress(done, len(boxes))
        long_side = max(out.shape[:2])
        if out_size is not None and out_size < long_side:
            factor = out_size / long_side
            size = (
                max(1, round(out.shape[1] * factor)),
                max(1, round(out.shape[0] * factor)),
            )
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
        return Image.fromarray(out)


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_upscaler(
    profile: Literal["real", "tiny"], models_dir: Path, device: str = "auto"
) -> Upscaler:
    """The upscaler of a profile: the published weights (fp16 on CUDA, fp32 on CPU), or for
    `tiny` a seeded one-block narrow net in fp32 (other weights, the same code).

    Raises:
        WeightsMissing: real profile and `upscaler_rrdb` is not in the model cache.
    """
    torch_device = resolve_device(device)
    if profile == "tiny":
        return Upscaler.random(seed=0, device=torch_device, dtype=torch.float32, **TINY)
    dtype = torch.float16 if torch_device.type == "cuda" else torch.float32
    path = registry.resolve(registry.UPSCALER_RRDB, models_dir)
    upscaler = Upscaler.from_file(path, torch_device, dtype)
    logger.info("upscaler on %s/%s", torch_device, dtype)
    return upscaler
