"""Style LoRA: parse Kohya or diffusers/PEFT safetensors, merge into the resident weights, restore.

Merging follows FaceChain's merge_lora: W += multiplier * (alpha / rank) * up @ down (factor 1
without alpha), 1x1 convolutions squeezed to matrices, 3x3 (LoCon) layers refused. Kohya names
(`lora_unet_down_blocks_0_..._to_q`) are the module path with dots turned into underscores, so
matching against a table of flattened module names is the greedy name walk of the original
without its ambiguity. Only touched weights are backed up, and restored bit for bit.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from facechain.errors import InvalidLoRA

logger = logging.getLogger(__name__)

MAX_LORA_BYTES = 512 * 1024 * 1024
MAX_RANK = 256

Component = Literal["unet", "text_encoder"]
LoRAFormat = Literal["kohya", "diffusers"]

_KOHYA_PREFIXES: dict[str, Component] = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
_DIFFUSERS_PREFIXES: dict[str, Component] = {
    "unet.": "unet",
    "text_encoder.": "text_encoder",
    "base_model.model.": "unet",
}
_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_DIFFUSERS_SUFFIXES = {
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "alpha": "alpha",
}
# Pre-PEFT diffusers attention-processor LoRA: `attn1.processor.to_out_lora.down.weight`.
_PROCESSOR_KEY = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


@dataclass(frozen=True)
class LoRALayer:
    """One low-rank update; `module` is the flattened module path (dots as underscores)."""

    component: Component
    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None

    @property
    def rank(self) -> int:
        """Inner dimension r."""
        return int(self.down.shape[0])

    def delta(self, multiplier: float, device: torch.device) -> torch.Tensor:
        """multiplier * (alpha / rank) * up @ down as an (out, in) fp32 matrix."""
        scale = 1.0 if self.alpha is None else self.alpha / self.rank
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (multiplier * scale) * (up @ down)


@dataclass(frozen=True)
class LoRAWeights:
    """A parsed LoRA file."""

    format: LoRAFormat
    layers: tuple[LoRALayer, ...]


@dataclass(frozen=True)
class LoRAInfo:
    """What an uploaded LoRA contains."""

    format: LoRAFormat
    rank: int
    n_modules: int
    targets: tuple[Component, ...]
    size_bytes: int


def _flatten(name: str) -> str:
    """Module path -> Kohya-style name (transformers 5's CLIPTextModel has no `text_model.`)."""
    name = name.removeprefix("text_model.")
    return name.replace(".", "_")


def _split_key(key: str) -> tuple[LoRAFormat, Component, str, str]:
    """(format, component, flattened module, part) of one tensor name; InvalidLoRA if unknown."""
    for prefix, component in _KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            module, _, suffix = key[len(prefix) :].partition(".")
            if suffix not in _KOHYA_SUFFIXES:
                raise InvalidLoRA(f"unsupported tensor {key!r} (only plain LoRA is supported)")
            return "kohya", component, module.removeprefix("text_model_"), _KOHYA_SUFFIXES[suffix]
    key = _PROCESSOR_KEY.sub(
        lambda m: (
            f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora.{m.group(2)}.weight"
        ),
        key,
    )
    for prefix, component in _DIFFUSERS_PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for suffix, part in _DIFFUSERS_SUFFIXES.items():
                if rest.endswith("." + suffix):
                    return "diffusers", component, _flatten(rest[: -len(suffix) - 1]), part
            raise InvalidLoRA(f"unsupported tensor {key!r} (only plain LoRA is supported)")
    raise InvalidLoRA(f"unrecognised tensor name {key!r}: not a Kohya or diffusers SD1.5 LoRA")


def _group(
    shapes: Mapping[str, tuple[int, ...]],
) -> tuple[LoRAFormat, dict[tuple[Component, str], dict[str, str]]]:
    """Group tensor names by target module; checks that every module has up and down."""
    if not shapes:
        raise InvalidLoRA("the file contains no tensors")
    formats = set()
    groups: dict[tuple[Component, str], dict[str, str]] = {}
    for key in shapes:
        fmt, component, module, part = _split_key(key)
        formats.add(fmt)
        parts = groups.setdefault((component, module), {})
        if part in parts:
            raise InvalidLoRA(f"duplicate {part} tensor for {module}")
        parts[part] = key
    if len(formats) > 1:
        raise InvalidLoRA("the file mixes Kohya and diffusers tensor names")
    for (_, module), parts in groups.items():
        if "up" not in parts or "down" not in parts:
            raise InvalidLoRA(f"{module}: needs both up and down tensors")
    return formats.pop(), groups


def _check_pair(module: str, down: tuple[int, ...], up: tuple[int, ...]) -> None:
    """Shape rules for one layer, independent of any model."""
    if len(down) == 4 and down[2:] != (1, 1):
        raise InvalidLoRA(
            f"{module}: {down[2]}x{down[3]} convolution LoRA (LoCon) is not supported"
        )
    if len(down) not in (2, 4) or len(up) not in (2, 4) or (len(up) == 4 and up[2:] != (1, 1)):
        raise InvalidLoRA(f"{module}: unexpected LoRA shapes down {down}, up {up}")
    if down[0] != up[1]:
        raise InvalidLoRA(f"{module}: rank mismatch between down {down} and up {up}")
    if down[0] > MAX_RANK:
        raise InvalidLoRA(f"{module}: rank {down[0]} exceeds {MAX_RANK}")


def _check_target(
    module: str, down: tuple[int, ...], up: tuple[int, ...], weight: tuple[int, ...]
) -> None:
    """The update up @ down must have the target weight's (out, in) and a 1x1 kernel at most."""
    if len(weight) == 4 and weight[2:] != (1, 1):
        raise InvalidLoRA(
            f"{module}: LoRA on a {weight[2]}x{weight[3]} convolution is not supported"
        )
    if (up[0], down[1]) != (weight[0], weight[1]):
        raise InvalidLoRA(
            f"{module}: update shape {(up[0], down[1])} does not fit weight {weight[:2]} "
            "(is this an SD1.5 LoRA?)"
        )


def _read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without loading the data."""
    if path.suffix != ".safetensors":
        raise InvalidLoRA(f"{path.name}: only .safetensors files are accepted")
    size = path.stat().st_size
    if size > MAX_LORA_BYTES:
        raise InvalidLoRA(f"{path.name}: {size} bytes exceeds the {MAX_LORA_BYTES} byte limit")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidLoRA(f"{path.name}: not a readable safetensors file ({exc})") from exc


@functools.lru_cache(maxsize=1)
def sd15_weight_shapes() -> dict[tuple[Component, str], tuple[int, ...]]:
    """Weight shapes of every Linear/Conv2d of SD1.5's UNet and CLIP-L text encoder (meta)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                vocab_size=49408,
            )
        )
    shapes: dict[tuple[Component, str], tuple[int, ...]] = {}
    for component, model in (("unet", unet), ("text_encoder", text)):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                shapes[(component, _flatten(name))] = tuple(module.weight.shape)  # type: ignore[index]
    return shapes


def inspect_lora(path: Path) -> LoRAInfo:
    """Validate an uploaded LoRA against SD1.5 without loading its tensors.

    Raises:
        InvalidLoRA: not safetensors, too big, unknown tensor names, LoCon/LoHa layers,
            or shapes that do not fit SD1.5.
    """
    shapes = _read_shapes(path)
    fmt, groups = _group(shapes)
    reference = sd15_weight_shapes()
    ranks = set()
    for (component, module), parts in groups.items():
        down, up = shapes[parts["down"]], shapes[parts["up"]]
        _check_pair(module, down, up)
        weight = reference.get((component, module))
        if weight is None:
            raise InvalidLoRA(f"{component} has no module {module!r} (is this an SD1.5 LoRA?)")
        _check_target(module, down, up, weight)
        ranks.add(down[0])
    return LoRAInfo(
        format=fmt,
        rank=max(ranks),
        n_modules=len(groups),
        targets=tuple(sorted({component for component, _ in groups})),
        size_bytes=path.stat().st_size,
    )


def parse_lora(source: Path | Mapping[str, torch.Tensor]) -> LoRAWeights:
    """Load a LoRA from a safetensors file or an in-memory state dict."""
    if isinstance(source, Path):
        _read_shapes(source)
        from safetensors.torch import load_file

        tensors = load_file(str(source))
    else:
        tensors = dict(source)
    fmt, groups = _group({key: tuple(value.shape) for key, value in tensors.items()})
    layers = []
    for (component, module), parts in sorted(groups.items()):
        down, up = tensors[parts["down"]], tensors[parts["up"]]
        _check_pair(module, tuple(down.shape), tuple(up.shape))
        alpha = float(tensors[parts["alpha"]].item()) if "alpha" in parts else None
        layers.append(LoRALayer(component, module, down, up, alpha))
    return LoRAWeights(format=fmt, layers=tuple(layers))


def _module_table(
    unet: nn.Module, text_encoder: nn.Module
) -> dict[tuple[Component, str], nn.Module]:
    table: dict[tuple[Component, str], nn.Module] = {}
    for component, model in (("unet", unet), ("text_encoder", text_encoder)):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                table[(component, _flatten(name))] = module  # type: ignore[index]
    return table


@contextmanager
def merged_lora(
    unet: nn.Module, text_encoder: nn.Module, lora: LoRAWeights, multiplier: float
) -> Iterator[None]:
    """Merge a LoRA into the weights for the duration of the block, then restore them exactly.

    Args:
        unet: the pipeline's UNet (weights changed in place, restored on exit).
        text_encoder: the pipeline's CLIP text encoder (same).
        lora: parsed LoRA.
        multiplier: style strength (FaceChain's `multiplier_style`, typically 0.15-0.8).
    """
    table = _module_table(unet, text_encoder)
    targets = []
    for layer in lora.layers:
        module = table.get((layer.component, layer.module))
        if module is None:
            raise InvalidLoRA(f"{layer.component} has no module {layer.module!r}")
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        _check_target(
            layer.module, tuple(layer.down.shape), tuple(layer.up.shape), tuple(weight.shape)
        )
        targets.append((layer, weight))
    # Everything is validated above, so a bad file leaves the weights untouched.
    backups: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer, weight in targets:
                backups.append((weight, weight.detach().clone()))
                delta = layer.delta(multiplier, weight.device).reshape(weight.shape)
                weight.copy_((weight.float() + delta).to(weight.dtype))
        logger.debug(
            "merged %s LoRA into %d modules (x%.2f)", lora.format, len(targets), multiplier
        )
        yield
    finally:
        with torch.no_grad():
            for weight, backup in reversed(backups):
                weight.copy_(backup)
