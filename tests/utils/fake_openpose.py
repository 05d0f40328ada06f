"""A real `OpenposeAnnotator` whose nets are replaced by synthetic maps: it "detects" the given
people in any image, deterministically, without weights.

Only the three net calls are faked (`body_maps`, `hand_heatmap`, `face_heatmaps`); peaks, PAF
association, person assembly, hand/face boxes, keypoint normalisation, drawing and the resizes of
`__call__` are the production code. Usage:

    annotator = FakeOpenposeAnnotator()                      # one standing person
    pose_map, poses = annotator(image_rgb, include_hand=True)  # poses[0].body has 18 keypoints

Hands come back as the `HAND_128` layout inside each hand box; the face as 70 points on a ring
inside the face box. Parts should stay >= 8 px apart at the detect size (512 by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from facechain.annotators.openpose import BodyPoseNet, FaceNet, HandPoseNet, OpenposeAnnotator
from tests.facechain.openpose_data import (
    HAND_128,
    STANDING,
    body_maps_for,
    face_heatmaps_for,
    face_ring,
    hand_heatmap_for,
    to_pixels,
)


class FakeOpenposeAnnotator(OpenposeAnnotator):
    """OpenposeAnnotator finding `people` (part -> normalised (x, y)) in every image.

    Args:
        people: one mapping per person, COCO-18 part index -> (x, y) in [0, 1] of the detect
            image; missing parts are simply absent. Default: one `STANDING` person.
        with_hands: hand maps hold a hand (else they are empty and hands come back all -1).
        with_face: face maps hold 70 points (else no face is found).

    Every net call is recorded in `calls` as (name, input shape).
    """

    def __init__(
        self,
        people: Sequence[Mapping[int, tuple[float, float]]] = (STANDING,),
        with_hands: bool = True,
        with_face: bool = True,
    ) -> None:
        # Nets on the meta device: the real classes, no memory, never run.
        with torch.device("meta"):
            super().__init__(BodyPoseNet(), HandPoseNet(), FaceNet(), device="meta")
        self.people = [dict(p) for p in people]
        self.with_hands = with_hands
        self.with_face = with_face
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def body_maps(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic detect-size heatmap and PAF of `people`."""
        self.calls.append(("body", image_bgr.shape))
        height, width = image_bgr.shape[:2]
        return body_maps_for([to_pixels(p, height, width) for p in self.people], height, width)

    def hand_heatmap(self, crop_bgr: np.ndarray) -> np.ndarray:
        """A hand in `HAND_128` layout, or empty maps."""
        self.calls.append(("hand", crop_bgr.shape))
        return hand_heatmap_for(HAND_128 if self.with_hands else ())

    def face_heatmaps(self, crop_bgr: np.ndarray) -> np.ndarray:
        """70 points on a ring inside the crop, or empty maps."""
        self.calls.append(("face", crop_bgr.shape))
        height, width = crop_bgr.shape[:2]
        points = face_ring(height, width) if self.with_face else []
        return face_heatmaps_for(points, height, width)

    def __repr__(self) -> str:
        info: dict[str, Any] = {"people": len(self.people), "hands": self.with_hands}
        return f"FakeOpenposeAnnotator({info})"
