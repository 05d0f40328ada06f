"""README's configuration table names every setting, so operators can find each knob."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from core import settings as S

README = Path(__file__).resolve().parents[2] / "README.md"


def env_names() -> list[str]:
    """The environment variable of every field of every settings class."""
    names = []
    for cls in vars(S).values():
        if not (isinstance(cls, type) and issubclass(cls, BaseSettings)) or cls is BaseSettings:
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for name, field in cls.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                continue  # a nested concern, listed by its own class
            alias = field.validation_alias
            names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return sorted(set(names))


def config_table() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def test_there_are_settings_to_check() -> None:
    assert len(env_names()) > 40
    assert "ENGINE_SIMILARITY_FLOOR" in env_names()


@pytest.mark.parametrize("name", env_names())
def test_setting_is_in_readme_table(name: str) -> None:
    rows = [line for line in config_table().splitlines() if line.startswith("|")]
    assert any(re.search(rf"`{name}`", row) for row in rows), f"{name} missing from README"
