"""A safety checker that flags chosen images, through the interface the real one implements
(`facechain.safety.ImageChecker`), for tests that need the checker's decisions."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

from PIL import Image

from facechain.safety import SafetyChecker, SafetyVerdict

FLAGGED_SCORE = 0.12
SAFE_SCORE = -0.3


@functools.cache
def tiny_checker() -> SafetyChecker:
    """The tiny profile's checker (never flags), built once per test process."""
    return SafetyChecker.random(11)


class FlagChosen:
    """Flags the images at `positions` of every check call (all of them with `every=True`)."""

    def __init__(self, positions: Collection[int] = (), *, every: bool = False) -> None:
        self.positions = set(positions)
        self.every = every
        # Images per check call, in call order.
        self.calls: list[int] = []

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        self.calls.append(len(images))
        out = []
        for i, _ in enumerate(images):
            flagged = self.every or i in self.positions
            out.append(
                SafetyVerdict(flagged, FLAGGED_SCORE if flagged else SAFE_SCORE, (2,) * flagged)
            )
        return out
