"""Strict state-dict loading with a readable error."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from facechain.errors import EngineError

logger = logging.getLogger(__name__)


def check_state_dict(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise EngineError unless `given` has exactly the keys and shapes of `expected`."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(
        key
        for key in set(expected) & set(given)
        if tuple(expected[key].shape) != tuple(given[key].shape)
    )
    if missing or unexpected or wrong:
        raise EngineError(
            f"{what}: checkpoint does not match the model: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} with another shape {wrong[:3]}"
        )


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Load every key of `module` from `state_dict`, refusing missing, extra or reshaped ones."""
    check_state_dict(module.state_dict(), state_dict, what)
    module.load_state_dict(dict(state_dict), strict=True)
    logger.debug("%s: loaded %d tensors", what, len(state_dict))
