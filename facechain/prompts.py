"""FaceChain's txt2img prompt templates and default negative prompt (reference §3).

Weights such as `(nsfw:2)` are passed to CLIP as literal text, as FaceChain does with diffusers.
"""

from __future__ import annotations

from typing import Literal

Template = Literal["cloth", "style"]

CLOTH_TEMPLATE = (
    "raw photo, masterpiece, chinese, {}, solo, medium shot, high detail face, looking straight "
    "into the camera with shoulders parallel to the frame, photorealistic, best quality"
)
STYLE_TEMPLATE = (
    "{}, upper_body, raw photo, masterpiece, solo, medium shot, high detail face, "
    "photorealistic, best quality"
)
DEFAULT_NEGATIVE = (
    "(nsfw:2), paintings, sketches, (worst quality:2), (low quality:2), lowers, normal quality, "
    "((monochrome)), ((grayscale)), logo, word, character, bad hand, tattoo, "
    "(username, watermark, signature, time signature, timestamp, artist name, copyright name, "
    "copyright),low res, "
    "((monochrome)), ((grayscale)), skin spots, acnes, skin blemishes, age spot, glans, extra "
    "fingers, fewer fingers, strange fingers, bad hand, mole, ((extra legs)), ((extra hands))"
)
TEMPLATES: dict[Template, str] = {"cloth": CLOTH_TEMPLATE, "style": STYLE_TEMPLATE}


def build_prompt(fragment: str, template: Template, prefix: str = "") -> str:
    """Positive prompt: optional subject prefix (FaceChain's FairFace hook) + filled template."""
    return prefix + TEMPLATES[template].format(fragment)
