"""SFace identity embeddings and the candidate scorer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facechain.errors import NoFace
from facechain.faces import default_detector
from facechain.similarity import FaceEmbedder, IdentityScorer, cosine
from tests.facechain.face_data import fixture_rgb, landscape_rgb


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder()


@pytest.fixture(scope="module")
def embeddings(embedder: FaceEmbedder) -> dict[str, np.ndarray]:
    out = {}
    for name in ("man_pose1", "man_pose2", "woman_pose1", "woman_pose2"):
        image = fixture_rgb(name)
        out[name] = embedder.embed(image, default_detector().detect_faces(image)[0])
    return out


class TestEmbed:
    def test_shape_and_norm(self, embeddings: dict[str, np.ndarray]) -> None:
        emb = embeddings["man_pose1"]
        assert emb.shape == (128,)
        assert emb.dtype == np.float32
        assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)

    def test_same_person_beats_other_person(self, embeddings: dict[str, np.ndarray]) -> None:
        same_man = cosine(embeddings["man_pose1"], embeddings["man_pose2"])
        same_woman = cosine(embeddings["woman_pose1"], embeddings["woman_pose2"])
        cross = [
            cosine(embeddings[m], embeddings[w])
            for m in ("man_pose1", "man_pose2")
            for w in ("woman_pose1", "woman_pose2")
        ]
        # Measured: 0.888 and 0.857 against at most 0.110.
        assert same_man > 0.6
        assert same_woman > 0.6
        assert max(cross) < 0.35
        assert min(same_man, same_woman) > max(cross) + 0.3

    def test_embed_aligned_checks_shape(self, embedder: FaceEmbedder) -> None:
        with pytest.raises(ValueError):
            embedder.embed_aligned(np.zeros((100, 100, 3), np.uint8))


class TestCosine:
    def test_basics(self) -> None:
        a = np.array([1.0, 0.0])
        assert cosine(a, a) == pytest.approx(1.0)
        assert cosine(a, np.array([0.0, 2.0])) == pytest.approx(0.0)
        assert cosine(a, -a) == pytest.approx(-1.0)
        assert cosine(a, np.zeros(2)) == 0.0


class TestIdentityScorer:
    def test_ranks_candidates(self, embeddings: dict[str, np.ndarray]) -> None:
        scorer = IdentityScorer([embeddings["man_pose1"]])
        same = scorer(Image.fromarray(fixture_rgb("man_pose3")))
        other = scorer(Image.fromarray(fixture_rgb("woman_pose3")))
        assert same > 0.6 > 0.35 > other

    def test_best_of_references(self, embeddings: dict[str, np.ndarray]) -> None:
        scorer = IdentityScorer([embeddings["man_pose1"], embeddings["woman_pose1"]])
        assert scorer(Image.fromarray(fixture_rgb("woman_pose1"))) == pytest.approx(1.0, abs=1e-4)

    def test_no_face_scores_zero(self, embeddings: dict[str, np.ndarray]) -> None:
        scorer = IdentityScorer([embeddings["man_pose1"]])
        assert scorer(Image.fromarray(landscape_rgb())) == 0.0

    def test_from_images(self) -> None:
        scorer = IdentityScorer.from_images([fixture_rgb("woman_pose2")])
        assert scorer(Image.fromarray(fixture_rgb("woman_pose1"))) > 0.6
        with pytest.raises(NoFace):
            IdentityScorer.from_images([landscape_rgb()])

    def test_needs_references(self) -> None:
        with pytest.raises(ValueError):
            IdentityScorer([])
