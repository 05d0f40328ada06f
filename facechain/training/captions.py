"""Captions for style training and the style prompt derived from them (reference §7).

FaceChain tags every training image with DeepDanbooru (`ly261666/cv_portrait_model` v4.0,
`model-resnet_custom_v3.pt`): tags with p >= 0.7, `rating:*` dropped, sorted, parentheses
escaped, and the caption is "trigger, tag, tag, ...". No tagger model is available offline here,
so by default a caption is the trigger word plus the user's own caption when given. A tagger can
be plugged in through the `Tagger` protocol: any callable from an RGB image to a tag list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from PIL import Image

# Tags FaceChain removes from the derived style prompt: the style template already says them.
STYLE_PROMPT_EXCLUDED = frozenset(
    {
        "upper_body",
        "raw photo",
        "masterpiece",
        "solo",
        "medium shot",
        "high detail face",
        "photorealistic",
        "best quality",
        "1girl",
    }
)
DEEPDANBOORU_THRESHOLD = 0.7
MAX_TRIGGER_CHARS = 64
MAX_CAPTION_CHARS = 400


class Tagger(Protocol):
    """Image tagger hook (DeepDanbooru in FaceChain): tags for one RGB image."""

    def __call__(self, image: Image.Image) -> Sequence[str]: ...


def escape_tag(tag: str) -> str:
    """Escape parentheses as FaceChain does, so prompt weighting syntax is not triggered."""
    return tag.replace("(", r"\(").replace(")", r"\)")


def split_caption(caption: str) -> list[str]:
    """A caption's comma-separated tags, stripped, empty ones dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def normalise_trigger(trigger_word: str) -> str:
    """The trigger word, whitespace collapsed; ValueError when unusable."""
    trigger = re.sub(r"\s+", " ", trigger_word).strip()
    if not trigger:
        raise ValueError("a trigger word is required")
    if len(trigger) > MAX_TRIGGER_CHARS:
        raise ValueError(f"the trigger word is longer than {MAX_TRIGGER_CHARS} characters")
    if "," in trigger:
        raise ValueError("the trigger word must not contain commas")
    return trigger


def build_caption(trigger: str, tags: Iterable[str] = (), user_caption: str | None = None) -> str:
    """ "trigger" or "trigger, tags"; a user caption takes the place of the tagger's tags."""
    parts = [trigger]
    if user_caption and user_caption.strip():
        parts.extend(t for t in split_caption(user_caption) if t != trigger)
    else:
        parts.extend(t for t in tags if t != trigger)
    return ", ".join(parts)[:MAX_CAPTION_CHARS]


def derive_style_prompt(captions: Sequence[str]) -> str:
    """Tags present in more than half of the captions, minus the template's own words.

    First-seen order, so the trigger word (first in every caption) comes first.
    """
    if not captions:
        return ""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in dict.fromkeys(split_caption(caption)):
            counts[tag] = counts.get(tag, 0) + 1
    half = len(captions) / 2
    return ", ".join(
        tag for tag, n in counts.items() if n > half and tag not in STYLE_PROMPT_EXCLUDED
    )
