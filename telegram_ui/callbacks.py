"""Callback data: one typed dataclass per button kind, packed as `prefix:arg:arg` (≤ 64 bytes).

Buttons outlive deployments and anyone can forge callback data, so parsing is strict: a known
prefix, exactly the declared number of fields, ints as bounded digit strings and strings from a
small alphabet. Anything else raises `BadCallback`, which handlers turn into a polite answer.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, TypeVar, get_type_hints

SEPARATOR = ":"
MAX_BYTES = 64  # Telegram's limit for callback_data
_INT = re.compile(r"^(0|[1-9][0-9]{0,11})$")
_STR = re.compile(r"^[a-z0-9_-]{1,32}$")

C = TypeVar("C", bound="CallbackData")


class BadCallback(ValueError):
    """Callback data that is unknown, malformed or forged."""


class CallbackData:
    """Base of every callback payload; subclasses are frozen dataclasses with a unique prefix."""

    prefix: ClassVar[str]
    registry: ClassVar[dict[str, type[CallbackData]]] = {}
    _fields: ClassVar[tuple[tuple[str, type], ...]]

    def __init_subclass__(cls, *, prefix: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _STR.match(prefix) or prefix in CallbackData.registry:
            raise TypeError(f"bad or duplicate callback prefix {prefix!r}")
        cls.prefix = prefix
        CallbackData.registry[prefix] = cls

    @classmethod
    def _field_types(cls) -> tuple[tuple[str, type], ...]:
        # Resolved lazily: dataclass fields exist only after the decorator ran.
        if "_fields" not in cls.__dict__:
            hints = get_type_hints(cls)
            cls._fields = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return cls._fields

    def pack(self) -> str:
        """The callback_data string for this payload."""
        parts = [self.prefix]
        for name, typ in self._field_types():
            value = getattr(self, name)
            text = str(int(value)) if typ is int else str(value)
            if not (_INT if typ is int else _STR).match(text):
                raise ValueError(f"{type(self).__name__}.{name}={value!r} cannot be packed")
            parts.append(text)
        data = SEPARATOR.join(parts)
        if len(data.encode()) > MAX_BYTES:
            raise ValueError(f"callback data too long: {data!r}")
        return data

    @classmethod
    def unpack(cls: type[C], data: str) -> C:
        """Parse data known to carry this class's prefix; BadCallback otherwise."""
        parsed = parse(data)
        if not isinstance(parsed, cls):
            raise BadCallback(f"expected {cls.prefix}, got {data!r}")
        return parsed

    @classmethod
    def pattern(cls) -> re.Pattern[str]:
        """A regex that routes updates with this prefix to a CallbackQueryHandler."""
        return re.compile(rf"^{re.escape(cls.prefix)}(:|$)")


def parse(data: str | None) -> CallbackData:
    """Turn callback_data into its typed payload; BadCallback for anything unexpected."""
    if not data or len(data.encode()) > MAX_BYTES:
        raise BadCallback("empty or oversized callback data")
    prefix, *raw = data.split(SEPARATOR)
    cls = CallbackData.registry.get(prefix)
    if cls is None:
        raise BadCallback(f"unknown prefix {prefix!r}")
    fields = cls._field_types()
    if len(raw) != len(fields):
        raise BadCallback(f"{prefix}: expected {len(fields)} fields, got {len(raw)}")
    values: dict[str, Any] = {}
    for (name, typ), text in zip(fields, raw, strict=True):
        if typ is int:
            if not _INT.match(text):
                raise BadCallback(f"{prefix}.{name}: not an id")
            values[name] = int(text)
        else:
            if not _STR.match(text):
                raise BadCallback(f"{prefix}.{name}: bad token")
            values[name] = text
    return cls(**values)


def is_token(value: str) -> bool:
    """Whether a string can travel as a str field of callback data."""
    return bool(_STR.match(value))


# A category value meaning "every category" in carousels.
ALL = "all"


@dataclasses.dataclass(frozen=True)
class SetLanguage(CallbackData, prefix="lang"):
    language: str


@dataclasses.dataclass(frozen=True)
class SetSubject(CallbackData, prefix="sj"):
    """/subject choice: `auto` or a subject name (`man`, `mature_woman`, …)."""

    subject: str


@dataclasses.dataclass(frozen=True)
class ChooseFace(CallbackData, prefix="face"):
    """Pick face `index` (0-based) of selfie `photo_id` that had several faces."""

    photo_id: int
    index: int


@dataclasses.dataclass(frozen=True)
class StylePage(CallbackData, prefix="sp"):
    """Show style number `index` of `category` in the carousel."""

    category: str
    index: int


@dataclasses.dataclass(frozen=True)
class StyleCategories(CallbackData, prefix="sc"):
    """Show the category buttons of the style carousel."""

    index: int


@dataclasses.dataclass(frozen=True)
class UseStyle(CallbackData, prefix="su"):
    style_id: int


@dataclasses.dataclass(frozen=True)
class CancelJob(CallbackData, prefix="jc"):
    job_id: int


@dataclasses.dataclass(frozen=True)
class MoreLikeThis(CallbackData, prefix="rm"):
    job_id: int


@dataclasses.dataclass(frozen=True)
class AnotherStyle(CallbackData, prefix="ra"):
    job_id: int


@dataclasses.dataclass(frozen=True)
class UsePose(CallbackData, prefix="rp"):
    job_id: int


@dataclasses.dataclass(frozen=True)
class Upscale(CallbackData, prefix="hd"):
    """HD (×4) version of portrait `index` (0-based) of the user's finished job `job_id`."""

    job_id: int
    index: int


@dataclasses.dataclass(frozen=True)
class DeletePhoto(CallbackData, prefix="pd"):
    photo_id: int


@dataclasses.dataclass(frozen=True)
class TemplatePage(CallbackData, prefix="tp"):
    category: str
    index: int


@dataclasses.dataclass(frozen=True)
class UseTemplate(CallbackData, prefix="tu"):
    template_id: int


@dataclasses.dataclass(frozen=True)
class OwnTemplate(CallbackData, prefix="to"):
    """Ask for the user's own template photo instead of a catalog one."""

    index: int


@dataclasses.dataclass(frozen=True)
class ToggleTemplateFace(CallbackData, prefix="tf"):
    """Select or deselect face `index` (0-based) of the pending template `nonce`."""

    nonce: int
    index: int


@dataclasses.dataclass(frozen=True)
class StartTemplate(CallbackData, prefix="tg"):
    """Run the pending template with the selected faces."""

    nonce: int


@dataclasses.dataclass(frozen=True)
class Forget(CallbackData, prefix="fg"):
    """Answer to the /forget confirmation: `yes` or `no`."""

    answer: str


@dataclasses.dataclass(frozen=True)
class TrainConfirm(CallbackData, prefix="tc"):
    """Answer to the /train_style confirmation: `yes` or `no`."""

    answer: str


@dataclasses.dataclass(frozen=True)
class HistoryPage(CallbackData, prefix="hp"):
    offset: int


@dataclasses.dataclass(frozen=True)
class HistoryShow(CallbackData, prefix="hs"):
    """Send a finished job's results again."""

    job_id: int


@dataclasses.dataclass(frozen=True)
class Noop(CallbackData, prefix="nop"):
    """A button that only labels something (e.g. the carousel position)."""

    tag: str


@dataclasses.dataclass(frozen=True)
class ShowPacks(CallbackData, prefix="bs"):
    """Show the Star packs on sale (the Buy button when the free quota is used up)."""


@dataclasses.dataclass(frozen=True)
class BuyPack(CallbackData, prefix="bp"):
    """Send the invoice of pack `pack_id` (re-checked: a disabled or unknown pack is refused)."""

    pack_id: int
