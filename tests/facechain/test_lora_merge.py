"""Style LoRA: Kohya and diffusers formats, exact restore, upload validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from facechain import lora as lora_mod
from facechain import tiny
from facechain.errors import InvalidLoRA
from facechain.lora import inspect_lora, merged_lora, parse_lora

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # a 1x1 convolution in SD1.5
ATTN2_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_pair(out_f: int, in_f: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(rank, in_f, generator=gen), 0.3 * torch.randn(
        out_f, rank, generator=gen
    )


@pytest.fixture(scope="module")
def pipe_parts():
    unet = tiny.unet(seed=0)
    text_encoder = tiny.text_encoder(seed=0)
    return unet, text_encoder, tiny.tokenizer()


def run(unet, text_encoder, tokenizer) -> torch.Tensor:
    ids = tokenizer(
        ["a portrait"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = text_encoder(ids)[0]
        return unet(latents, 10, text).sample


def same_delta_both_formats(rank: int = 4) -> tuple[dict, dict]:
    """One update (alpha = rank/2) on an attention Linear, a 1x1 conv and a text-encoder Linear."""
    kohya: dict[str, torch.Tensor] = {}
    diffusers: dict[str, torch.Tensor] = {}
    for i, (component, name, out_f, in_f, conv) in enumerate(
        [
            ("unet", ATTN, 32, 32, False),
            ("unet", PROJ_IN, 32, 32, True),
            ("te", TE_Q, 32, 32, False),
        ]
    ):
        down, up = random_pair(out_f, in_f, rank, seed=i)
        if conv:
            down, up = down[:, :, None, None], up[:, :, None, None]
        k = ("lora_unet_" if component == "unet" else "lora_te_") + name.replace(".", "_")
        kohya[f"{k}.lora_down.weight"] = down
        kohya[f"{k}.lora_up.weight"] = up
        kohya[f"{k}.alpha"] = torch.tensor(rank / 2)
        d = ("unet." if component == "unet" else "text_encoder.") + name
        # diffusers/PEFT files carry no alpha; fold alpha/rank into `up`.
        diffusers[f"{d}.lora_A.weight"] = down
        diffusers[f"{d}.lora_B.weight"] = up * 0.5
    return kohya, diffusers


class TestMerge:
    def test_swap_then_unswap_restores_bitwise(self, pipe_parts) -> None:
        unet, te, tok = pipe_parts
        before = run(unet, te, tok)
        weights = {k: v.clone() for k, v in unet.state_dict().items()}
        style = parse_lora(tiny.style_lora(unet, te, seed=5))
        assert style.format == "kohya"

        with merged_lora(unet, te, style, multiplier=0.8):
            during = run(unet, te, tok)

        assert (during - before).abs().max() > 1e-3
        assert torch.equal(run(unet, te, tok), before)
        assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())

    def test_restores_after_an_exception(self, pipe_parts) -> None:
        unet, te, tok = pipe_parts
        before = run(unet, te, tok)
        with (
            pytest.raises(RuntimeError),
            merged_lora(unet, te, parse_lora(tiny.style_lora(unet, te)), 1.0),
        ):
            raise RuntimeError("boom")
        assert torch.equal(run(unet, te, tok), before)

    def test_kohya_and_diffusers_give_the_same_output(self, pipe_parts, tmp_path: Path) -> None:
        unet, te, tok = pipe_parts
        kohya, diffusers = same_delta_both_formats()
        save_file(kohya, str(tmp_path / "k.safetensors"))
        save_file(diffusers, str(tmp_path / "d.safetensors"))
        k, d = parse_lora(tmp_path / "k.safetensors"), parse_lora(tmp_path / "d.safetensors")
        assert (k.format, d.format) == ("kohya", "diffusers")

        with merged_lora(unet, te, k, 0.7):
            out_k = run(unet, te, tok)
        with merged_lora(unet, te, d, 0.7):
            out_d = run(unet, te, tok)
        assert torch.allclose(out_k, out_d, atol=1e-5)

    def test_merge_formula(self, pipe_parts) -> None:
        unet, te, _ = pipe_parts
        down, up = random_pair(32, 32, 2, seed=9)
        state = {
            f"lora_unet_{ATTN.replace('.', '_')}.lora_down.weight": down,
            f"lora_unet_{ATTN.replace('.', '_')}.lora_up.weight": up,
            f"lora_unet_{ATTN.replace('.', '_')}.alpha": torch.tensor(1.0),
        }
        weight = unet.get_submodule(ATTN).weight
        original = weight.detach().clone()
        with merged_lora(unet, te, parse_lora(state), 0.5):
            assert torch.allclose(weight, original + 0.5 * (1.0 / 2) * up @ down, atol=1e-6)

    def test_unknown_module_leaves_weights_untouched(self, pipe_parts) -> None:
        unet, te, _ = pipe_parts
        good = tiny.style_lora(unet, te)
        bad = dict(good)
        down, up = random_pair(32, 32, 2, seed=1)
        bad["lora_unet_not_a_module.lora_down.weight"] = down
        bad["lora_unet_not_a_module.lora_up.weight"] = up
        weights = {k: v.clone() for k, v in unet.state_dict().items()}
        with (
            pytest.raises(InvalidLoRA, match="not_a_module"),
            merged_lora(unet, te, parse_lora(bad), 1.0),
        ):
            pass
        assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())


def sd15_kohya(rank: int = 4) -> dict[str, torch.Tensor]:
    """A small valid SD1.5 Kohya LoRA (shapes of the real UNet and CLIP-L)."""
    state = {}
    for key, out_f, in_f in [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768),
        ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0", 320, 320),
        ("lora_te_text_model_encoder_layers_11_mlp_fc1", 3072, 768),
    ]:
        down, up = random_pair(out_f, in_f, rank, seed=0)
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


class TestInspect:
    def test_valid_kohya(self, tmp_path: Path) -> None:
        path = tmp_path / "style.safetensors"
        save_file(sd15_kohya(), str(path))
        info = inspect_lora(path)
        assert (info.format, info.rank, info.n_modules) == ("kohya", 4, 3)
        assert info.targets == ("text_encoder", "unet")

    def test_valid_diffusers_with_conv(self, tmp_path: Path) -> None:
        path = tmp_path / "style.safetensors"
        down, up = random_pair(320, 320, 8, seed=0)
        save_file(
            {
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": down[:, :, None, None],
                "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": up[:, :, None, None],
            },
            str(path),
        )
        info = inspect_lora(path)
        assert (info.format, info.rank, info.targets) == ("diffusers", 8, ("unet",))

    @pytest.mark.parametrize(
        ("mutate", "reason"),
        [
            (lambda s: s.update({"model.diffusion_model.weight": torch.zeros(2)}), "unrecognised"),
            (lambda s: s.update({"lora_unet_x.hada_w1_a": torch.zeros(2)}), "unsupported"),
            (lambda s: s.pop(next(k for k in s if k.endswith("lora_up.weight"))), "up and down"),
            (
                lambda s: s.update({f"{ATTN2_K}.lora_down.weight": torch.zeros(4, 1024)}),
                "does not fit",
            ),
            (
                lambda s: s.update(
                    {
                        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.zeros(
                            4, 320, 3, 3
                        ),
                        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(
                            320, 4, 1, 1
                        ),
                    }
                ),
                "LoCon",
            ),
            (
                lambda s: s.update(
                    {
                        "lora_unet_mid_block_attn_q.lora_down.weight": torch.zeros(4, 8),
                        "lora_unet_mid_block_attn_q.lora_up.weight": torch.zeros(8, 4),
                    }
                ),
                "no module",
            ),
        ],
    )
    def test_invalid(self, tmp_path: Path, mutate, reason: str) -> None:
        state = sd15_kohya()
        mutate(state)
        path = tmp_path / "bad.safetensors"
        save_file(state, str(path))
        with pytest.raises(InvalidLoRA, match=reason) as exc:
            inspect_lora(path)
        assert exc.value.code == "invalid_lora"

    def test_not_safetensors(self, tmp_path: Path) -> None:
        pickled = tmp_path / "style.ckpt"
        torch.save(sd15_kohya(), pickled)
        with pytest.raises(InvalidLoRA, match=r"only \.safetensors"):
            inspect_lora(pickled)
        fake = tmp_path / "fake.safetensors"
        fake.write_bytes(b"\x00" * 64)
        with pytest.raises(InvalidLoRA, match="not a readable safetensors"):
            inspect_lora(fake)

    def test_too_big(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "style.safetensors"
        save_file(sd15_kohya(), str(path))
        monkeypatch.setattr(lora_mod, "MAX_LORA_BYTES", 1000)
        with pytest.raises(InvalidLoRA, match="limit"):
            inspect_lora(path)
