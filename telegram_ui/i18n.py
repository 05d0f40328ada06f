"""Translations: gettext catalogs (one .po per language, compiled with Babel), looked up by keys.

Every user-visible string lives in telegram_ui/locales/<lang>/LC_MESSAGES/messages.po (English,
Russian, Chinese). The msgids are stable keys (``msgid "btn.cancel"``), not English sentences;
en.po holds the English texts as its msgstrs. Keys because about 170 call sites and the error
codes of `AppError` and facechain errors (``error.<code>``) name texts by key, so a failed job maps
to a readable message; because rewording an English text then leaves the Russian and Chinese
entries matched (with English msgids every edit of the English would orphan or fuzz them); and
because the same English words can be two texts that other languages translate differently.

A counted text ("1 credit", "5 credits") is a plural entry: ``msgid_plural`` is the key again and
there is one msgstr per plural form of the language, picked by gettext's ``ngettext`` through
the catalog's Plural-Forms header, which is CLDR's rule as Babel's locale data writes it
(English 2 forms: one, other; Russian 3: one for 1, 21, 31…, few for 2–4, 22–24…, many for 0,
5–20, 25…; Chinese 1). `ntranslate(lang, key, count, **params)` says them; the count is the
text's ``{count}``. A sentence with two counts takes each as a counted piece (its own entry,
formatted first and passed in as a parameter). Placeholders are str.format names, the same in
every language and every form (a test checks, and that each counted entry has every form its
language needs).

The .po files are compiled when a language is first used (Babel's ``write_mo`` in memory, read by
the standard library's ``GNUTranslations``): no .mo files are kept, so a fresh clone needs no
build step and no compiled file can go stale. Extraction from the code: docs/BOT.md
("Texts")."""

from __future__ import annotations

import gettext
import logging
from functools import cache
from io import BytesIO
from pathlib import Path

from babel import Locale
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

logger = logging.getLogger(__name__)

LOCALES_DIR = Path(__file__).parent / "locales"
DOMAIN = "messages"
LANGUAGES = ("en", "ru", "zh")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "ru": "Русский", "zh": "中文"}
# A count in the middle of the most general plural form of every language (en other, ru many).
GENERAL_COUNT = 5


def po_path(language: str) -> Path:
    """The .po catalog of one language."""
    return LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@cache
def po_catalog(language: str) -> Catalog:
    """The parsed .po catalog of one language (Babel's `Catalog`)."""
    with po_path(language).open("rb") as fh:
        return read_po(fh, locale=language, domain=DOMAIN)


@cache
def _translations(language: str) -> gettext.GNUTranslations:
    mo = BytesIO()
    write_mo(mo, po_catalog(language))
    mo.seek(0)
    return gettext.GNUTranslations(mo)


@cache
def forms(language: str) -> dict[str, tuple[str, ...]]:
    """key → its texts: one for a plain text, one per plural form for a counted one."""
    entries: dict[str, tuple[str, ...]] = {}
    for message in po_catalog(language):
        if not message.id:
            continue  # the header
        if isinstance(message.id, tuple | list):
            entries[message.id[0]] = tuple(message.string or ())
        else:
            entries[message.id] = (str(message.string or ""),)
    return entries


def counted_forms(language: str | None, key: str) -> tuple[str, ...]:
    """Every form of counted text `key` in `language`, in the order of `plural_categories`
    (the catalog test holds every language to its number of forms); `{count}` left in for the
    one who picks a form. KeyError for a key that is not a counted text."""
    if not is_counted(key):
        raise KeyError(f"{key} is not a counted text")
    return forms(normalize_language(language))[key]


@cache
def plural_categories(language: str) -> tuple[str, ...]:
    """The CLDR plural category of each gettext form of `language`, in form order (en: one,
    other; ru: one, few, many; zh: other): what a client holding a counted text's forms (the
    Mini App) matches `Intl.PluralRules(language).select(n)` against. Read off the catalog's
    own Plural-Forms and Babel's CLDR rule on whole numbers, so the two cannot disagree."""
    lang = normalize_language(language)
    rule = Locale.parse(lang).plural_form
    choose = _translations(lang).plural  # type: ignore[attr-defined]
    by_form: dict[int, str] = {}
    for n in range(1000):
        by_form.setdefault(int(choose(n)), rule(n))
    return tuple(by_form[i] for i in sorted(by_form))


@cache
def counted_keys() -> frozenset[str]:
    """The keys of counted texts (plural entries), said with `ntranslate`."""
    return frozenset(
        str(m.id[0]) for m in po_catalog(DEFAULT_LANGUAGE) if isinstance(m.id, tuple | list)
    )


def is_counted(key: str) -> bool:
    """Whether `key` is a counted text (`ntranslate`) rather than a plain one (`translate`)."""
    return key in counted_keys()


@cache
def catalog(language: str) -> dict[str, str]:
    """key → text of one language; a counted text gives its most general form (`forms` has all)."""
    return {
        key: _general(language, key) if is_counted(key) else texts[0]
        for key, texts in forms(language).items()
    }


def _general(language: str, key: str) -> str:
    return _translations(language).ngettext(key, key, GENERAL_COUNT)


def normalize_language(code: str | None) -> str:
    """Map a Telegram language_code ('ru', 'zh-hans', 'en-US', None) to a supported language."""
    if not code:
        return DEFAULT_LANGUAGE
    base = code.lower().replace("_", "-").split("-")[0]
    return base if base in LANGUAGES else DEFAULT_LANGUAGE


def _format(text: str, key: str, language: str, params: dict[str, object]) -> str:
    try:
        return text.format(**params) if params else text
    except (KeyError, IndexError, ValueError):
        logger.exception("bad placeholders for %s in %s", key, language)
        return text


def translate(language: str | None, key: str, **params: object) -> str:
    """The text for `key` in `language` (falling back to English), formatted with params."""
    lang = normalize_language(language)
    if is_counted(key):
        # A counted text needs its count; say the general form rather than nothing.
        logger.error("counted text %s translated without a count: use ntranslate", key)
        return ntranslate(lang, key, GENERAL_COUNT, **params)
    # gettext answers the msgid itself for a key it does not hold (a text never is its key).
    text = _translations(lang).gettext(key)
    if text == key:
        text = _translations(DEFAULT_LANGUAGE).gettext(key)
        if text == key:
            logger.error("missing translation key %s", key)
            return key
    return _format(text, key, lang, params)


def ntranslate(language: str | None, key: str, count: int, **params: object) -> str:
    """The form of counted text `key` for `count` in `language`, formatted with count and params.

    The plural rule is the language's (English: one for 1; Russian: one for 1, 21…, few for 2–4,
    22–24…, many for the rest; Chinese: one form); the count fills ``{count}``."""
    lang = normalize_language(language)
    text = _translations(lang).ngettext(key, key, count)
    if text == key:
        text = _translations(DEFAULT_LANGUAGE).ngettext(key, key, count)
        if text == key:
            logger.error("missing translation key %s", key)
            return key
    return _format(text, key, lang, {"count": count, **params})


def error_text(language: str | None, code: str | None, /, **details: object) -> str:
    """A readable message for an error code (job failures, typed errors with their details).

    A detail that is a count is said through its counted piece ``error.<code>.<detail>`` when
    the catalog has one ("3 credits"), else as it is."""
    key = f"error.{code or 'internal'}"
    if key not in forms(DEFAULT_LANGUAGE):
        key = "error.internal"
    params = {
        name: (
            ntranslate(language, f"{key}.{name}", value)
            if isinstance(value, int) and is_counted(f"{key}.{name}")
            else value
        )
        for name, value in details.items()
    }
    return translate(language, key, **params)


def safety_alert_text(user_id: int, count: int, kind: str) -> str:
    """The admin chat's notice that one user's pictures were flagged repeatedly (English)."""
    return ntranslate(DEFAULT_LANGUAGE, "admin.safety_alert", count, user=user_id, kind=kind)
