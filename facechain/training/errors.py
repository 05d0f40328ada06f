"""Typed reasons a style-training dataset is refused before any GPU time is spent."""

from __future__ import annotations

from collections.abc import Sequence

from facechain.errors import FaceChainError


class DatasetRejected(FaceChainError):
    """The training images cannot be used; `indices` are the 0-based offending images."""

    code = "training_dataset_invalid"

    def __init__(self, message: str, indices: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.indices: list[int] = list(indices)


class TooFewImages(DatasetRejected):
    code = "training_too_few_images"


class TooManyImages(DatasetRejected):
    code = "training_too_many_images"


class UnreadableImage(DatasetRejected):
    code = "training_not_an_image"


class DuplicateImages(DatasetRejected):
    code = "training_duplicate_images"


class NotEnoughVariety(DatasetRejected):
    code = "training_no_variety"


class InvalidTriggerWord(DatasetRejected):
    code = "training_trigger_word"
