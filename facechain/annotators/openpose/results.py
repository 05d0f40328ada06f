"""Pose results of the OpenPose annotator (the shapes of controlnet_aux 0.0.6's dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keypoint:
    """One keypoint; x, y normalised by the detect image's width and height.

    Body keypoints carry the raw heatmap peak as `score` and the global candidate index as `id`;
    hand and face keypoints carry score 1.0 and their map channel as `id`. A hand/face point the
    net did not find (or found exactly on the crop's left/top edge) has x or y = -1/W or -1/H.
    """

    x: float
    y: float
    score: float = 1.0
    id: int = -1


@dataclass(frozen=True)
class BodyResult:
    """18 COCO keypoints (None where missing), summed peak+PAF score, and part count."""

    keypoints: list[Keypoint | None]
    total_score: float
    total_parts: int


@dataclass(frozen=True)
class PoseResult:
    """One person: body, optional hands (21 points each) and optional face (up to 71 points)."""

    body: BodyResult
    left_hand: list[Keypoint] | None
    right_hand: list[Keypoint] | None
    face: list[Keypoint] | None
