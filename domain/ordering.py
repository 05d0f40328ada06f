"""Catalog ordering shared by styles and templates: move some items to the front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from core.errors import NotFound, ValidationFailed


class Positioned(Protocol):
    id: int
    position: int


P = TypeVar("P", bound=Positioned)


def put_first(current: Sequence[P], ids: Sequence[int], kind: str) -> list[P]:
    """Put the items with `ids` first, in that order, the rest after in their current order;
    positions are renumbered from 1. Repeated or unknown ids are refused."""
    if len(set(ids)) != len(ids):
        raise ValidationFailed(f"a {kind} appears twice in the new order")
    by_id = {item.id: item for item in current}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise NotFound(f"{kind}s {missing} not found", ids=missing)
    wanted = set(ids)
    ordered = [by_id[i] for i in ids] + [item for item in current if item.id not in wanted]
    for position, item in enumerate(ordered, start=1):
        item.position = position
    return ordered
