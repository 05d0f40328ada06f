"""Identity similarity with SFace (OpenCV): embeddings, cosine, and a candidate scorer."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facechain.errors import NoFace, WeightsMissing
from facechain.faces import (
    SFACE_FILE,
    Face,
    FaceDetector,
    align_face,
    default_detector,
    packaged_model_path,
)
from facechain.imageio import to_rgb_array

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 128


class FaceEmbedder:
    """SFace 128-d identity embeddings; safe to share between threads."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        """Check the weights now; networks are built lazily, one per calling thread."""
        self.model_path = Path(model_path) if model_path else packaged_model_path(SFACE_FILE)
        if not self.model_path.is_file():
            raise WeightsMissing(f"SFace model not found: {self.model_path}")
        # cv2.dnn networks are not safe for concurrent forward passes.
        self._local = threading.local()

    def load(self) -> None:
        """Build this thread's network now (a warm worker does it before its first job)."""
        self._net()

    def _net(self) -> cv2.FaceRecognizerSF:
        """This thread's SFace instance."""
        net: cv2.FaceRecognizerSF | None = getattr(self._local, "net", None)
        if net is None:
            net = cv2.FaceRecognizerSF.create(str(self.model_path), "")
            self._local.net = net
        return net

    def embed_aligned(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """Embedding of a 112x112 RGB face on the ArcFace template: (128,) float32, L2 = 1."""
        if aligned_rgb.shape != (112, 112, 3):
            raise ValueError(f"expected a (112, 112, 3) aligned face, got {aligned_rgb.shape}")
        # SFace was trained on OpenCV's BGR frames.
        bgr = np.ascontiguousarray(aligned_rgb[:, :, ::-1])
        feature = self._net().feature(bgr).reshape(-1).astype(np.float32)
        norm = float(np.linalg.norm(feature))
        if norm == 0.0:
            raise ValueError("SFace returned an all-zero embedding")
        return feature / norm

    def embed(self, image_rgb: np.ndarray, face: Face) -> np.ndarray:
        """Embedding of `face` in an (H, W, 3) uint8 RGB image: (128,) float32, L2-normalised.

        Alignment is our own ArcFace-template warp, the same template SFace's alignCrop uses.
        """
        return self.embed_aligned(align_face(image_rgb, face.landmarks, 112))


@functools.cache
def default_embedder() -> FaceEmbedder:
    """Process-wide SFace embedder on the packaged weights (its networks are built once per
    thread, not once per job)."""
    return FaceEmbedder()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings, in [-1, 1]."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1)
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if denom == 0.0:
        return 0.0
    return float(np.dot(a64, b64) / denom)


def largest_face(faces: Sequence[Face]) -> Face | None:
    """The face with the biggest box, or None."""
    return max(faces, key=lambda f: f.area, default=None)


class IdentityScorer:
    """Scores a candidate image by the best cosine between its largest face and the references."""

    def __init__(
        self,
        reference_embeddings: Sequence[np.ndarray],
        *,
        detector: FaceDetector | None = None,
        embedder: FaceEmbedder | None = None,
    ) -> None:
        """Keep the (N, 128) references; detector and embedder default to the packaged ones."""
        if len(reference_embeddings) == 0:
            raise ValueError("IdentityScorer needs at least one reference embedding")
        refs = np.stack(
            [np.asarray(e, dtype=np.float32).reshape(-1) for e in reference_embeddings]
        )
        if refs.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"reference embeddings must be {EMBEDDING_DIM}-d, got {refs.shape}")
        self.references = refs / np.linalg.norm(refs, axis=1, keepdims=True)
        self.detector = detector or default_detector()
        self.embedder = embedder or default_embedder()

    @classmethod
    def from_images(
        cls,
        images_rgb: Sequence[np.ndarray],
        *,
        detector: FaceDetector | None = None,
        embedder: FaceEmbedder | None = None,
    ) -> IdentityScorer:
        """References from RGB selfies (largest face of each); NoFace if one has none."""
        detector = detector or default_detector()
        embedder = embedder or default_embedder()
        refs = []
        for index, image in enumerate(images_rgb):
            face = largest_face(detector.detect_faces(image))
            if face is None:
                raise NoFace(f"no face found in reference image {index + 1}")
            refs.append(embedder.embed(image, face))
        return cls(refs, detector=detector, embedder=embedder)

    def score_array(self, image_rgb: np.ndarray) -> float:
        """Best similarity for an (H, W, 3) uint8 RGB image; 0.0 when it has no face."""
        face = largest_face(self.detector.detect_faces(image_rgb))
        if face is None:
            return 0.0
        emb = self.embedder.embed(image_rgb, face)
        return float(np.max(self.references @ emb))

    def __call__(self, image: Image.Image) -> float:
        """Best similarity for a PIL candidate image; 0.0 when it has no face."""
        return self.score_array(to_rgb_array(image))
