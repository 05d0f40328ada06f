"""Engine on the tiny profile: shape, pixel slice, ranking, progress, cancel, no leaked state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain.adapter import get_adapter_scale
from facechain.engine import (
    Engine,
    EngineConfig,
    PortraitRequest,
    StyleSpec,
    letterbox,
    pose_pad,
)
from facechain.errors import Cancelled, WeightsMissing
from tests.facechain.face_data import fixture_rgb


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def crop(seed: int) -> np.ndarray:
    """A stand-in aligned face crop (the tiny encoder has random weights anyway)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_config(EngineConfig(profile="tiny", steps=2, batch_size=4))


STYLE = StyleSpec(name="test", base_model="film", prompt="armor", lora_weight=0.5)


class TestConfig:
    def test_device_and_dtype_come_from_config(self) -> None:
        cfg = EngineConfig(profile="real", device="cpu")
        assert cfg.torch_device() == torch.device("cpu")
        assert cfg.torch_dtype(torch.device("cpu")) == torch.float32
        assert cfg.torch_dtype(torch.device("cuda")) == torch.float16
        assert EngineConfig(dtype="bfloat16").torch_dtype(torch.device("cuda")) == torch.bfloat16
        assert EngineConfig(profile="tiny").output_size() == 64
        assert EngineConfig().output_size() == 512

    def test_real_profile_without_weights(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsMissing, match="facechain-bot models download"):
            Engine.from_config(EngineConfig(profile="real", models_dir=tmp_path, device="cpu"))


class TestPortraits:
    def test_shape_and_slice(self, engine: Engine) -> None:
        out = engine.portraits(PortraitRequest(selfies=[crop(0)], style=STYLE, seed=42))
        assert len(out) == 1
        assert out[0].image.size == (64, 64)
        assert out[0].image.mode == "RGB"
        assert out[0].seed == 42
        assert out[0].similarity is None
        expected = np.array([[138, 121, 121], [142, 102, 105], [133, 104, 75]])
        np.testing.assert_allclose(pixels(out[0].image)[0, :3], expected, atol=3)

    def test_candidate_seed_reproduces_alone(self, engine: Engine) -> None:
        batch = engine.portraits(
            PortraitRequest(selfies=[crop(0)], style=STYLE, seed=7, num_images=3)
        )
        assert [p.seed for p in batch] == [7, 8, 9]
        alone = engine.portraits(PortraitRequest(selfies=[crop(0)], style=STYLE, seed=9))
        assert np.abs(pixels(alone[0].image) - pixels(batch[2].image)).max() <= 2
        assert np.abs(pixels(batch[0].image) - pixels(batch[1].image)).max() > 10

    def test_face_pose_and_style_change_the_image(self, engine: Engine) -> None:
        def image(**kw) -> np.ndarray:
            args = {"selfies": [crop(0)], "style": STYLE, "seed": 1} | kw
            return pixels(engine.portraits(PortraitRequest(**args))[0].image)

        ref = image()
        assert np.abs(image(selfies=[crop(1)]) - ref).max() > 2
        assert np.abs(image(selfies=[crop(0), crop(1)]) - ref).max() > 0
        pose = Image.fromarray(crop(5)).resize((48, 80))
        assert np.abs(image(pose=pose) - ref).max() > 2
        assert np.abs(image(style=StyleSpec(name="no lora", lora_weight=0.0)) - ref).max() > 2
        no_face = image(adapter_scale=0.0)
        assert np.abs(no_face - ref).max() > 2
        assert np.array_equal(image(adapter_scale=0.0, selfies=[crop(1)]), no_face)

    def test_ranking_keeps_best_and_never_refuses_for_likeness(self, engine: Engine) -> None:
        def brightness(img: Image.Image) -> float:
            return float(np.asarray(img).mean()) / 255.0

        out = engine.portraits(
            PortraitRequest(
                selfies=[crop(0)],
                style=STYLE,
                seed=3,
                num_images=2,
                num_candidates=5,
                scorer=brightness,
            )
        )
        assert len(out) == 2
        sims = [p.similarity for p in out]
        assert sims == sorted(sims, reverse=True)
        everything = engine.portraits(
            PortraitRequest(
                selfies=[crop(0)],
                style=STYLE,
                seed=3,
                num_images=5,
                num_candidates=5,
                scorer=brightness,
            )
        )
        assert [p.seed for p in out] == [p.seed for p in everything[:2]]
        assert out[0].similarity == max(p.similarity for p in everything)
        floor = everything[1].similarity
        kept = engine.portraits(
            PortraitRequest(
                selfies=[crop(0)],
                style=STYLE,
                seed=3,
                num_images=4,
                num_candidates=5,
                scorer=brightness,
                min_similarity=floor,
            )
        )
        # Only 2 of 5 pass the floor: the best 2 of the rest fill the set, flagged.
        assert [p.seed for p in kept] == [p.seed for p in everything[:4]]
        assert [p.low_likeness for p in kept] == [False, False, True, True]
        # A floor nobody reaches still gives a full set, every portrait flagged.
        none_pass = engine.portraits(
            PortraitRequest(
                selfies=[crop(0)],
                style=STYLE,
                seed=3,
                num_images=2,
                num_candidates=5,
                scorer=brightness,
                min_similarity=2.0,
            )
        )
        assert [p.seed for p in none_pass] == [p.seed for p in everything[:2]]
        assert all(p.low_likeness for p in none_pass)
        assert not any(p.low_likeness for p in out)

    def test_progress_per_step_across_batches(self, engine: Engine) -> None:
        calls: list[tuple[int, int]] = []
        engine.portraits(
            PortraitRequest(selfies=[crop(0)], style=STYLE, seed=0, num_images=5),
            progress=lambda done, total: calls.append((done, total)),
        )
        # 5 candidates in batches of 4 + 1, 2 steps each.
        assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def test_cancel_raises_and_leaves_no_state(self, engine: Engine) -> None:
        engine.warmup(["film"])
        unet = engine._base("film").pipe.unet
        weights = {k: v.clone() for k, v in unet.state_dict().items()}
        scales = get_adapter_scale(unet)
        steps: list[int] = []

        with pytest.raises(Cancelled) as exc:
            engine.portraits(
                PortraitRequest(selfies=[crop(0)], style=STYLE, seed=0, adapter_scale=0.9),
                progress=lambda done, total: steps.append(done),
                cancel=lambda: len(steps) >= 1,
            )

        assert exc.value.code == "cancelled"
        assert steps == [1]
        assert get_adapter_scale(unet) == scales
        assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())

    def test_request_checks(self, engine: Engine) -> None:
        with pytest.raises(ValueError, match="selfie"):
            engine.portraits(PortraitRequest(selfies=[], style=STYLE))
        with pytest.raises(ValueError, match="num_candidates"):
            engine.portraits(
                PortraitRequest(selfies=[crop(0)], style=STYLE, num_images=3, num_candidates=2)
            )
        with pytest.raises(ValueError, match="scorer"):
            engine.portraits(PortraitRequest(selfies=[crop(0)], style=STYLE, num_candidates=2))

    def test_majic_base_is_a_different_model(self, engine: Engine) -> None:
        film = engine.portraits(PortraitRequest(selfies=[crop(0)], style=STYLE, seed=1))
        majic_style = StyleSpec(name="m", base_model="majic", prompt="armor", lora_weight=0.5)
        majic = engine.portraits(PortraitRequest(selfies=[crop(0)], style=majic_style, seed=1))
        assert np.abs(pixels(film[0].image) - pixels(majic[0].image)).max() > 2
        assert (
            engine._base("film").pose_pipe.controlnet is engine._base("majic").pose_pipe.controlnet
        )


def test_pose_pad_is_facechains_img_pad() -> None:
    wide = np.asarray(pose_pad(Image.new("RGB", (100, 50), (255, 255, 255)), 64))
    # Wide: fills the width, sits on the bottom edge, black padding on top only.
    assert wide[:32].sum() == 0
    assert (wide[32:] == 255).all()
    tall = np.asarray(pose_pad(Image.new("RGB", (50, 100), (255, 255, 255)), 64))
    # Tall: fills the height, centred, padded left and right evenly.
    assert tall[:, :16].sum() == 0
    assert tall[:, 48:].sum() == 0
    assert (tall[:, 16:48] == 255).all()


def facechain_img_pad(pil_file: Image.Image, size: int = 512) -> Image.Image:
    """FaceChain's `img_pad` (inference_fact.py) for a square target, as written there."""
    w, h = pil_file.size
    if h / float(size) >= w / float(size):
        new_w = int(w / (h / float(size)))
        array = np.array(pil_file.resize((new_w, size)))  # Pillow's default resampling
        pad_w = int((size - new_w) / 2)
        array = np.pad(array, ((0, 0), (pad_w, size - new_w - pad_w), (0, 0)), "constant")
    else:
        new_h = int(h / (w / float(size)))
        array = np.array(pil_file.resize((size, new_h)))
        array = np.pad(array, ((size - new_h, 0), (0, 0), (0, 0)), "constant")
    return Image.fromarray(array)


@pytest.mark.parametrize("size", [(333, 517), (517, 333), (640, 480)])
def test_pose_pad_equals_img_pad_pixel_for_pixel(size: tuple[int, int]) -> None:
    photo = Image.fromarray(fixture_rgb("man_pose1.png")).resize(size)
    expected = np.asarray(facechain_img_pad(photo))
    padded = np.asarray(pose_pad(photo, 512))
    assert padded.shape == expected.shape == (512, 512, 3)
    assert np.array_equal(padded, expected)


def test_letterbox_keeps_aspect() -> None:
    img = Image.new("RGB", (100, 50), (255, 255, 255))
    out = np.asarray(letterbox(img, 64))
    assert out.shape == (64, 64, 3)
    assert out[0, 32].sum() == 0
    assert out[32, 32].sum() == 765
