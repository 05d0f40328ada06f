"""Every typed error a user can meet has a message in every language."""

from __future__ import annotations

import importlib
import inspect

import pytest

from core.errors import AppError
from facechain.errors import FaceChainError
from telegram_ui.i18n import LANGUAGES, catalog, error_text

ERROR_MODULES = [
    "facechain.errors",
    "facechain.training.errors",
    "core.errors",
]
# Raised only at startup to the operator's terminal, never to a chat user.
OPERATOR_ONLY = {"config"}


def user_facing_codes() -> set[str]:
    codes = set()
    for name in ERROR_MODULES:
        for obj in vars(importlib.import_module(name)).values():
            if inspect.isclass(obj) and issubclass(obj, AppError | FaceChainError):
                codes.add(obj.code)
    return codes - OPERATOR_ONLY


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_error_code_is_translated(language: str) -> None:
    missing = sorted(c for c in user_facing_codes() if f"error.{c}" not in catalog(language))
    assert missing == []


def test_unknown_code_falls_back_to_internal() -> None:
    assert error_text("ru", "no_such_code") == catalog("ru")["error.internal"]
