"""The `real` profile end to end on a model cache laid out exactly as the published weights:
diffusers folders for the base and the OpenPose ControlNet, the FACT adapter `.ckpt` (adapter
processors + `local_fac_prj.` projector at the released 144x512 -> 16x768 sizes), the full-size
TransFace ViT-S `.pt` and the default style LoRA, copied in by `models download --from DIR`.

The base is SD1.5-shaped but narrow (768-wide cross-attention and text encoder, small blocks),
so the test runs on a CPU; every loader is the real one (`from_pretrained`, strict `torch.load`
of both checkpoints, registry resolution with checksums)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from facechain import registry, tiny
from facechain.adapter import adapter_state_dict_template
from facechain.annotators.rrdb import build_upscaler
from facechain.engine import Engine, EngineConfig, PortraitRequest, StyleSpec
from facechain.models.projector import CKPT_PREFIX, FaceProjector
from facechain.models.transface import TransFaceViT
from facechain.prompts import SUBJECTS
from tests.facechain.openpose_data import write_openpose_weights
from tests.facechain.test_fairface import synthetic_state_dict as fairface_state_dict
from tests.facechain.test_rrdb import published_layout as rrdb_layout
from tests.facechain.test_safety import synthetic_state as safety_state
from tests.facechain.test_safety import write_published as write_safety_checker

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def narrow_sd15_unet() -> UNet2DConditionModel:
    """SD1.5 block layout and 768-wide cross-attention, narrow channels."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def text_encoder_768() -> CLIPTextModel:
    torch.manual_seed(1)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=514,
            hidden_size=768,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=12,
            max_position_embeddings=77,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )


def randomized(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random values of the real shapes; gates open (a trained adapter's are non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.ones(v.shape) if "alpha" in k else 0.2 * torch.randn(v.shape, generator=gen)
        for k, v in state.items()
    }


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local source in ModelScope's layout, imported with the real download code."""
    src = tmp_path_factory.mktemp("modelscope")
    unet = narrow_sd15_unet()
    text_encoder = text_encoder_768()
    pipe = StableDiffusionPipeline(
        vae=tiny.vae(0),
        text_encoder=text_encoder,
        tokenizer=tiny.tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(tiny.SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    spec = registry.BASE_FILM
    pipe.save_pretrained(src / spec.model_id / spec.path)

    adapter = randomized(adapter_state_dict_template(unet), seed=2)
    torch.manual_seed(3)
    projector = FaceProjector()  # the released sizes: 144x512 tokens -> 16x768
    adapter.update({CKPT_PREFIX + k: v for k, v in projector.state_dict().items()})
    spec = registry.ADAPTER_FILM
    (src / spec.model_id).mkdir(parents=True, exist_ok=True)
    torch.save(adapter, src / spec.model_id / spec.path)

    torch.manual_seed(4)
    spec = registry.TRANSFACE
    torch.save(TransFaceViT().state_dict(), src / spec.model_id / spec.path)

    spec = registry.CONTROLNET_OPENPOSE
    ControlNetModel.from_unet(unet).save_pretrained(src / spec.model_id / spec.path)

    spec = registry.DEFAULT_STYLE_LORA
    (src / spec.model_id).mkdir(parents=True, exist_ok=True)
    save_file(tiny.style_lora(unet, text_encoder, seed=5), str(src / spec.model_id / spec.path))

    # The perimeter networks at full size, each in its published file (synthetic values).
    spec = registry.OPENPOSE_ANNOTATOR
    write_openpose_weights(src / spec.model_id / spec.path, seed=6)
    spec = registry.FAIRFACE
    (src / spec.model_id).mkdir(parents=True, exist_ok=True)
    torch.save(fairface_state_dict(seed=7), src / spec.model_id / spec.path)
    spec = registry.UPSCALER_RRDB
    (src / spec.model_id).mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(8)
    rrdb = {k: 0.02 * torch.randn(v, generator=gen) for k, v in rrdb_layout().items()}
    torch.save(rrdb, src / spec.model_id / spec.path)
    # The safety checker in its published files (tiny widths), with thresholds no cosine
    # reaches: it checks every candidate and flags none, so the set is the engine's own.
    checker = safety_state(seed=9)
    for key in [k for k in checker if k.endswith("embeds_weights")]:
        checker[key] = torch.full_like(checker[key], 2.0)
    write_safety_checker(src / registry.SAFETY_CHECKER.model_id, checker)

    cache = tmp_path_factory.mktemp("models")
    registry.download_models(
        cache,
        only=[
            "base_film",
            "adapter_film",
            "transface",
            "controlnet_openpose",
            "openpose_annotator",
            "fairface",
            "upscaler_rrdb",
            "default_style_lora",
            "safety_checker",
        ],
        local_source=src,
        link=True,
    )
    return cache


def _cached(cache: Path, spec: registry.ModelSpec) -> Path:
    """Where the model cache holds `spec` (the path production resolves)."""
    return registry.resolve(spec, cache)


def face_crop(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8)


class TestRealProfile:
    def test_loads_published_layout_and_generates(self, model_cache: Path) -> None:
        engine = Engine.from_config(
            EngineConfig(
                profile="real", models_dir=model_cache, device="cpu", steps=2, image_size=64
            )
        )
        style = StyleSpec(name="t", base_model="film", prompt="wearing a t-shirt")
        request = PortraitRequest(selfies=[face_crop(0)], style=style, num_images=1, seed=3)
        first = np.asarray(engine.portraits(request)[0].image)
        assert first.shape == (64, 64, 3)
        other = PortraitRequest(selfies=[face_crop(1)], style=style, num_images=1, seed=3)
        assert not np.array_equal(first, np.asarray(engine.portraits(other)[0].image))
        pose = Image.new("RGB", (64, 64))
        posed = PortraitRequest(
            selfies=[face_crop(0)], style=style, pose=pose, num_images=1, seed=3
        )
        assert np.asarray(engine.portraits(posed)[0].image).shape == (64, 64, 3)

    def test_perimeter_networks_load_from_the_cache(self, model_cache: Path) -> None:
        """OpenPose, FairFace and RRDB come from the cache through the production loaders."""
        cache_file = functools.partial(_cached, model_cache)
        # Every optional model is present: no fallback runs.
        assert registry.missing_fallbacks(model_cache) == {}
        engine = Engine.from_config(
            EngineConfig(profile="real", models_dir=model_cache, device="cpu", steps=2)
        )
        annotator = engine.pose_annotator()
        assert annotator is not None
        body = torch.load(cache_file(registry.OPENPOSE_ANNOTATOR) / "body_pose_model.pth")
        assert torch.equal(annotator.body.state_dict()["conv1_1.weight"], body["conv1_1.weight"])
        face = torch.load(cache_file(registry.OPENPOSE_ANNOTATOR) / "facenet.pth")
        assert torch.equal(
            annotator.face.state_dict()["Mconv7_stage6.bias"], face["Mconv7_stage6.bias"]
        )

        assert engine.fairface is not None
        fairface = torch.load(cache_file(registry.FAIRFACE))
        assert torch.equal(engine.fairface.net.state_dict()["fc.weight"], fairface["fc.weight"])
        subject = engine.subject_for([face_crop(0)])
        assert subject is not None
        assert subject.subject in SUBJECTS

        upscaler = build_upscaler("real", model_cache, device="cpu")
        rrdb = torch.load(cache_file(registry.UPSCALER_RRDB))
        assert torch.equal(upscaler.net.state_dict()["conv_last.weight"], rrdb["conv_last.weight"])
        out = upscaler.upscale(Image.new("RGB", (8, 8), (120, 80, 40)), tile=8)
        assert out.size == (32, 32)

    def test_a_missing_file_names_the_download_command(
        self, model_cache: Path, tmp_path: Path
    ) -> None:
        from facechain.errors import WeightsMissing

        (model_cache / registry.TRANSFACE.model_id / registry.TRANSFACE.path).rename(
            tmp_path / "moved.pt"
        )
        try:
            with pytest.raises(WeightsMissing, match="facechain-bot models download"):
                Engine.from_config(
                    EngineConfig(profile="real", models_dir=model_cache, device="cpu")
                )
        finally:
            (tmp_path / "moved.pt").rename(
                model_cache / registry.TRANSFACE.model_id / registry.TRANSFACE.path
            )
