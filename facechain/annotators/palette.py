"""OpenPose drawing conventions (controlnet_aux 0.0.6), torch-free: limbs, colours, hand edges.

Shared by the annotator's drawing (`openpose.draw`), its limb association (`openpose.body`) and
the skeleton-map recogniser (`facechain.posemap`), which must not import torch.
"""

from __future__ import annotations

import colorsys

# (part A, part B) of each limb, 0-based COCO-18 parts (reference §1.8); limbs 17 and 18
# (shoulder-ear) only join existing people and are never drawn.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
    (2, 16),
    (5, 17),
)
DRAWN_LIMBS = LIMBS[:17]
# Colour of keypoint k and of limb k, RGB (reference §1.8).
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
LIMB_SHADE = 0.6
# Limbs 0..16 are filled with int(0.6 * colour) (reference §1.11).
LIMB_COLORS = tuple(tuple(int(LIMB_SHADE * c) for c in color) for color in BODY_COLORS[:17])
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (0, 5),
    (5, 6),
    (6, 7),
    (7, 8),
    (0, 9),
    (9, 10),
    (10, 11),
    (11, 12),
    (0, 13),
    (13, 14),
    (14, 15),
    (15, 16),
    (0, 17),
    (17, 18),
    (18, 19),
    (19, 20),
)
HAND_POINT_COLOR = (0, 0, 255)
FACE_POINT_COLOR = (255, 255, 255)


def hand_edge_color(edge: int) -> tuple[float, float, float]:
    """HSV(edge/20, 1, 1) x 255 as floats (matplotlib's hsv_to_rgb); cv2 rounds when drawing."""
    r, g, b = colorsys.hsv_to_rgb(edge / float(len(HAND_EDGES)), 1.0, 1.0)
    return (r * 255.0, g * 255.0, b * 255.0)


# Hand edge colours as cv2 draws them (rounded to the nearest level).
HAND_EDGE_COLORS = tuple(
    tuple(round(c) for c in hand_edge_color(e)) for e in range(len(HAND_EDGES))
)
