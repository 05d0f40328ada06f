"""RRDB ×4 super-resolution: strict load of the published layout through the model cache,
refused wrappers and mismatched files, tiling that equals one pass, progress and cancel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain import registry
from facechain.annotators.rrdb import (
    TINY,
    RRDBNet,
    Upscaler,
    build_upscaler,
    read_state_dict,
    receptive_radius,
)
from facechain.errors import Cancelled, WeightsInvalid, WeightsMissing

MODEL_ID = "damo/cv_rrdb_image-super-resolution"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_layout() -> dict[str, tuple[int, ...]]:
    """Every key and shape of the published pytorch_model.pt, written out from the reference
    table (not from our module), so a renamed or reshaped layer fails the load."""
    shapes: dict[str, tuple[int, ...]] = {
        "conv_first.weight": (64, 3, 3, 3),
        "conv_first.bias": (64,),
    }
    rdb = {1: (32, 64), 2: (32, 96), 3: (32, 128), 4: (32, 160), 5: (64, 192)}
    for block in range(23):
        for r in (1, 2, 3):
            for conv, (out_ch, in_ch) in rdb.items():
                name = f"body.{block}.rdb{r}.conv{conv}"
                shapes[f"{name}.weight"] = (out_ch, in_ch, 3, 3)
                shapes[f"{name}.bias"] = (out_ch,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[f"{name}.weight"] = (64, 64, 3, 3)
        shapes[f"{name}.bias"] = (64,)
    shapes["conv_last.weight"] = (3, 64, 3, 3)
    shapes["conv_last.bias"] = (3,)
    return shapes


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        key: torch.randn(shape, generator=gen) * 0.02 for key, shape in published_layout().items()
    }


def save(tmp_path: Path, state: object) -> Path:
    path = tmp_path / "src" / MODEL_ID / "pytorch_model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def noise(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def small_net(dtype: torch.dtype = torch.float32) -> Upscaler:
    up = Upscaler.random(seed=1, num_block=1, num_feat=8, num_grow_ch=4, dtype=dtype)
    # Spread the output over the whole range, so rounding and clamping both see real work.
    bias = up.net.conv_last.bias
    assert bias is not None
    with torch.no_grad():
        up.net.conv_last.weight.mul_(12.0)
        bias.fill_(0.5)
    return up


class TestLayout:
    def test_counts_match_the_published_file(self) -> None:
        layout = published_layout()
        assert len(layout) == 702
        assert sum(int(np.prod(s)) for s in layout.values()) == 16_697_987
        net_shapes = {k: tuple(v.shape) for k, v in RRDBNet().state_dict().items()}
        assert net_shapes == layout


class TestLoad:
    def test_strict_load_through_the_model_cache(
        self, tmp_path: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        save(tmp_path, state_dict)
        cache = tmp_path / "models"
        registry.download_models(cache, only=["upscaler_rrdb"], local_source=tmp_path / "src")
        path = registry.resolve(registry.UPSCALER_RRDB, cache)
        assert path.name == "pytorch_model.pt"

        up = Upscaler.from_file(path)
        loaded = up.net.state_dict()
        assert set(loaded) == set(state_dict)
        for key in ("conv_first.weight", "body.22.rdb3.conv5.bias", "conv_last.bias"):
            assert torch.equal(loaded[key], state_dict[key])
        out = up.net(torch.rand(1, 3, 6, 5))
        assert out.shape == (1, 3, 24, 20)

        # The worker's builder takes the same path (fp32 on the CPU).
        built = build_upscaler("real", cache, "cpu")
        assert built.dtype == torch.float32
        assert torch.equal(built.net.state_dict()["conv_hr.weight"], state_dict["conv_hr.weight"])

    def test_missing_key_refused(
        self, tmp_path: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        partial = {k: v for k, v in state_dict.items() if k != "body.7.rdb2.conv4.weight"}
        with pytest.raises(WeightsInvalid, match=r"1 missing \['body.7.rdb2.conv4.weight'\]"):
            Upscaler.from_file(save(tmp_path, partial))

    def test_extra_key_refused(self, tmp_path: Path, state_dict: dict[str, torch.Tensor]) -> None:
        extra = {**state_dict, "body.23.rdb1.conv1.bias": torch.zeros(32)}
        with pytest.raises(WeightsInvalid, match=r"1 unexpected \['body.23.rdb1.conv1.bias'\]"):
            Upscaler.from_file(save(tmp_path, extra))

    def test_wrapped_checkpoint_refused_with_how_to_unwrap(
        self, tmp_path: Path, state_dict: dict[str, torch.Tensor]
    ) -> None:
        path = save(tmp_path, {"params_ema": state_dict})
        with pytest.raises(WeightsInvalid, match="params_ema") as info:
            Upscaler.from_file(path)
        assert "torch.save(torch.load(" in str(info.value)
        assert "['params_ema']" in str(info.value)

    def test_not_a_state_dict_refused(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsInvalid, match="not named tensors"):
            read_state_dict(save(tmp_path, {"conv_first.weight": [1, 2, 3]}))

    def test_real_profile_without_weights(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsMissing, match="facechain-bot models download"):
            build_upscaler("real", tmp_path / "empty", "cpu")


class TestUpscale:
    def test_tiny_profile_builds_a_small_net(self, tmp_path: Path) -> None:
        up = build_upscaler("tiny", tmp_path, "cpu")
        assert up.net.num_block == TINY["num_block"] < 23
        assert up.upscale(noise(10, 12)).size == (48, 40)

    def test_receptive_radius_bounds_the_real_reach(self) -> None:
        up = small_net()
        a = np.asarray(noise(48, 48))
        b = a.copy()
        b[24, 24] ^= 0xFF
        with torch.no_grad():
            diff = (up.net(_tensor(a)) - up.net(_tensor(b))).abs().sum(1)[0]
        ys, xs = torch.nonzero(diff > 0, as_tuple=True)
        reach = max(24 - int(ys.min()) // 4, int(ys.max()) // 4 - 24)
        reach = max(reach, 24 - int(xs.min()) // 4, int(xs.max()) // 4 - 24)
        assert 0 < reach <= receptive_radius(1) == 19

    def test_tiling_equals_one_pass_when_overlap_covers_the_receptive_field(self) -> None:
        # float64: the same pixels exactly. (In fp32 the conv kernels pick their blocking by
        # input size, which reorders sums; ~1 value in 10^6 then rounds one level apart.)
        up = small_net(torch.float64)
        image = noise(72, 80)
        one_pass = np.asarray(up.upscale(image, tile=1000, overlap=0))
        assert one_pass.shape == (288, 320, 3)
        assert len(np.unique(one_pass)) == 256  # clamped at both ends, every value between
        tiled = np.asarray(up.upscale(image, tile=24, overlap=receptive_radius(1)))
        np.testing.assert_array_equal(tiled, one_pass)
        # Without context the tile borders show (so the equality above means something).
        seams = np.asarray(up.upscale(image, tile=24, overlap=0))
        assert (seams != one_pass).mean() > 0.05

    def test_fp32_tiling_is_within_one_level(self) -> None:
        up = small_net()
        image = noise(72, 80)
        one_pass = np.asarray(up.upscale(image, tile=1000, overlap=0)).astype(int)
        tiled = np.asarray(up.upscale(image, tile=24, overlap=receptive_radius(1))).astype(int)
        assert np.abs(tiled - one_pass).max() <= 1
        assert (tiled != one_pass).mean() < 1e-4

    def test_progress_per_tile_and_cancel_between_tiles(self) -> None:
        up = small_net()
        calls: list[tuple[int, int]] = []
        up.upscale(noise(72, 80), tile=24, overlap=4, progress=lambda d, t: calls.append((d, t)))
        assert calls == [(i, 12) for i in range(1, 13)]  # 3 rows x 4 columns

        calls.clear()
        with pytest.raises(Cancelled):
            up.upscale(
                noise(72, 80),
                tile=24,
                progress=lambda d, t: calls.append((d, t)),
                cancel=lambda: len(calls) >= 3,
            )
        assert len(calls) == 3

    def test_512_to_2048_and_the_size_cap(self) -> None:
        up = small_net()
        image = noise(512, 512)
        calls: list[tuple[int, int]] = []
        hd = up.upscale(image, tile=256, out_size=2048, progress=lambda d, t: calls.append((d, t)))
        assert hd.size == (2048, 2048)
        assert hd.mode == "RGB"
        assert calls[-1] == (4, 4)
        # A smaller cap shrinks (FaceChain's 1024 choice); a larger one never enlarges.
        assert up.upscale(noise(64, 48), out_size=96).size == (72, 96)
        assert up.upscale(noise(64, 48), out_size=4096).size == (192, 256)

    def test_bad_arguments(self) -> None:
        up = small_net()
        with pytest.raises(ValueError, match="tile"):
            up.upscale(noise(8, 8), tile=0)
        with pytest.raises(ValueError, match="out_size"):
            up.upscale(noise(8, 8), out_size=0)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
