"""Babel extraction method for the bot's text keys (``pybabel extract``; docs/BOT.md, "Texts").

Babel's own Python extractor finds ``_("Some text")``; this code names texts by key, so the
method here reads a module's syntax tree and yields:

- the literal key of every ``t``/``translate`` call (a plain text) and ``nt``/``ntranslate``
  call (a counted one: msgid and msgid_plural are both the key);
- with the ``literals`` option, every other string shaped like a key of a namespace en.po knows
  (``"admin.pack_on" if enabled else "admin.pack_off"``, keys chosen into a table first);
- for an f-string shaped like a key (``f"kind.{row.kind.value}"``), every key of en.po it can
  produce, since the values come from a closed set (a test checks each value has its text);
- with each key, the counted pieces en.po has under it (``error.credits_needed.price``:
  `i18n.error_text` says a count detail through ``error.<code>.<detail>``).

A key is counted when it is said with ``nt``/``ntranslate`` or is a plural entry in en.po."""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator, Mapping
from functools import cache
from typing import IO, Any

from telegram_ui import i18n

KEY_SHAPE = re.compile(r"^[a-z0-9_]+\.[a-z0-9_.]+$")
# Where the key is among each function's arguments (0-based).
PLAIN_CALLS = {"t": 0, "translate": 1}
COUNTED_CALLS = {"nt": 0, "ntranslate": 1}

Extracted = tuple[int, str, str | tuple[str, str], list[str]]


@cache
def _known() -> tuple[frozenset[str], frozenset[str]]:
    keys = frozenset(i18n.forms(i18n.DEFAULT_LANGUAGE))
    return keys, frozenset(k.split(".")[0] for k in keys)


def _called_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _entries(lineno: int, key: str, counted: bool) -> Iterator[Extracted]:
    # Babel's default keywords: gettext takes one msgid, ngettext a msgid and a msgid_plural.
    if counted or i18n.is_counted(key):
        yield lineno, "ngettext", (key, key), []
    else:
        yield lineno, "gettext", key, []
    for piece in sorted(k for k in _known()[0] if k.startswith(f"{key}.")):
        yield from _entries(lineno, piece, False)


def _fstring_pattern(node: ast.JoinedStr) -> re.Pattern[str] | None:
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            parts.append(re.escape(value.value))
        else:
            parts.append("[a-z0-9_]+")
    pattern = "".join(parts)
    first = node.values[0]
    if not (isinstance(first, ast.Constant) and re.match(r"^[a-z0-9_]+\.", str(first.value))):
        return None
    return re.compile(f"^{pattern}$")


def keys_in_source(source: str, *, literals: bool) -> Iterator[Extracted]:
    """The text keys one module uses (see the module docstring)."""
    known, namespaces = _known()
    tree = ast.parse(source)
    in_calls: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _called_name(node)
        for table, counted in ((PLAIN_CALLS, False), (COUNTED_CALLS, True)):
            if name not in table or len(node.args) <= table[name]:
                continue
            arg = node.args[table[name]]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                in_calls.add(id(arg))
                yield from _entries(arg.lineno, arg.value, counted)
    # The literal pieces of an f-string ("pay.refused." of f"pay.refused.{reason}") are no keys.
    in_fstrings = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            pattern = _fstring_pattern(node)
            if pattern is not None:
                for key in sorted(known):
                    if pattern.match(key):
                        yield from _entries(node.lineno, key, False)
        elif (
            literals
            and isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in in_calls
            and id(node) not in in_fstrings
            and KEY_SHAPE.match(node.value)
            and node.value.split(".")[0] in namespaces
        ):
            yield from _entries(node.lineno, node.value, False)


def extract_keys(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[Extracted]:
    """Babel extraction method (``method = "telegram_ui.i18n_extract:extract_keys"``)."""
    literals = str(options.get("literals", "false")).lower() == "true"
    source = fileobj.read().decode(str(options.get("encoding", "utf-8")))
    yield from keys_in_source(source, literals=literals)
