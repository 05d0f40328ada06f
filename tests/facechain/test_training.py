"""Style LoRA training on the tiny profile: the loss goes down, the weights load (diffusers and
Kohya, same update), the base is left untouched, a crash resumes bit for bit, cancel stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from facechain import engine
from facechain.errors import Cancelled
from facechain.lora import merged_lora, parse_lora
from facechain.training import (
    DIFFUSERS_FILE,
    StyleDataset,
    TrainingConfig,
    TrainingProgress,
    TrainingResult,
    prepare_dataset,
    tiny_components,
    train_style_lora,
)
from facechain.training.components import TINY_BASE_SEEDS
from tests.facechain.face_data import PORTRAITS, fixture_bytes

CONFIG = TrainingConfig(
    base_model="majic",
    rank=4,
    learning_rate=1e-3,
    max_train_steps=8,
    resolution=64,
    checkpointing_steps=3,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box OpenMP's
    spinning makes them 10x slower; one thread keeps these tests fast and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class WorkerDied(Exception):
    """Stands in for a worker crash in the middle of training."""


@pytest.fixture(scope="module")
def dataset() -> StyleDataset:
    return prepare_dataset(
        [fixture_bytes(n) for n in PORTRAITS], trigger_word="zkstyle", resolution=64
    )


@pytest.fixture(scope="module")
def trained(
    dataset: StyleDataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainingResult]:
    seen: list[TrainingProgress] = []
    result = train_style_lora(
        CONFIG,
        dataset,
        tiny_components("majic"),
        checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
        device="cpu",
        progress=seen.append,
    )
    assert [p.step for p in seen] == list(range(1, 9))
    assert all(p.total_steps == 8 for p in seen)
    return result


class TestTraining:
    def test_loss_goes_down(self, trained: TrainingResult) -> None:
        assert trained.steps == 8
        assert len(trained.losses) == 8
        assert trained.resumed_from_step is None
        assert trained.eval_loss_after < trained.eval_loss_before
        assert trained.base_model == "majic"
        assert trained.trigger_word == "zkstyle"
        assert trained.style_prompt == "zkstyle"

    def test_diffusers_and_kohya_files_hold_the_same_update(self, trained: TrainingResult) -> None:
        diffusers_keys = load_file(str(trained.lora_path)).keys()
        assert trained.lora_path.name == DIFFUSERS_FILE
        assert all(k.startswith("unet.") for k in diffusers_keys)
        # 16 transformer blocks x 2 attentions x 4 projections x (down, up).
        assert len(diffusers_keys) == 256
        with safe_open(str(trained.kohya_path), "pt") as fh:
            kohya_keys = list(fh.keys())
            meta = fh.metadata()
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha" in (
            kohya_keys
        )
        assert meta["facechain_base_model"] == "majic"
        assert meta["ss_network_dim"] == "4"

        base = tiny_components("majic")
        merged = {}
        for path in (trained.lora_path, trained.kohya_path):
            lora = parse_lora(path)
            with merged_lora(base.unet, base.text_encoder, lora, 1.0):
                merged[path.name] = {k: v.clone() for k, v in base.unet.state_dict().items()}
        a, b = merged.values()
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    def test_diffusers_file_loads_in_a_stock_pipeline(self, trained: TrainingResult) -> None:
        parts = tiny_components("majic")
        pipe = StableDiffusionPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
            unet=parts.unet,
            scheduler=PNDMScheduler.from_config(parts.noise_scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
        before = parts.unet.state_dict()[name].clone()
        pipe.load_lora_weights(str(trained.lora_path.parent), weight_name=DIFFUSERS_FILE)
        pipe.fuse_lora(lora_scale=1.0)
        fused = {k.replace(".base_layer", ""): v for k, v in parts.unet.state_dict().items()}
        assert not torch.equal(fused[name], before)

        reference = tiny_components("majic")
        with merged_lora(
            reference.unet, reference.text_encoder, parse_lora(trained.kohya_path), 1.0
        ):
            assert torch.allclose(fused[name], reference.unet.state_dict()[name], atol=1e-6)

    def test_base_is_left_untouched(self, dataset: StyleDataset, tmp_path: Path) -> None:
        parts = tiny_components("film")
        before = {k: v.clone() for k, v in parts.unet.state_dict().items()}
        config = TrainingConfig(base_model="film", rank=2, max_train_steps=1, resolution=64)
        train_style_lora(config, dataset, parts, checkpoint_dir=tmp_path, device="cpu")
        assert not getattr(parts.unet, "peft_config", None)
        assert not any("lora" in name for name, _ in parts.unet.named_modules())
        after = parts.unet.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_crash_resumes_from_the_checkpoint(
        self, dataset: StyleDataset, trained: TrainingResult, tmp_path: Path
    ) -> None:
        parts = tiny_components("majic")

        def die_at_5(p: TrainingProgress) -> None:
            if p.step == 5:
                raise WorkerDied

        with pytest.raises(WorkerDied):
            train_style_lora(
                CONFIG, dataset, parts, checkpoint_dir=tmp_path, device="cpu", progress=die_at_5
            )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000003"]
        resumed = train_style_lora(CONFIG, dataset, parts, checkpoint_dir=tmp_path, device="cpu")
        assert resumed.resumed_from_step == 3
        assert resumed.steps == trained.steps == 8
        assert resumed.losses == trained.losses
        assert resumed.eval_loss_before == trained.eval_loss_before
        a, b = load_file(str(resumed.lora_path)), load_file(str(trained.lora_path))
        assert all(torch.equal(a[k], b[k]) for k in a)

    def test_checkpoint_for_other_inputs_is_not_resumed(
        self, dataset: StyleDataset, tmp_path: Path
    ) -> None:
        short = TrainingConfig(
            base_model="majic", rank=2, max_train_steps=3, resolution=64, checkpointing_steps=1
        )

        def die_at_2(p: TrainingProgress) -> None:
            if p.step == 2:
                raise WorkerDied

        with pytest.raises(WorkerDied):
            train_style_lora(
                short,
                dataset,
                tiny_components("majic"),
                checkpoint_dir=tmp_path,
                device="cpu",
                progress=die_at_2,
            )
        other = TrainingConfig(
            **{**short.to_dict(), "seed": 7, "target_modules": ("to_q",), "eval_timesteps": (500,)}
        )
        result = train_style_lora(
            other, dataset, tiny_components("majic"), checkpoint_dir=tmp_path, device="cpu"
        )
        assert result.resumed_from_step is None
        assert result.steps == 3

    def test_cancel_between_steps(self, dataset: StyleDataset, tmp_path: Path) -> None:
        parts = tiny_components("majic")
        steps: list[int] = []
        with pytest.raises(Cancelled, match="step 2 of 8"):
            train_style_lora(
                CONFIG,
                dataset,
                parts,
                checkpoint_dir=tmp_path,
                device="cpu",
                progress=lambda p: steps.append(p.step),
                cancel=lambda: len(steps) >= 2,
            )
        assert steps == [1, 2]
        assert not getattr(parts.unet, "peft_config", None)

    def test_resolution_mismatch_is_refused(self, dataset: StyleDataset, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="64 px"):
            train_style_lora(
                TrainingConfig(resolution=512),
                dataset,
                tiny_components(),
                checkpoint_dir=tmp_path,
                device="cpu",
            )


class TestConfig:
    def test_defaults_follow_the_reference(self) -> None:
        config = TrainingConfig()
        assert (config.rank, config.learning_rate, config.seed) == (32, 1e-4, 42)
        assert config.target_modules == ("to_k", "to_q", "to_v", "to_out.0")
        # FaceChain: 200 epochs of batch 1, i.e. 200 x images steps.
        assert config.total_steps(6) == 1200
        assert TrainingConfig(max_train_steps=50).total_steps(6) == 50

    def test_json_round_trip(self) -> None:
        assert TrainingConfig.from_dict({**CONFIG.to_dict(), "unknown": 1}) == CONFIG

    def test_tiny_bases_match_the_engine(self) -> None:
        assert TINY_BASE_SEEDS == engine._TINY_SEEDS
