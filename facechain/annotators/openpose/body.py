"""Body inference of controlnet_aux 0.0.6: net maps, peaks, PAF association, person assembly.

Everything after the net works on numpy maps at detect size, so tests can feed synthetic
heatmaps and PAFs to `candidates_and_subsets` directly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from facechain.annotators.openpose.model import BodyPoseNet
from facechain.annotators.openpose.results import BodyResult, Keypoint
from facechain.annotators.openpose.util import (
    gaussian_filter,
    pad_right_down_corner,
    smart_resize,
    smart_resize_k,
)
from facechain.annotators.palette import LIMBS

logger = logging.getLogger(__name__)

NUM_PARTS = 18
BOXSIZE = 368
SCALE = 0.5  # controlnet_aux 0.0.6 searches this single scale
STRIDE = 8
PAD_VALUE = 128
PEAK_THRESHOLD = 0.1  # thre1
PAF_THRESHOLD = 0.05  # thre2
PAF_SAMPLES = 10  # mid_num
MIN_PARTS = 4
MIN_MEAN_SCORE = 0.4

# PAF channels (x, y) of each limb.
PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13),
    (20, 21),
    (14, 15),
    (16, 17),
    (22, 23),
    (24, 25),
    (0, 1),
    (2, 3),
    (4, 5),
    (6, 7),
    (8, 9),
    (10, 11),
    (28, 29),
    (30, 31),
    (34, 35),
    (32, 33),
    (36, 37),
    (18, 19),
    (26, 27),
)
# Limbs from this index on never start a new person.
_FIRST_JOIN_ONLY_LIMB = 17

Peak = tuple[int, int, float, int]  # (x, y, raw score, global id)


def body_maps(
    net: BodyPoseNet, image_bgr: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Run the body net once and bring its maps back to the image size.

    Args:
        net: body net in eval mode on `device`.
        image_bgr: (H, W, 3) uint8 BGR detect image.
        device: where the net runs.

    Returns:
        heatmap (H, W, 19) and PAF (H, W, 38), float64.
    """
    height, width = image_bgr.shape[:2]
    scale = SCALE * BOXSIZE / height
    resized = smart_resize_k(image_bgr, fx=scale, fy=scale)
    padded, pad = pad_right_down_corner(resized, STRIDE, PAD_VALUE)
    data = np.ascontiguousarray(padded.transpose(2, 0, 1)[None].astype(np.float32) / 256 - 0.5)
    with torch.inference_mode():
        paf_t, heat_t = net(torch.from_numpy(data).to(device))
    maps = []
    for out in (heat_t, paf_t):
        m = out[0].float().cpu().numpy().transpose(1, 2, 0)
        m = smart_resize_k(m, fx=STRIDE, fy=STRIDE)
        m = m[: padded.shape[0] - pad[2], : padded.shape[1] - pad[3], :]
        m = smart_resize(m, (height, width))
        maps.append(m.astype(np.float64))
    return maps[0], maps[1]


def find_peaks(heatmap: np.ndarray) -> list[list[Peak]]:
    """Per part 0..17, the local maxima of the smoothed map above 0.1 (row-major order).

    Args:
        heatmap: (H, W, >=18) float part maps.
    """
    peaks: list[list[Peak]] = []
    counter = 0
    for part in range(NUM_PARTS):
        raw = heatmap[:, :, part]
        smooth = gaussian_filter(raw)
        # Neighbours outside the map count as 0; a peak must not be below any of its 4 neighbours.
        up = np.zeros_like(smooth)
        up[1:, :] = smooth[:-1, :]
        down = np.zeros_like(smooth)
        down[:-1, :] = smooth[1:, :]
        left = np.zeros_like(smooth)
        left[:, 1:] = smooth[:, :-1]
        right = np.zeros_like(smooth)
        right[:, :-1] = smooth[:, 1:]
        binary = (
            (smooth >= up)
            & (smooth >= down)
            & (smooth >= left)
            & (smooth >= right)
            & (smooth > PEAK_THRESHOLD)
        )
        ys, xs = np.nonzero(binary)
        part_peaks = [
            (int(x), int(y), float(raw[y, x]), counter + i)
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
        peaks.append(part_peaks)
        counter += len(part_peaks)
    return peaks


def _limb_connections(
    cand_a: list[Peak], cand_b: list[Peak], paf_x: np.ndarray, paf_y: np.ndarray, image_height: int
) -> np.ndarray:
    """Greedy one-to-one pairs for one limb: rows (id A, id B, PAF score, index A, index B)."""
    scored: list[tuple[int, int, float]] = []
    for i, a in enumerate(cand_a):
        for j, b in enumerate(cand_b):
            vx, vy = b[0] - a[0], b[1] - a[1]
            norm = max(0.001, math.sqrt(vx * vx + vy * vy))
            ux, uy = vx / norm, vy / norm
            xs = np.linspace(a[0], b[0], num=PAF_SAMPLES)
            ys = np.linspace(a[1], b[1], num=PAF_SAMPLES)
            # Python's round() on float64 rounds ties to even, like the reference.
            rows = [round(float(y)) for y in ys]
            cols = [round(float(x)) for x in xs]
            samples = paf_x[rows, cols] * ux + paf_y[rows, cols] * uy
            score = sum(samples.tolist()) / len(samples) + min(0.5 * image_height / norm - 1, 0)
            if np.count_nonzero(samples > PAF_THRESHOLD) > 0.8 * len(samples) and score > 0:
                scored.append((i, j, score))
    # Stable sort: equal scores keep (i, j) order.
    scored.sort(key=lambda c: c[2], reverse=True)
    rows_out: list[list[float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, j, score in scored:
        if i in used_a or j in used_b:
            continue
        rows_out.append([cand_a[i][3], cand_b[j][3], score, i, j])
        used_a.add(i)
        used_b.add(j)
        if len(rows_out) >= min(len(cand_a), len(cand_b)):
            break
    return np.array(rows_out, dtype=np.float64).reshape(-1, 5)


def _assemble(connections: list[np.ndarray | None], candidate: np.ndarray) -> np.ndarray:
    """Group limb connections into people: rows of 18 part ids, total score, part count."""
    subset = np.full((0, 20), -1.0)
    for k, conns in enumerate(connections):
        if conns is None:
            continue
        index_a, index_b = LIMBS[k]
        for conn in conns:
            id_a, id_b, score = conn[0], conn[1], conn[2]
            found = [
                r
                for r in range(len(subset))
                if subset[r][index_a] == id_a or subset[r][index_b] == id_b
            ]
            if len(found) > 2:
                # controlnet_aux raises IndexError here; keep its first two matches instead.
                logger.debug("limb %d: %d people share a part, using the first two", k, len(found))
            if len(found) == 1 or (len(found) >= 2 and _overlap(subset, found[0], found[1])):
                row = subset[found[0]]
                if len(found) == 1 and row[index_b] == id_b:
                    continue
                row[index_b] = id_b
                row[-1] += 1
                row[-2] += candidate[int(id_b), 2] + score
            elif len(found) >= 2:
                j1, j2 = found[0], found[1]
                subset[j1][:-2] += subset[j2][:-2] + 1
                subset[j1][-2:] += subset[j2][-2:]
                subset[j1][-2] += score
                subset = np.delete(subset, j2, 0)
            elif k < _FIRST_JOIN_ONLY_LIMB:
                row = np.full(20, -1.0)
                row[index_a] = id_a
                row[index_b] = id_b
                row[-1] = 2
                row[-2] = candidate[int(id_a), 2] + candidate[int(id_b), 2] + score
                subset = np.vstack([subset, row])
    keep = [
        r
        for r in range(len(subset))
        if not (subset[r][-1] < MIN_PARTS or subset[r][-2] / subset[r][-1] < MIN_MEAN_SCORE)
    ]
    return subset[keep]


def _overlap(subset: np.ndarray, j1: int, j2: int) -> bool:
    """Whether two people both hold some part (then they are not merged)."""
    both = (subset[j1][:-2] >= 0) & (subset[j2][:-2] >= 0)
    return bool(both.any())


def candidates_and_subsets(
    heatmap: np.ndarray, paf: np.ndarray, image_height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks, PAF association and assembly on detect-size maps (controlnet_aux `Body.__call__`).

    Args:
        heatmap: (H, W, 19) float part maps (channel 18, background, is unused).
        paf: (H, W, 38) float part affinity fields, x/y channel pairs per limb.
        image_height: detect image height in pixels (the PAF distance prior uses it).

    Returns:
        candidate (N, 4) float64 rows (x, y, raw score, id), and subset (P, 20) float64 rows of
        18 candidate ids (-1 = missing), total score, part count.
    """
    peaks = find_peaks(heatmap)
    candidate = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    connections: list[np.ndarray | None] = []
    for (part_a, part_b), (ch_x, ch_y) in zip(LIMBS, PAF_CHANNELS, strict=True):
        cand_a, cand_b = peaks[part_a], peaks[part_b]
        if not cand_a or not cand_b:
            connections.append(None)
            continue
        connections.append(
            _limb_connections(cand_a, cand_b, paf[:, :, ch_x], paf[:, :, ch_y], image_height)
        )
    return candidate, _assemble(connections, candidate)


def format_bodies(candidate: np.ndarray, subset: np.ndarray) -> list[BodyResult]:
    """People as BodyResults with keypoints in detect-image pixels."""
    bodies = []
    for person in subset:
        keypoints: list[Keypoint | None] = []
        for index in person[:NUM_PARTS].astype(int):
            if index == -1:
                keypoints.append(None)
                continue
            x, y, score, cid = candidate[index]
            keypoints.append(Keypoint(x=float(x), y=float(y), score=float(score), id=int(cid)))
        bodies.append(
            BodyResult(
                keypoints=keypoints, total_score=float(person[18]), total_parts=int(person[19])
            )
        )
    return bodies
