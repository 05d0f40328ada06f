"""The three OpenPose networks of controlnet_aux 0.0.6, named by the published file keys.

Every conv is a direct attribute (`conv1_1`, `Mconv7_stage6_L2`, ...), so the parameter names are
exactly the keys of `body_pose_model.pth`, `hand_pose_model.pth` and `facenet.pth` and the files
load with `load_state_dict(strict=True)`. controlnet_aux nests body/hand layers in `model0`,
`model1_1`, ... and strips that prefix when loading; the flat names here are the same keys.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

# One layer: (name, in_channels, out_channels, kernel); "pool" entries are 2x2/2 max pooling.
_Layer = tuple[str, int, int, int]
_POOL = "pool"

# The VGG-19 stem every OpenPose net starts with (same layer names in all three files).
_VGG_STEM: tuple[_Layer, ...] = (
    ("conv1_1", 3, 64, 3),
    ("conv1_2", 64, 64, 3),
    (_POOL, 0, 0, 0),
    ("conv2_1", 64, 128, 3),
    ("conv2_2", 128, 128, 3),
    (_POOL, 0, 0, 0),
    ("conv3_1", 128, 256, 3),
    ("conv3_2", 256, 256, 3),
    ("conv3_3", 256, 256, 3),
    ("conv3_4", 256, 256, 3),
    (_POOL, 0, 0, 0),
    ("conv4_1", 256, 512, 3),
    ("conv4_2", 512, 512, 3),
)

_VGG_BODY: tuple[_Layer, ...] = (
    *_VGG_STEM,
    ("conv4_3_CPM", 512, 256, 3),
    ("conv4_4_CPM", 256, 128, 3),
)

# Backbone shared by the hand and face nets (identical layers and names).
_VGG_HAND: tuple[_Layer, ...] = (
    *_VGG_STEM,
    ("conv4_3", 512, 512, 3),
    ("conv4_4", 512, 512, 3),
    ("conv5_1", 512, 512, 3),
    ("conv5_2", 512, 512, 3),
    ("conv5_3_CPM", 512, 128, 3),
)


def _refine_stage(suffix: str, in_ch: int, out_ch: int) -> tuple[_Layer, ...]:
    """Mconv1..Mconv7 of one refinement stage (five 7x7, one 1x1, one 1x1 output conv)."""
    return (
        (f"Mconv1_{suffix}", in_ch, 128, 7),
        (f"Mconv2_{suffix}", 128, 128, 7),
        (f"Mconv3_{suffix}", 128, 128, 7),
        (f"Mconv4_{suffix}", 128, 128, 7),
        (f"Mconv5_{suffix}", 128, 128, 7),
        (f"Mconv6_{suffix}", 128, 128, 1),
        (f"Mconv7_{suffix}", 128, out_ch, 1),
    )


class _FlatConvNet(nn.Module):
    """Convs registered flat under their file names; branches run as ordered layer lists."""

    NUM_TENSORS: ClassVar[int]
    NUM_PARAMS: ClassVar[int]

    def __init__(self) -> None:
        super().__init__()
        branches, linear = self._layout()
        self._linear = linear
        for branch in branches:
            for name, cin, cout, k in branch:
                if name != _POOL:
                    self.add_module(name, nn.Conv2d(cin, cout, k, stride=1, padding=k // 2))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
        self.relu = nn.ReLU()

    def _layout(self) -> tuple[tuple[tuple[_Layer, ...], ...], frozenset[str]]:
        """All layer lists (in file order) and the names of the convs without a ReLU."""
        raise NotImplementedError

    def _run(self, layers: tuple[_Layer, ...], x: torch.Tensor) -> torch.Tensor:
        for name, _cin, _cout, _k in layers:
            if name == _POOL:
                x = self.pool(x)
                continue
            x = self._modules[name](x)  # type: ignore[misc]
            if name not in self._linear:
                x = self.relu(x)
        return x

    @classmethod
    def template_state_dict(cls) -> dict[str, torch.Size]:
        """Every parameter name of the published file with its shape (built on the meta device)."""
        with torch.device("meta"):
            net = cls()
        return {key: value.shape for key, value in net.state_dict().items()}


class BodyPoseNet(_FlatConvNet):
    """CMU COCO-18 body pose net: 6 stages of PAF (38 ch) and heatmap (19 ch) at stride 8."""

    NUM_TENSORS = 184
    NUM_PARAMS = 52_311_446

    _STAGE1 = (
        (
            ("conv5_1_CPM_L1", 128, 128, 3),
            ("conv5_2_CPM_L1", 128, 128, 3),
            ("conv5_3_CPM_L1", 128, 128, 3),
            ("conv5_4_CPM_L1", 128, 512, 1),
            ("conv5_5_CPM_L1", 512, 38, 1),
        ),
        (
            ("conv5_1_CPM_L2", 128, 128, 3),
            ("conv5_2_CPM_L2", 128, 128, 3),
            ("conv5_3_CPM_L2", 128, 128, 3),
            ("conv5_4_CPM_L2", 128, 512, 1),
            ("conv5_5_CPM_L2", 512, 19, 1),
        ),
    )
    _STAGES = tuple(
        (_refine_stage(f"stage{t}_L1", 185, 38), _refine_stage(f"stage{t}_L2", 185, 19))
        for t in range(2, 7)
    )
    # controlnet_aux lists Mconv7_stage6_L1 twice and never Mconv7_stage6_L2, so the final
    # heatmap passes a ReLU while every other stage output is linear.
    _LINEAR = frozenset(
        ["conv5_5_CPM_L1", "conv5_5_CPM_L2"]
        + [f"Mconv7_stage{t}_L{b}" for t in range(2, 6) for b in (1, 2)]
        + ["Mconv7_stage6_L1"]
    )

    def _layout(self) -> tuple[tuple[tuple[_Layer, ...], ...], frozenset[str]]:
        branches = (_VGG_BODY, *self._STAGE1, *(b for stage in self._STAGES for b in stage))
        return branches, self._LINEAR

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BGR (N,3,H,W) float32 in [-0.5,0.5) -> PAF (N,38,H/8,W/8), heatmap (N,19,H/8,W/8)."""
        features = self._run(_VGG_BODY, x)
        paf = self._run(self._STAGE1[0], features)
        heat = self._run(self._STAGE1[1], features)
        for paf_layers, heat_layers in self._STAGES:
            joined = torch.cat([paf, heat, features], dim=1)
            paf = self._run(paf_layers, joined)
            heat = self._run(heat_layers, joined)
        return paf, heat


class _CpmNet(_FlatConvNet):
    """Hand/face topology: VGG backbone, a 2-conv head and 5 refinement stages at stride 8."""

    NUM_MAPS: ClassVar[int]

    def _layout(self) -> tuple[tuple[tuple[_Layer, ...], ...], frozenset[str]]:
        maps = self.NUM_MAPS
        self._head: tuple[_Layer, ...] = (
            ("conv6_1_CPM", 128, 512, 1),
            ("conv6_2_CPM", 512, maps, 1),
        )
        self._stages = tuple(_refine_stage(f"stage{t}", maps + 128, maps) for t in range(2, 7))
        linear = frozenset(["conv6_2_CPM"] + [f"Mconv7_stage{t}" for t in range(2, 7)])
        return (_VGG_HAND, self._head, *self._stages), linear

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The heatmaps of all 6 stages, each (N,maps,H/8,W/8)."""
        features = self._run(_VGG_HAND, x)
        out = self._run(self._head, features)
        outputs = [out]
        for layers in self._stages:
            out = self._run(layers, torch.cat([out, features], dim=1))
            outputs.append(out)
        return outputs


class HandPoseNet(_CpmNet):
    """OpenPose hand net: 21 keypoints + background (22 maps), 6 stages."""

    NUM_TENSORS = 104
    NUM_PARAMS = 36_832_324
    NUM_MAPS = 22

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BGR input (N,3,H,W) float32 in [-0.5,0.5) -> last-stage heatmaps (N,22,H/8,W/8)."""
        return self.stage_outputs(x)[-1]


class FaceNet(_CpmNet):
    """OpenPose face net: 70 landmarks + 1 (71 maps); same layers as the hand net."""

    NUM_TENSORS = 104
    NUM_PARAMS = 38_425_706
    NUM_MAPS = 71

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BGR input (N,3,384,384) float32 in [-0.5,0.5) -> last-stage maps (N,71,48,48)."""
        return self.stage_outputs(x)[-1]
