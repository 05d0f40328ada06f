"""The safety checker: the published layout (CompVis/stable-diffusion-safety-checker) loaded
strictly through the registry, diffusers' decision without its black images, preprocessing, and
the tiny checker that never flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig

from facechain import registry
from facechain.errors import WeightsInvalid
from facechain.safety import (
    CLIP_MEAN,
    CLIP_STD,
    POSITION_IDS,
    SafetyChecker,
    load_strict,
    module_key,
    preprocess,
    tiny_config,
)

# The published config.json's figures (CLIP ViT-L/14 vision tower, 768-d projection).
PUBLISHED = {"hidden": 1024, "inter": 4096, "layers": 24, "patch": 14, "image": 224, "proj": 768}


def published_shapes(
    hidden: int, inter: int, layers: int, patch: int, image: int, proj: int
) -> dict[str, tuple[int, ...]]:
    """Every key of the published file (transformers 4 names) and its shape, written out from
    the layout, independently of the network code under test."""
    vm = "vision_model.vision_model."
    positions = (image // patch) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        vm + "embeddings.class_embedding": (hidden,),
        vm + "embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        vm + "embeddings.position_embedding.weight": (positions, hidden),
        vm + "embeddings.position_ids": (1, positions),
        vm + "pre_layrnorm.weight": (hidden,),
        vm + "pre_layrnorm.bias": (hidden,),
        vm + "post_layernorm.weight": (hidden,),
        vm + "post_layernorm.bias": (hidden,),
        "visual_projection.weight": (proj, hidden),
        "concept_embeds": (17, proj),
        "special_care_embeds": (3, proj),
        "concept_embeds_weights": (17,),
        "special_care_embeds_weights": (3,),
    }
    for i in range(layers):
        p = f"{vm}encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (hidden, hidden)
            shapes[f"{p}self_attn.{name}.bias"] = (hidden,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{norm}.weight"] = (hidden,)
            shapes[f"{p}{norm}.bias"] = (hidden,)
        shapes[f"{p}mlp.fc1.weight"] = (inter, hidden)
        shapes[f"{p}mlp.fc1.bias"] = (inter,)
        shapes[f"{p}mlp.fc2.weight"] = (hidden, inter)
        shapes[f"{p}mlp.fc2.bias"] = (hidden,)
    return shapes


def published_config(hidden: int, inter: int, layers: int, patch: int, image: int, proj: int):
    """config.json as CompVis publishes it (a CLIPConfig; only the vision tower has weights)."""
    return {
        "_name_or_path": "CompVis/stable-diffusion-safety-checker",
        "architectures": ["StableDiffusionSafetyChecker"],
        "model_type": "clip",
        "projection_dim": proj,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
        },
        "vision_config": {
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_attention_heads": 4,
            "num_hidden_layers": layers,
            "patch_size": patch,
            "image_size": image,
        },
    }


TINY = {"hidden": 32, "inter": 37, "layers": 2, "patch": 8, "image": 32, "proj": 16}


def synthetic_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout (tiny widths); thresholds that flag some images."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in published_shapes(**TINY).items():
        if key == POSITION_IDS:
            state[key] = torch.arange(shape[1]).unsqueeze(0)
        elif key.endswith("embeds_weights"):
            state[key] = torch.full(shape, 0.05)
        elif key.endswith(("norm1.weight", "norm2.weight", "layrnorm.weight", "layernorm.weight")):
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.2
    return state


def write_published(folder: Path, state: dict[str, torch.Tensor], fmt: str = "bin") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(published_config(**TINY)), encoding="utf-8")
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """The synthetic checkpoint laid out as the hub publishes it, imported into a model cache."""
    src = tmp_path_factory.mktemp("src")
    cache = tmp_path_factory.mktemp("cache")
    state = synthetic_state()
    write_published(src / registry.SAFETY_CHECKER.model_id, state)
    (src / registry.SAFETY_CHECKER.model_id / "README.md").write_text("not a model file")
    registry.download_models(cache, only=["safety_checker"], local_source=src)
    return cache, state


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 40, 3), dtype=np.uint8))
        for i in range(n)
    ]


class TestLoading:
    def test_published_layout_figures(self) -> None:
        shapes = published_shapes(**PUBLISHED)
        assert len(shapes) == 13 + 24 * 16
        params = sum(int(np.prod(s)) for k, s in shapes.items() if k != POSITION_IDS)
        # ViT-L/14 tower 303,179,776 + projection 786,432 + 20 concepts x 769.
        assert params == 303_179_776 + 786_432 + 20 * 769
        with torch.device("meta"):
            model = StableDiffusionSafetyChecker(CLIPConfig(**published_config(**PUBLISHED)))
        module = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert module == {module_key(k): s for k, s in shapes.items() if k != POSITION_IDS}

    def test_strict_load_through_the_registry(
        self, imported: tuple[Path, dict[str, torch.Tensor]]
    ) -> None:
        cache, state = imported
        folder = registry.resolve(registry.SAFETY_CHECKER, cache)
        # Only the published model's files were taken (the README is not part of it).
        manifest = json.loads((cache / "manifest.json").read_text())
        assert set(manifest["models"]["safety_checker"]["files"]) == {
            "config.json",
            "pytorch_model.bin",
        }
        checker = SafetyChecker.from_dir(folder)
        loaded = checker.model.state_dict()
        for key in ("visual_projection.weight", "concept_embeds"):
            assert torch.equal(loaded[key], state[key])
        key = "vision_model.vision_model.encoder.layers.1.mlp.fc2.weight"
        assert torch.equal(loaded[module_key(key)], state[key])
        assert not checker.model.training
        assert len(checker.check(images(3))) == 3

    def test_safetensors_is_preferred(self, tmp_path: Path) -> None:
        state = synthetic_state(seed=1)
        write_published(tmp_path, state, fmt="safetensors")
        (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
        checker = SafetyChecker.from_dir(tmp_path)
        assert torch.equal(checker.model.state_dict()["concept_embeds"], state["concept_embeds"])

    @pytest.mark.parametrize(
        "change",
        ["missing", "renamed", "reshaped", "position_ids"],
    )
    def test_one_tensor_wrong_is_refused_in_one_line(self, tmp_path: Path, change: str) -> None:
        state = synthetic_state()
        key = "vision_model.vision_model.encoder.layers.0.self_attn.q_proj.weight"
        if change == "missing":
            del state[key]
        elif change == "renamed":
            state[key.replace("q_proj", "query")] = state.pop(key)
        elif change == "reshaped":
            state["concept_embeds"] = torch.zeros(16, 16)
        else:
            state[POSITION_IDS] = torch.zeros_like(state[POSITION_IDS])
        write_published(tmp_path, state)
        with pytest.raises(WeightsInvalid) as err:
            SafetyChecker.from_dir(tmp_path)
        message = str(err.value)
        assert "\n" not in message
        assert "safety checker" in message
        if change in ("missing", "renamed"):
            assert "1 missing" in message
            assert "q_proj" in message

    def test_folder_without_weights_or_garbage(self, tmp_path: Path) -> None:
        (tmp_path / "config.json").write_text(json.dumps(published_config(**TINY)))
        with pytest.raises(WeightsInvalid, match=r"needs config\.json and one of"):
            SafetyChecker.from_dir(tmp_path)
        (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
        with pytest.raises(WeightsInvalid, match="not a tensor file"):
            SafetyChecker.from_dir(tmp_path)


class TestDecision:
    def test_same_decisions_as_diffusers_and_no_image_touched(self) -> None:
        model = StableDiffusionSafetyChecker(tiny_config())
        load_strict(model, synthetic_state(seed=3))
        checker = SafetyChecker(model)
        pics = images(12, seed=5)
        with torch.no_grad():
            # Thresholds among the images' cosines, so some images flag and some do not.
            model.concept_embeds_weights.zero_()
            model.special_care_embeds_weights.zero_()
            cos, special = checker.scores(pics)
            model.concept_embeds_weights.copy_(torch.from_numpy(np.quantile(cos, 0.97, axis=0)))
            model.special_care_embeds_weights.copy_(
                torch.from_numpy(np.quantile(special, 0.8, axis=0))
            )
        before = [np.asarray(p).copy() for p in pics]
        verdicts = checker.check(pics)
        clip_input = torch.stack([preprocess(p, 32) for p in pics])
        blank = [np.ones((4, 4, 3)) for _ in pics]
        _, expected = model.forward_onnx(clip_input, torch.ones(len(pics), 3, 4, 4))
        _, eager = model(clip_input, blank)
        assert [v.flagged for v in verdicts] == expected.tolist()
        assert [v.flagged for v in verdicts] == list(eager)
        assert 0 < sum(v.flagged for v in verdicts) < len(pics)
        assert all(np.array_equal(np.asarray(p), b) for p, b in zip(pics, before, strict=True))
        for v in verdicts:
            assert v.flagged == (v.score > 0) == bool(v.concepts)

    def test_threshold_moves_the_decision(self) -> None:
        model = StableDiffusionSafetyChecker(tiny_config())
        load_strict(model, synthetic_state(seed=3))
        pics = images(6, seed=2)
        scores = [v.score for v in SafetyChecker(model).check(pics)]
        strict = SafetyChecker(model, threshold=min(scores) - 0.01).check(pics)
        lenient = SafetyChecker(model, threshold=max(scores) + 0.01).check(pics)
        assert all(v.flagged for v in strict)
        assert not any(v.flagged for v in lenient)

    def test_preprocess_is_the_published_clip_processing(self) -> None:
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            resample=3,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        pic = images(1, seed=9)[0].resize((300, 260))
        ours = preprocess(pic, 224)
        theirs = torch.as_tensor(np.asarray(processor(pic, return_tensors="np")["pixel_values"]))
        assert ours.shape == (3, 224, 224)
        assert torch.allclose(ours, theirs[0].float(), atol=0.03)


class TestTiny:
    def test_the_tiny_checker_never_flags(self) -> None:
        checker = SafetyChecker.random(11)
        pics = images(8, seed=1) + [Image.new("RGB", (64, 64), c) for c in ((0, 0, 0), (255,) * 3)]
        verdicts = checker.check(pics)
        assert not any(v.flagged for v in verdicts)
        assert max(v.score for v in verdicts) <= -0.99

    def test_the_tiny_checker_is_seeded(self) -> None:
        a = SafetyChecker.random(11).check(images(2))
        b = SafetyChecker.random(11).check(images(2))
        assert [v.score for v in a] == [v.score for v in b]
