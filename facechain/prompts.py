"""FaceChain's txt2img prompt templates and default negative prompt (reference §3).

Weights such as `(nsfw:2)` are passed to CLIP as literal text, as FaceChain does with diffusers.
The subject table (FairFace gender/age -> "a handsome man, " …) is reference/annotators §2.4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

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


# FaceChain's subject words (reference §2.4, inference_fact.py), chosen from FairFace's gender
# and age, or by the user. `Subject` names FaceChain's `attr_idx` 0..5 in order.
Subject = Literal["boy", "girl", "man", "woman", "mature_man", "mature_woman"]
SUBJECTS: tuple[Subject, ...] = ("boy", "girl", "man", "woman", "mature_man", "mature_woman")
SUBJECT_WORDS: dict[Subject, str] = {
    "boy": "a boy, children, ",
    "girl": "a girl, children, ",
    "man": "a handsome man, ",
    "woman": "a beautiful woman, ",
    "mature_man": "a mature man, ",
    "mature_woman": "a mature woman, ",
}
# Age phrase of a "handsome man" for FairFace age buckets 2, 3, 4 (10-19, 20-29, 30-39);
# FaceChain suppresses it for every other subject.
AGE_PHRASES = ("20-year-old, ", "25-year-old, ", "35-year-old, ")
# Adult men push "children" away (FaceChain's attr_idx 2 and 4).
CHILDREN_SUFFIX = ", children"
_NEGATIVE_SUFFIX: dict[Subject, str] = {"man": CHILDREN_SUFFIX, "mature_man": CHILDREN_SUFFIX}
_GENDERS = 2
_AGE_BUCKETS = 9


@dataclass(frozen=True)
class SubjectPrompt:
    """Who the picture shows: words put before the prompt and appended to the negative.

    `prefix` is the subject words plus the age phrase (FaceChain: positive = prefix + age phrase
    + prompt); `negative_suffix` goes after the negative prompt (negative = user's + suffix).
    """

    subject: Subject
    prefix: str
    negative_suffix: str
    age_phrase: str = ""


def is_subject(value: object) -> TypeGuard[Subject]:
    """Whether a stored or received value names a subject."""
    return isinstance(value, str) and value in SUBJECT_WORDS


def subject_prompt(subject: Subject, age_phrase: str = "") -> SubjectPrompt:
    """The prompt parts of a subject; only "man" takes an age phrase (one of AGE_PHRASES).

    A user's own choice comes without an age phrase: it says who, not how old, and FaceChain's
    phrase is a measured age bucket.
    """
    if not is_subject(subject):
        raise ValueError(f"unknown subject {subject!r}")
    if age_phrase and (subject != "man" or age_phrase not in AGE_PHRASES):
        raise ValueError(f"age phrase {age_phrase!r} does not apply to {subject!r}")
    return SubjectPrompt(
        subject=subject,
        prefix=SUBJECT_WORDS[subject] + age_phrase,
        negative_suffix=_NEGATIVE_SUFFIX.get(subject, ""),
        age_phrase=age_phrase,
    )


def subject_from_prediction(gender_idx: int, age_idx: int) -> SubjectPrompt:
    """FaceChain's mapping from FairFace's argmax gender (0 Male, 1 Female) and age (0..8).

    Ages 0-9 -> boy / girl; 10-39 -> man (with "20/25/35-year-old") / woman; 40+ -> mature.
    """
    if not 0 <= gender_idx < _GENDERS or not 0 <= age_idx < _AGE_BUCKETS:
        raise ValueError(f"gender {gender_idx} / age bucket {age_idx} out of range")
    male = gender_idx == 0
    if age_idx < 2:
        return subject_prompt("boy" if male else "girl")
    if age_idx > 4:
        return subject_prompt("mature_man" if male else "mature_woman")
    if male:
        return subject_prompt("man", AGE_PHRASES[age_idx - 2])
    return subject_prompt("woman")
