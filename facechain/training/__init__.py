"""Custom style LoRA training: dataset checks and captions, the LoRA trainer, its outputs.

Pure ML: no database, Celery or Telegram. The gpu task `tasks/train_style.py` drives it.
"""

from facechain.training.captions import Tagger, derive_style_prompt
from facechain.training.components import (
    TrainingComponents,
    load_training_components,
    tiny_components,
    training_resolution,
)
from facechain.training.dataset import (
    DatasetLimits,
    StyleDataset,
    TrainingExample,
    prepare_dataset,
)
from facechain.training.errors import (
    DatasetRejected,
    DuplicateImages,
    InvalidTriggerWord,
    NotEnoughVariety,
    TooFewImages,
    TooManyImages,
    UnreadableImage,
)
from facechain.training.export import DIFFUSERS_FILE, KOHYA_FILE
from facechain.training.train import (
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    train_style_lora,
)

__all__ = [
    "DIFFUSERS_FILE",
    "KOHYA_FILE",
    "DatasetLimits",
    "DatasetRejected",
    "DuplicateImages",
    "InvalidTriggerWord",
    "NotEnoughVariety",
    "StyleDataset",
    "Tagger",
    "TooFewImages",
    "TooManyImages",
    "TrainingComponents",
    "TrainingConfig",
    "TrainingExample",
    "TrainingProgress",
    "TrainingResult",
    "UnreadableImage",
    "derive_style_prompt",
    "load_training_components",
    "prepare_dataset",
    "tiny_components",
    "train_style_lora",
    "training_resolution",
]
