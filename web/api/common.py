"""Helpers shared by the resource modules: pages of rows and upload checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from web.http import UnsupportedMediaType
from web.schemas import Page, PageQuery

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
LORA_TYPES = ("application/octet-stream",)

R = TypeVar("R")


def page_of(
    model: type[BaseModel],
    rows: Sequence[R],
    total: int,
    q: PageQuery,
    present: Callable[[R], Any] | None = None,
) -> BaseModel:
    """A `Page[model]` of rows (each through `present`, else validated from its attributes)."""
    convert = present or model.model_validate
    return Page[model](  # type: ignore[valid-type]
        items=[convert(r) for r in rows], total=total, limit=q.limit, offset=q.offset
    )


def check_image(upload_type: str, data: bytes, what: str) -> None:
    """Cheap type check before decoding: declared type and magic bytes of JPEG/PNG/WebP."""
    magic_ok = (
        data.startswith(b"\xff\xd8\xff")
        or data.startswith(b"\x89PNG\r\n\x1a\n")
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
    )
    if upload_type.split(";")[0].strip() not in (*IMAGE_TYPES, "application/octet-stream"):
        raise UnsupportedMediaType(f"{what} must be JPEG, PNG or WebP", content_type=upload_type)
    if not magic_ok:
        raise UnsupportedMediaType(f"{what} is not a JPEG, PNG or WebP file")
