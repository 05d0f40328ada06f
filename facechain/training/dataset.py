"""Checks and preprocessing of style-training images, all on the CPU before any GPU time.

Refused with a reason: too few or too many images, bytes that are not an image, the same file
twice (sha256), blank pictures, and sets without enough distinct pictures (near-identical
images found by a 64-bit difference hash). Accepted images get their short side scaled to the
training resolution and are centre-cropped square, as FaceChain's training tab does (§7).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from facechain.errors import FaceChainError
from facechain.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image
from facechain.training.captions import (
    Tagger,
    build_caption,
    derive_style_prompt,
    escape_tag,
    normalise_trigger,
)
from facechain.training.errors import (
    DuplicateImages,
    InvalidTriggerWord,
    NotEnoughVariety,
    TooFewImages,
    TooManyImages,
    UnreadableImage,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds on a training set (the service fills them from LimitsSettings)."""

    min_images: int = 5
    max_images: int = 50
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Two images whose 64-bit difference hashes differ in at most this many bits are the same
    # picture. Measured on the fixtures and catalog thumbnails: JPEG q40, half size, +20 %
    # brightness or a 4 % crop moved the hash by at most 6 bits; 81 distinct photos by 9+.
    near_duplicate_bits: int = 6
    # Grey-level standard deviation (0-255) under which an image is a flat colour.
    min_contrast: float = 3.0


@dataclass(frozen=True)
class TrainingExample:
    """One preprocessed image: square RGB at the training resolution, and its caption."""

    image: Image.Image
    caption: str
    sha256: str


@dataclass(frozen=True)
class StyleDataset:
    """A checked, captioned training set and the style prompt derived from its captions."""

    examples: list[TrainingExample]
    trigger_word: str
    style_prompt: str
    resolution: int
    distinct_images: int = field(default=0)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def fingerprint(self) -> str:
        """Stable id of the exact training inputs (checkpoints are only resumed on a match)."""
        digest = hashlib.sha256(f"{self.resolution}".encode())
        for ex in self.examples:
            digest.update(ex.sha256.encode())
            digest.update(ex.caption.encode("utf-8"))
        return digest.hexdigest()


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: signs of horizontal gradients on a 9x8 grey thumbnail."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Short side to `resolution` (LANCZOS), then a centred square crop."""
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    left = (size[0] - resolution) // 2
    top = (size[1] - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def _clusters(hashes: Sequence[int], max_bits: int) -> list[list[int]]:
    """Groups of near-identical images (union-find over pairs within `max_bits`)."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if hamming(hashes[i], hashes[j]) <= max_bits:
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def prepare_dataset(
    images: Sequence[bytes],
    *,
    trigger_word: str,
    captions: Sequence[str | None] | None = None,
    resolution: int = 512,
    limits: DatasetLimits | None = None,
    tagger: Tagger | None = None,
) -> StyleDataset:
    """Check, crop and caption training images.

    Args:
        images: encoded images (JPEG, PNG, WebP, ...), 5-50 by default.
        trigger_word: the word that invokes the style; first tag of every caption.
        captions: optional user captions, one per image (None or "" for none).
        resolution: side of the square training crops (512 for SD1.5).
        limits: count, size and similarity bounds.
        tagger: optional image tagger (DeepDanbooru in FaceChain); its tags are used for
            images without a user caption.

    Raises:
        DatasetRejected (a subclass naming the reason and the offending image indices).
    """
    limits = limits or DatasetLimits()
    try:
        trigger = normalise_trigger(trigger_word)
    except ValueError as exc:
        raise InvalidTriggerWord(str(exc)) from None
    count = len(images)
    if count < limits.min_images:
        raise TooFewImages(f"{count} images given, at least {limits.min_images} are needed")
    if count > limits.max_images:
        raise TooManyImages(f"{count} images given, at most {limits.max_images} are accepted")
    if captions is not None and len(captions) != count:
        raise ValueError(f"{len(captions)} captions for {count} images")

    digests = [hashlib.sha256(data).hexdigest() for data in images]
    seen: dict[str, int] = {}
    for i, digest in enumerate(digests):
        if digest in seen:
            raise DuplicateImages(
                f"images {seen[digest] + 1} and {i + 1} are the same file", [seen[digest], i]
            )
        seen[digest] = i

    crops: list[Image.Image] = []
    for i, data in enumerate(images):
        try:
            decoded = load_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
        except FaceChainError as exc:
            raise UnreadableImage(f"image {i + 1} cannot be used: {exc}", [i]) from None
        crop = center_crop_resize(decoded, resolution)
        if float(np.asarray(crop.convert("L"), np.float32).std()) < limits.min_contrast:
            raise NotEnoughVariety(f"image {i + 1} is blank (a single flat colour)", [i])
        crops.append(crop)

    hashes = [difference_hash(c) for c in crops]
    groups = _clusters(hashes, limits.near_duplicate_bits)
    if len(groups) < limits.min_images:
        repeated = sorted(i for g in groups if len(g) > 1 for i in g)
        raise NotEnoughVariety(
            f"only {len(groups)} of the {count} images are different pictures; "
            f"at least {limits.min_images} distinct ones are needed",
            repeated,
        )
    if len(groups) < count:
        logger.info("%d near-identical images among %d", count - len(groups), count)

    examples = []
    for i, crop in enumerate(crops):
        tags = [escape_tag(t) for t in tagger(crop)] if tagger is not None else []
        user = captions[i] if captions is not None else None
        examples.append(
            TrainingExample(
                image=crop, caption=build_caption(trigger, tags, user), sha256=digests[i]
            )
        )
    style_prompt = derive_style_prompt([e.caption for e in examples])
    return StyleDataset(
        examples=examples,
        trigger_word=trigger,
        style_prompt=style_prompt,
        resolution=resolution,
        distinct_images=len(groups),
    )
