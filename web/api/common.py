"""Helpers shared by the resource modules: pages of rows and upload checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from core.errors import UnsafeImage
from domain import safety
from web.http import Call, UnsupportedMediaType
from web.keys import METRICS, SCREEN
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


async def screen_sample(call: Call, data: bytes) -> None:
    """The safety check of an admin's catalog image (a style's sample image, a template photo);
    UnsafeImage (422) when flagged, and nothing of the upload is stored (an audit row and a
    `safety.flagged` event record it)."""
    screen = call.app[SCREEN]
    if screen is None:
        return
    verdict = await asyncio.to_thread(screen.check, data)
    call.app[METRICS].record_safety("sample", checked=1, flagged=int(verdict.flagged))
    if not verdict.flagged:
        return
    await call.transact(
        safety.record_flagged, None, "sample", [verdict.score], call.config.safety.alert_after
    )
    raise UnsafeImage("the sample image was flagged by the safety checker", kind="sample")


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
