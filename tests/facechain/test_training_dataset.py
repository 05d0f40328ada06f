"""Training-set checks before any GPU time: counts, decoding, duplicates, variety, captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from facechain.training import (
    DatasetLimits,
    DuplicateImages,
    InvalidTriggerWord,
    NotEnoughVariety,
    TooFewImages,
    TooManyImages,
    UnreadableImage,
    derive_style_prompt,
    prepare_dataset,
)
from facechain.training.captions import build_caption
from facechain.training.dataset import center_crop_resize
from tests.facechain.face_data import PORTRAITS, encode, fixture_bytes, fixture_rgb, landscape_rgb


def portraits() -> list[bytes]:
    return [fixture_bytes(name) for name in PORTRAITS]


class TestCounts:
    def test_too_few(self) -> None:
        with pytest.raises(TooFewImages, match="4 images given, at least 5") as info:
            prepare_dataset(portraits()[:4], trigger_word="sty")
        assert info.value.code == "training_too_few_images"

    def test_too_many(self) -> None:
        with pytest.raises(TooManyImages, match="at most 5"):
            prepare_dataset(
                portraits(), trigger_word="sty", limits=DatasetLimits(min_images=2, max_images=5)
            )


class TestContent:
    def test_non_image_is_named(self) -> None:
        images = portraits()
        images[2] = b"%PDF-1.4 not a picture"
        with pytest.raises(UnreadableImage, match="image 3 cannot be used") as info:
            prepare_dataset(images, trigger_word="sty")
        assert info.value.indices == [2]
        assert info.value.code == "training_not_an_image"

    def test_same_file_twice(self) -> None:
        images = [*portraits(), fixture_bytes("man_pose2")]
        with pytest.raises(DuplicateImages, match="images 2 and 7 are the same file") as info:
            prepare_dataset(images, trigger_word="sty")
        assert info.value.indices == [1, 6]

    def test_near_copies_do_not_count_as_variety(self) -> None:
        base = Image.fromarray(fixture_rgb("woman_pose1"))
        copies = [encode(base, "JPEG", quality=q) for q in (95, 70, 50)] + [
            encode(base.resize((300, 300))),
            encode(ImageEnhance.Brightness(base).enhance(1.15)),
        ]
        with pytest.raises(NotEnoughVariety, match="only 1 of the 5 images") as info:
            prepare_dataset(copies, trigger_word="sty")
        assert info.value.indices == [0, 1, 2, 3, 4]
        assert info.value.code == "training_no_variety"

    def test_some_near_copies_are_fine_when_enough_differ(self) -> None:
        images = [*portraits(), encode(Image.fromarray(fixture_rgb("man_pose1")), "JPEG")]
        dataset = prepare_dataset(images, trigger_word="sty")
        assert len(dataset) == 7
        assert dataset.distinct_images == 6

    def test_blank_image(self) -> None:
        images = portraits()
        images[0] = encode(np.full((600, 600, 3), 128, np.uint8))
        with pytest.raises(NotEnoughVariety, match="image 1 is blank"):
            prepare_dataset(images, trigger_word="sty")

    @pytest.mark.parametrize("trigger", ["", "   ", "a,b", "x" * 65])
    def test_trigger_word_required_and_clean(self, trigger: str) -> None:
        with pytest.raises(InvalidTriggerWord):
            prepare_dataset(portraits(), trigger_word=trigger)


class TestPreprocessing:
    def test_short_side_to_resolution_then_centre_crop(self) -> None:
        wide = Image.fromarray(landscape_rgb(640, 480))
        crop = center_crop_resize(wide, 64)
        assert crop.size == (64, 64)
        expected = wide.resize((85, 64), Image.Resampling.LANCZOS).crop((10, 0, 74, 64))
        assert np.array_equal(np.asarray(crop), np.asarray(expected))

    def test_dataset_images_captions_and_prompt(self) -> None:
        images = [*portraits()[:5], encode(landscape_rgb(900, 500))]
        captions = ["red dress, studio", "red dress", None, "red dress, 1girl", "", "outdoor"]
        dataset = prepare_dataset(
            images, trigger_word=" neon  look ", captions=captions, resolution=128
        )
        assert dataset.trigger_word == "neon look"
        assert all(
            ex.image.size == (128, 128) and ex.image.mode == "RGB" for ex in dataset.examples
        )
        assert [ex.caption for ex in dataset.examples] == [
            "neon look, red dress, studio",
            "neon look, red dress",
            "neon look",
            "neon look, red dress, 1girl",
            "neon look",
            "neon look, outdoor",
        ]
        # Only the trigger is in more than half of the captions ("red dress": 3 of 6).
        assert dataset.style_prompt == "neon look"
        assert len(dataset.fingerprint) == 64

    def test_tagger_hook(self) -> None:
        dataset = prepare_dataset(
            portraits(), trigger_word="sty", tagger=lambda image: ["portrait", "smile (happy)"]
        )
        assert dataset.examples[0].caption == r"sty, portrait, smile \(happy\)"
        assert dataset.style_prompt == r"sty, portrait, smile \(happy\)"


class TestStylePrompt:
    def test_majority_tags_minus_template_words_in_first_seen_order(self) -> None:
        captions = [
            build_caption("ink", ["hanfu", "1girl", "masterpiece", "mountain"]),
            build_caption("ink", ["mountain", "hanfu", "solo"]),
            build_caption("ink", ["hanfu", "river", "1girl", "mountain"]),
        ]
        assert derive_style_prompt(captions) == "ink, hanfu, mountain"
        assert derive_style_prompt([]) == ""
