"""FairFace gender/age classifier: `damo/cv_resnet34_face-attribute-recognition_fairface`.

FaceChain runs it on the selfie to choose the subject words of the prompt (`facechain.prompts`,
reference §2). The network is torchvision's ResNet34 with an 18-way head, written here in plain
torch with torchvision's parameter and buffer names, so the published `pytorch_model.pt` (a plain,
unprefixed state dict) loads strictly.

Preprocessing is ModelScope's, applied to our own ArcFace 112x112 crop (`facechain.faces.
align_face`, the same +8-shifted template ModelScope's pipeline warps to): RGB uint8 -> PIL
bilinear resize to 224x224 -> /255 -> ImageNet mean/std. ModelScope finds the face with DamoFD;
we use the landmarks our detector already found. Deliberate differences: no
`cudnn.benchmark = True` (a process-wide side effect), and crops are classified in batches.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from facechain.errors import EngineError, WeightsInvalid
from facechain.models.checkpoint import check_state_dict

logger = logging.getLogger(__name__)

INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Logits: [race 0..6 | gender 7..8 | age 9..17]; ModelScope drops race.
NUM_OUTPUTS = 18
GENDER_SLICE = slice(7, 9)
AGE_SLICE = slice(9, 18)
GENDER_LABELS = ("Male", "Female")
AGE_LABELS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")
# ResNet34: BasicBlocks per stage.
LAYERS = (3, 4, 6, 3)
BATCH = 32


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class FairFaceNet(nn.Module):
    """ResNet34 with `fc` 512 -> 18; `width` 64 is the real network (smaller for tests)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        stages = []
        for i, blocks in enumerate(LAYERS):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(inplanes, planes, stride)]
            layer += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, NUM_OUTPUTS)
        for module in self.modules():
            # torchvision's initialisation (only matters for the seeded random network).
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) normalised RGB -> (N, 18) logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


def load_strict(model: FairFaceNet, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load every tensor, refusing missing, extra or reshaped keys (WeightsInvalid names them).

    A missing BatchNorm `num_batches_tracked` is tolerated exactly when torch tolerates it (a
    dict without version metadata, e.g. an old checkpoint); it is unused in eval anyway.
    """
    expected = model.state_dict()
    required = {
        k: v
        for k, v in expected.items()
        if not (k.endswith(".num_batches_tracked") and k not in state_dict)
    }
    try:
        check_state_dict(required, state_dict, "FairFace")
    except EngineError as exc:
        raise WeightsInvalid(str(exc)) from exc
    try:
        # The mapping itself, not a copy: torch reads its `_metadata` (BatchNorm versions).
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightsInvalid(f"FairFace: checkpoint does not match the model: {exc}") from exc


def preprocess(face: np.ndarray) -> torch.Tensor:
    """ModelScope's FairFace input for one aligned crop.

    Args:
        face: (H, W, 3) uint8 RGB ArcFace crop (112x112 from `facechain.faces.align_face`).

    Returns:
        (3, 224, 224) float32, (x / 255 - mean) / std per channel.
    """
    arr = np.asarray(face)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"face crops must be uint8 (H, W, 3) RGB, got {arr.dtype} {arr.shape}")
    # torchvision's Resize((224, 224)) on a PIL image is PIL's bilinear resize (uint8 out).
    resized = Image.fromarray(arr).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


@dataclass(frozen=True)
class FairFacePrediction:
    """Softmax probabilities of one face: gender (2: Male, Female), age (9 buckets, 0-2 … 70+)."""

    gender_probs: np.ndarray
    age_probs: np.ndarray

    @property
    def gender(self) -> int:
        """Index of the most likely gender (0 Male, 1 Female)."""
        return int(np.argmax(self.gender_probs))

    @property
    def age(self) -> int:
        """Index of the most likely age bucket (0 = 0-2 … 8 = 70+)."""
        return int(np.argmax(self.age_probs))


def mean_prediction(predictions: Sequence[FairFacePrediction]) -> FairFacePrediction:
    """One decision for several selfies of a person: the probabilities averaged per class."""
    if not predictions:
        raise ValueError("no predictions to average")
    return FairFacePrediction(
        gender_probs=np.mean([p.gender_probs for p in predictions], axis=0),
        age_probs=np.mean([p.age_probs for p in predictions], axis=0),
    )


class FairFace:
    """The classifier on a device: `predict` aligned crops to gender and age probabilities."""

    def __init__(self, net: FairFaceNet, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: Path, device: torch.device | str = "cpu") -> FairFace:
        """Load the published `pytorch_model.pt` strictly (fp32, eval); WeightsInvalid if not."""
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise WeightsInvalid(f"FairFace: {path} is not a tensor file: {exc}") from exc
        if not isinstance(state_dict, Mapping):
            raise WeightsInvalid(
                f"FairFace: {path} holds a {type(state_dict).__name__}, not tensors"
            )
        net = FairFaceNet()
        load_strict(net, state_dict)
        logger.info("loaded FairFace from %s (%d tensors)", path, len(state_dict))
        return cls(net, device)

    @classmethod
    def random(cls, seed: int, width: int = 64, device: torch.device | str = "cpu") -> FairFace:
        """Seeded random weights (the tiny profile); same code path as the real network."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = FairFaceNet(width)
        return cls(net, device)

    @torch.no_grad()
    def predict(self, aligned_faces: Sequence[np.ndarray]) -> list[FairFacePrediction]:
        """Gender and age probabilities per face, in input order.

        Args:
            aligned_faces: (112, 112, 3) uint8 RGB ArcFace crops, unmasked (the whole aligned
                face, as ModelScope classifies it).

        Returns:
            One FairFacePrediction per crop (float32 softmax over the gender and age logits).
        """
        out: list[FairFacePrediction] = []
        for start in range(0, len(aligned_faces), BATCH):
            chunk = aligned_faces[start : start + BATCH]
            x = torch.stack([preprocess(f) for f in chunk]).to(self.device)
            logits = self.net(x).float()
            gender = torch.softmax(logits[:, GENDER_SLICE], dim=1).cpu().numpy()
            age = torch.softmax(logits[:, AGE_SLICE], dim=1).cpu().numpy()
            out.extend(
                FairFacePrediction(gender_probs=g, age_probs=a)
                for g, a in zip(gender, age, strict=True)
            )
        return out
