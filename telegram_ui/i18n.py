"""Translations: one JSON catalog per language in telegram_ui/locales/, looked up by stable keys.

Every user-visible string lives in the catalogs (English, Russian, Chinese); a test checks that
each key exists in every language with the same placeholders. Error codes of `AppError` and
facechain errors are keys too (`error.<code>`), so a job's failure maps to a readable message."""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).parent / "locales"
LANGUAGES = ("en", "ru", "zh")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "ru": "Русский", "zh": "中文"}


@cache
def catalog(language: str) -> dict[str, str]:
    """The key → text mapping of one language."""
    with (LOCALES_DIR / f"{language}.json").open(encoding="utf-8") as fh:
        data: dict[str, str] = json.load(fh)
    return data


def normalize_language(code: str | None) -> str:
    """Map a Telegram language_code ('ru', 'zh-hans', 'en-US', None) to a supported language."""
    if not code:
        return DEFAULT_LANGUAGE
    base = code.lower().replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else DEFAULT_LANGUAGE


def translate(language: str | None, key: str, **params: object) -> str:
    """The text for `key` in `language` (falling back to English), formatted with params."""
    lang = normalize_language(language)
    text = catalog(lang).get(key)
    if text is None:
        text = catalog(DEFAULT_LANGUAGE).get(key)
        if text is None:
            logger.error("missing translation key %s", key)
            return key
    try:
        return text.format(**params) if params else text
    except (KeyError, IndexError, ValueError):
        logger.exception("bad placeholders for %s in %s", key, lang)
        return text


def error_text(language: str | None, code: str | None) -> str:
    """A readable message for an error code (job failures, typed errors)."""
    key = f"error.{code or 'internal'}"
    if key not in catalog(DEFAULT_LANGUAGE):
        key = "error.internal"
    return translate(language, key)


def safety_alert_text(user_id: int, count: int, kind: str) -> str:
    """The admin chat's notice that one user's pictures were flagged repeatedly (English)."""
    return translate(DEFAULT_LANGUAGE, "admin.safety_alert", user=user_id, count=count, kind=kind)
