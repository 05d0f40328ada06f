"""TransFace ViT: strict load of the released key layout, token shapes, input normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facechain import tiny
from facechain.errors import EngineError
from facechain.models.checkpoint import load_strict
from facechain.models.transface import TransFaceViT, faces_to_tensor, load_transface


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all per-op overhead: one thread avoids OpenMP syncs (and load spikes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_transface_shapes() -> dict[str, tuple[int, ...]]:
    """Every key and shape of `ms1mv2_model_TransFace_S.pt` (ViT-S, 112 px, patch 9, width 512)."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (512, 3, 9, 9),
        "patch_embed.proj.bias": (512,),
        "pos_embed": (1, 144, 512),
        "mask_token": (1, 1, 512),
        "norm.weight": (512,),
        "norm.bias": (512,),
        "feature.0.weight": (512, 73728),
        "feature.2.weight": (512, 512),
        "senet.0.weight": (144, 73728),
        "senet.2.weight": (144, 144),
    }
    for bn in ("feature.1", "feature.3"):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{bn}.{name}"] = (512,)
        shapes[f"{bn}.num_batches_tracked"] = ()
    for i in range(12):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (512,),
                b + "norm1.bias": (512,),
                b + "attn.qkv.weight": (1536, 512),
                b + "attn.proj.weight": (512, 512),
                b + "attn.proj.bias": (512,),
                b + "norm2.weight": (512,),
                b + "norm2.bias": (512,),
                b + "mlp.fc1.weight": (2048, 512),
                b + "mlp.fc1.bias": (2048,),
                b + "mlp.fc2.weight": (512, 2048),
                b + "mlp.fc2.bias": (512,),
            }
        )
    return shapes


class TestRealLayout:
    def test_every_real_key_loads_strictly(self) -> None:
        with torch.device("meta"):
            model = TransFaceViT()
        ckpt = {k: torch.empty(s, device="meta") for k, s in real_transface_shapes().items()}
        ckpt["feature.1.num_batches_tracked"] = torch.empty((), dtype=torch.long, device="meta")
        ckpt["feature.3.num_batches_tracked"] = torch.empty((), dtype=torch.long, device="meta")

        load_strict(model, ckpt, "TransFace")

        assert sum(p.numel() for p in model.parameters()) == pytest.approx(86.7e6, rel=0.01)

    def test_extra_or_missing_key_is_refused(self) -> None:
        with torch.device("meta"):
            model = TransFaceViT()
        ckpt = {k: torch.empty(s, device="meta") for k, s in real_transface_shapes().items()}
        ckpt["module.head.weight"] = torch.empty(1, device="meta")
        with pytest.raises(EngineError, match="1 unexpected"):
            load_strict(model, ckpt, "TransFace")
        del ckpt["module.head.weight"], ckpt["blocks.11.mlp.fc2.bias"]
        with pytest.raises(EngineError, match="1 missing"):
            load_strict(model, ckpt, "TransFace")

    def test_load_transface_round_trip(self, tmp_path: Path) -> None:
        model = tiny.transface(seed=0)
        path = tmp_path / "tf.pt"
        torch.save(model.state_dict(), path)
        loaded = load_transface(path, tiny.TRANSFACE)
        x = faces_to_tensor([np.full((112, 112, 3), 200, np.uint8)])
        assert not loaded.training
        assert torch.equal(loaded(x), model(x))


class TestForward:
    def test_tokens_and_embedding_shapes(self) -> None:
        model = tiny.transface(seed=0)
        rng = np.random.default_rng(0)
        crops = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
        with torch.no_grad():
            x = faces_to_tensor(crops)
            tokens = model(x)
            emb = model.embed(x)
        assert tokens.shape == (2, 144, 32)
        assert tokens.dtype == torch.float32
        # Final LayerNorm output: zero mean per token (affine is identity at init).
        assert tokens.mean(-1).abs().max() < 1e-4
        assert emb.shape == (2, 32)
        assert not torch.allclose(tokens[0], tokens[1])

    def test_faces_to_tensor_normalisation(self) -> None:
        crop = np.zeros((112, 112, 3), np.uint8)
        crop[..., 0] = 255
        x = faces_to_tensor([crop, Image.fromarray(crop)])
        assert x.shape == (2, 3, 112, 112)
        assert x[:, 0].min() == 1.0
        assert x[:, 1].max() == -1.0
        with pytest.raises(ValueError, match="112"):
            faces_to_tensor([np.zeros((100, 100, 3), np.uint8)])
        with pytest.raises(ValueError, match="no face"):
            faces_to_tensor([])
