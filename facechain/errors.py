"""Typed errors of the ML engine; `code` is the stable job error code and translation key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facechain.safety import SafetyVerdict


class FaceChainError(Exception):
    """Base of every error the engine raises on purpose."""

    code: str = "internal"


class NotAnImage(FaceChainError):
    """The bytes could not be decoded as an image."""

    code = "not_an_image"


class ImageTooLarge(FaceChainError):
    """The image exceeds the accepted size."""

    code = "image_too_large"


class NoFace(FaceChainError):
    """No face was found in the image."""

    code = "no_face"


class MultipleFaces(FaceChainError):
    """More than one face was found where exactly one is needed."""

    code = "multiple_faces"

    def __init__(self, message: str, boxes: list[tuple[int, int, int, int]] | None = None) -> None:
        super().__init__(message)
        self.boxes: list[tuple[int, int, int, int]] = list(boxes or [])


class FaceTooSmall(FaceChainError):
    """The face is too small to carry identity."""

    code = "face_too_small"


class PoorQuality(FaceChainError):
    """The photo is too blurred, dark or otherwise unusable."""

    code = "poor_quality"


class WeightsMissing(FaceChainError):
    """Model weights are not in the local cache (run `facechain-bot models download`)."""

    code = "weights_missing"


class DownloadFailed(WeightsMissing):
    """A model could not be fetched from its hub (no network, unknown revision, hub error)."""

    code = "weights_missing"


class WeightsInvalid(FaceChainError):
    """A weight file is present but does not match its network (keys, shapes or format)."""

    code = "weights_invalid"


class SafetyFlagged(FaceChainError):
    """The safety checker flagged everything a job painted; `verdicts` are the flagged ones."""

    code = "safety_flagged"

    def __init__(self, message: str, verdicts: Sequence[SafetyVerdict] = ()) -> None:
        super().__init__(message)
        self.verdicts = list(verdicts)


class Cancelled(FaceChainError):
    """The caller cancelled the generation."""

    code = "cancelled"


class TrainingInterrupted(Exception):
    """A training was asked to stop (its worker is shutting down) and saved a checkpoint.

    Not a FaceChainError: no user ever sees it (the job is handed over and resumes)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class InvalidLoRA(FaceChainError):
    """A style LoRA file cannot be used."""

    code = "invalid_lora"


class EngineError(FaceChainError):
    """Unexpected engine failure."""

    code = "internal"


class TooFewTemplateFaces(FaceChainError):
    """The template has fewer faces than the request needs."""

    code = "too_few_template_faces"

    def __init__(self, message: str, found: int = 0, needed: int = 0) -> None:
        super().__init__(message)
        self.found = found
        self.needed = needed


class FaceIndexOutOfRange(FaceChainError):
    """A selected template face index (1-based, left to right) does not exist."""

    code = "face_index_out_of_range"

    def __init__(self, message: str, index: int = 0, available: int = 0) -> None:
        super().__init__(message)
        self.index = index
        self.available = available


class FeatureUnavailable(FaceChainError):
    """A requested option needs a model this installation does not have."""

    code = "feature_unavailable"


class NoPersonInPose(FaceChainError):
    """The pose photo shows no person the OpenPose annotator can find."""

    code = "pose_no_person"


class PoseAnnotatorMissing(FaceChainError):
    """A pose photo needs the OpenPose annotator, whose weights are not installed."""

    code = "pose_annotator_missing"
