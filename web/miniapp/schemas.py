"""Request and response models of the Mini App's API (`/miniapp/api/`), in the same OpenAPI
document as the admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from db.models import BaseModelName, JobKind, JobStatus
from web.schemas import INT64_MAX, Query


class ViewerOut(BaseModel):
    telegram_id: int
    first_name: str | None
    language: str


class BalanceOut(BaseModel):
    """Credits, today's free generations and the prices (credits per job)."""

    credits: int
    quota_left: int
    quota: int
    price_portrait: int
    price_template: int
    price_upscale: int


class MeOut(BaseModel):
    """Who the page is for, the texts it shows in their language, and what is on."""

    user: ViewerOut
    texts: dict[str, str]
    # Counted texts: key → every plural form, in the order of `plural_categories` (the CLDR
    # category of each form); the page picks one with Intl.PluralRules(language).select(n).
    counted: dict[str, list[str]]
    plural_categories: list[str]
    payments: bool
    has_selfie: bool
    balance: BalanceOut


class BaseOut(BaseModel):
    id: BaseModelName
    name: str


class GalleryStyleOut(BaseModel):
    id: int
    name: str
    category: str
    category_name: str
    base_model: BaseModelName
    own: bool = Field(description="the user's own trained style")
    thumb: str | None = Field(description="signed URL of the grid picture (relative to /miniapp/)")
    picture: str | None = Field(
        description="signed URL of the large picture (relative to /miniapp/)"
    )


class GalleryOut(BaseModel):
    styles: list[GalleryStyleOut]
    bases: list[BaseOut]


class CreatedOut(BaseModel):
    """A job was queued; its status message is in the chat, the album follows there."""

    job_id: int
    position: int = Field(description="1-based place in the queue")
    eta_minutes: int
    message: str


class ActiveJobOut(BaseModel):
    job_id: int
    kind: JobKind
    status: JobStatus
    position: int = Field(description="1-based place in the queue; 0 while running")
    progress: float
    title: str


class PictureOut(BaseModel):
    index: int
    thumb: str
    full: str


class SetOut(BaseModel):
    job_id: int
    kind: JobKind
    title: str
    created: datetime
    pictures: list[PictureOut]


class PortraitsOut(BaseModel):
    active: list[ActiveJobOut]
    finished: list[SetOut]
    hd_price: int = Field(description="credits an HD picture costs (0: free)")


class ShopPackOut(BaseModel):
    id: int
    title: str
    credits: int
    stars: int


class PacksOut(BaseModel):
    enabled: bool
    balance: BalanceOut
    packs: list[ShopPackOut]


class InvoiceOut(BaseModel):
    """A Stars invoice link for `Telegram.WebApp.openInvoice`."""

    link: str


class MediaQuery(Query):
    """A picture URL the API signed."""

    k: str = Field(pattern=r"^[0-9a-f]{64}$", description="blob key")
    s: Literal["thumb", "full"] = Field(description="size")
    e: int = Field(ge=0, le=INT64_MAX, description="expiry, Unix time")
    h: str = Field(pattern=r"^[0-9a-f]{32}$", description="signature")
