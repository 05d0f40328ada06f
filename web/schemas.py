"""Request and response models of the admin API; the OpenAPI document is generated from them.

Inputs are as strict as their schema: a JSON boolean is `true`/`false` (not `0` or `"yes"`), a
JSON integer an integral number (not `false` or `"5"`), a query boolean `true`/`false`; and every
rule the server enforces is in the schema (patterns, bounds, unique items, non-empty objects),
so a request the document calls valid is never refused for its shape."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from db.models import BaseModelName, JobKind, JobStatus, LedgerKind, StyleOrigin
from domain.billing import MAX_GRANT, MAX_PACK_CREDITS, MAX_STARS, MIN_STARS
from domain.broadcasts import MAX_TEXT_LENGTH
from domain.users import MAX_QUOTA
from domain.webhooks import EVENTS

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_POSITION = 1_000_000


def _clean_text(value: str) -> str:
    """Refuse what SQL text columns cannot store (NUL, lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _json_integer(value: object) -> object:
    """JSON Schema's integer: an integral number (1 and 1.0), never a boolean or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "Input should be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise PydanticCustomError("int_type", "Input should be a JSON integer")
        return int(value)
    return value


def _json_number(value: object) -> object:
    """JSON Schema's number: never a boolean or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "Input should be a JSON number")
    return value


def _query_boolean(value: object) -> object:
    """A query-string boolean as OpenAPI serialises it: `true` or `false`."""
    if value in ("true", "false"):
        return value == "true"
    if isinstance(value, bool):
        return value
    raise PydanticCustomError("bool_type", "Input should be true or false")


# The constraints go inside the validator, so that the document shows them as JSON Schema's
# `minimum`/`maximum` (outside, pydantic would print them under its own names).
QueryBool = Annotated[bool, BeforeValidator(_query_boolean)]
Quota = Annotated[int, Field(ge=0, le=MAX_QUOTA), BeforeValidator(_json_integer)]
Position = Annotated[int, Field(ge=1, le=MAX_POSITION), BeforeValidator(_json_integer)]
RowId = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_json_integer)]
Weight = Annotated[float, Field(gt=0.0, le=1.0), BeforeValidator(_json_number)]

# What Python's str.split() and str.strip() treat as whitespace, spelled out so that the
# server and any JSON Schema regex engine agree on what "blank" means.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Text with at least one character that is not whitespace (and no NUL anywhere).
NON_BLANK = rf"^[^\x00]*[^\x00{_SPACE}][^\x00]*$"
# An http(s) URL a delivery can reach, exactly what `domain.webhooks.check_url` accepts: an
# ASCII host name or address (optionally with user info), a port from 1 to 65535, then a path,
# query or fragment (no NUL anywhere). IPv6 literals and non-ASCII hosts (use punycode) are out.
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
URL = (
    r"^https?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]+@)?[A-Za-z0-9._~-]+"
    rf"(?::{_PORT})?(?:[/?#][^\x00]*)?$"
)
# Strings as stored: no NUL (each pattern says so, for the document), valid Unicode. One pattern
# per field: it must be the whole rule, since the document shows only one.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$"), AfterValidator(_clean_text)]
Name = Annotated[
    str, Field(min_length=1, max_length=96, pattern=NON_BLANK), AfterValidator(_clean_text)
]


class Names(TypedDict, total=False):
    """Display names by language; at least one, no other keys."""

    __pydantic_config__ = ConfigDict(  # type: ignore[misc]
        extra="forbid", json_schema_extra={"minProperties": 1}
    )

    en: Name
    zh: Name
    ru: Name


def _some_names(names: Names) -> Names:
    if not names:
        raise PydanticCustomError("too_short", "Give at least one name")
    return names


NonEmptyNames = Annotated[Names, AfterValidator(_some_names)]


def plain_names(names: Names | None) -> dict[str, str] | None:
    """The names as the domain takes them (None: unchanged)."""
    return {lang: str(text) for lang, text in names.items()} if names else None


Category = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
Slug = Annotated[str, Field(min_length=1, max_length=96, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Prompt = Annotated[
    str, Field(min_length=1, max_length=2000, pattern=NON_BLANK), AfterValidator(_clean_text)
]
LoraWeight = Annotated[float, Field(gt=0.0, le=1.0)]
WebhookEvent = Literal[
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "style.trained",
    "broadcast.finished",
    "payment.succeeded",
    "payment.refunded",
    "safety.flagged",
]
assert set(WebhookEvent.__args__) == set(EVENTS)  # type: ignore[attr-defined]


class Model(BaseModel):
    """Response base: built from ORM rows."""

    model_config = ConfigDict(from_attributes=True)


class Input(BaseModel):
    """Request base: unknown fields are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid")


class JsonInput(Input):
    """JSON body base: values must have the JSON type their schema names (see JsonInt etc.)."""


class Query(BaseModel):
    """Query-string base: unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore")


# ---- errors and pagination ----


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Every non-2xx answer."""

    error: ErrorBody


class PageQuery(Query):
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=INT32_MAX)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# ---- health ----


class HealthOut(BaseModel):
    status: Literal["ok"]


class CheckOut(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class WorkerOut(BaseModel):
    """A worker process as its own probe reports it (written to the broker every 10 s)."""

    name: str
    queues: list[str]
    ready: bool
    reason: str
    engine_load_s: float | None = None
    seen_s_ago: float


class ReadyOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckOut]
    # Informational: web's own readiness does not depend on them (empty without Redis).
    workers: list[WorkerOut] = []


# ---- stats ----


class UserCounts(BaseModel):
    total: int
    banned: int
    active_24h: int


class JobCounts(BaseModel):
    by_status: dict[str, int]
    by_kind: dict[str, dict[str, int]]


class Durations(BaseModel):
    count: int
    avg_seconds: float | None
    p95_seconds: float | None


class WorkerSeen(BaseModel):
    name: str
    last_job_at: str | None
    jobs: int


class StatsOut(BaseModel):
    users: UserCounts
    jobs: JobCounts
    queue_depth: int
    running: int
    durations_24h: Durations
    failures_by_code: dict[str, int]
    workers_seen: list[WorkerSeen]
    generated_at: str


# ---- users ----


class UserQuery(PageQuery):
    q: Annotated[Text, Field(max_length=64)] | None = None
    banned: QueryBool | None = None


class UserOut(Model):
    id: int
    telegram_id: int
    username: str | None
    first_name: str | None
    language: str
    is_banned: bool
    can_train: bool
    daily_quota: int | None
    # Paid generation credits (Telegram Stars packs; see /api/v1/users/{id}/ledger).
    credits: int
    created_at: datetime
    last_seen_at: datetime | None


class QuotaIn(JsonInput):
    """`null` restores the configured default."""

    daily_quota: Quota | None


# ---- styles and templates ----


class StyleQuery(PageQuery):
    enabled: QueryBool | None = None
    category: Category | None = None
    origin: StyleOrigin | None = None


class StyleOut(Model):
    id: int
    slug: str
    names: dict[str, str]
    category: str
    base_model: BaseModelName
    prompt: str
    lora_weight: float
    lora_blob: str | None
    lora_model_id: str | None
    thumbnail_blob: str | None
    enabled: bool
    position: int
    origin: StyleOrigin
    owner_id: int | None
    created_at: datetime


class PatchIn(JsonInput):
    """Fields to change; at least one. `position` is 1-based in display order."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    enabled: StrictBool | None = None
    position: Position | None = None
    names: NonEmptyNames | None = None
    category: Category | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> PatchIn:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class StylePatch(PatchIn):
    lora_weight: Weight | None = None
    prompt: Prompt | None = None


class TemplatePatch(PatchIn):
    pass


class OrderIn(JsonInput):
    """Ids to put first, in this order (positions from 1); the others follow in their order."""

    ids: list[RowId] = Field(
        min_length=1, max_length=1000, json_schema_extra={"uniqueItems": True}
    )

    @model_validator(mode="after")
    def _unique(self) -> OrderIn:
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids must be unique")
        return self


class UploadNames(Input):
    name: Name = Field(description="English display name")
    name_zh: Name | None = None
    name_ru: Name | None = None

    def names(self) -> dict[str, str]:
        """The names by language, as stored."""
        found = {"en": self.name, "zh": self.name_zh, "ru": self.name_ru}
        return {lang: text for lang, text in found.items() if text}


class StyleUploadFields(UploadNames):
    """Text fields of the multipart style upload (files: `lora`, optional `thumbnail`)."""

    prompt: Prompt
    base_model: BaseModelName = BaseModelName.MAJIC
    category: Category = "uploaded"
    lora_weight: LoraWeight = 0.5


class TemplateQuery(PageQuery):
    enabled: QueryBool | None = None
    category: Category | None = None


class TemplateOut(Model):
    id: int
    slug: str
    names: dict[str, str]
    category: str
    width: int
    height: int
    face_count: int
    image_blob: str
    thumbnail_blob: str | None
    enabled: bool
    position: int
    origin: StyleOrigin
    owner_id: int | None
    created_at: datetime


class TemplateUploadFields(UploadNames):
    """Text fields of the multipart template upload (file: `image`)."""

    slug: Slug | None = Field(default=None, description="Derived from the name when omitted")
    category: Category = "uploaded"


# ---- jobs ----


class JobQuery(PageQuery):
    status: JobStatus | None = None
    kind: JobKind | None = None
    user: int | None = Field(default=None, ge=1, le=INT64_MAX, description="Telegram user id")


class JobOut(Model):
    id: int
    user_id: int | None
    kind: JobKind
    status: JobStatus
    progress: float
    attempts: int
    error_code: str | None
    error_detail: str | None
    params: dict[str, Any]
    result_blobs: list[str]
    style_id: int | None
    template_id: int | None
    cancel_requested: bool
    worker: str | None
    # The running job's lease (docs/ARCHITECTURE.md, "Job lease"): the worker attempt holding it
    # (null: the broker's, or none) and when it expires unless renewed.
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    delivered_at: datetime | None
    delivery_attempts: int
    delivery_error: str | None
    # What creating the job cost (`quota`: a free daily slot, `credits`: `charge_credits`
    # credits; null: nothing) and when it was given back (a failure that was not the user's,
    # or a cancel before it ran).
    charge: str | None
    charge_credits: int
    charge_returned_at: datetime | None


# ---- broadcasts ----


class BroadcastIn(JsonInput):
    text: Annotated[
        str,
        Field(min_length=1, max_length=MAX_TEXT_LENGTH, pattern=NON_BLANK),
        AfterValidator(_clean_text),
    ]


class BroadcastOut(BaseModel):
    id: int
    status: Literal["queued", "sending", "done", "cancelled"]
    text: str
    created_by: str
    total: int
    sent: int
    failed: int
    cursor: int
    progress: float
    created_at: str
    finished_at: str | None


# ---- outgoing webhooks ----


class WebhookIn(JsonInput):
    url: Annotated[
        str,
        Field(
            max_length=2048,
            pattern=URL,
            description=(
                "The receiver's http(s) URL. Refused (422, the reason in `message`) when its "
                "host is, or resolves to, a loopback, link-local, private, unique-local or other "
                "non-public address, unless the server runs with WEBHOOKS_ALLOW_PRIVATE=true; "
                "every delivery resolves and checks it again and connects only to the address "
                "it checked"
            ),
        ),
        AfterValidator(_clean_text),
    ]
    events: list[WebhookEvent] = Field(min_length=1, max_length=len(EVENTS))
    secret: Annotated[Text, Field(min_length=16, max_length=128)] = Field(
        description="HMAC key for X-FaceChain-Signature; stored, never returned"
    )
    enabled: StrictBool = True


class WebhookOut(Model):
    """An endpoint as listed: the secret is never included."""

    id: int
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime


class DeliveryQuery(PageQuery):
    status: Literal["pending", "delivered", "failed"] | None = None


class DeliveryOut(Model):
    id: int
    endpoint_id: int
    event: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None


# ---- audit ----


class AuditQuery(PageQuery):
    action: Annotated[Text, Field(max_length=64)] | None = None
    actor: Annotated[Text, Field(max_length=64)] | None = None


class AuditOut(Model):
    id: int
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]
    created_at: datetime


# ---- Telegram webhook ----


class TelegramUpdateIn(BaseModel):
    """A Telegram Update object (only `update_id` is checked here; PTB parses the rest)."""

    model_config = ConfigDict(extra="allow")

    update_id: int = Field(ge=0, le=INT64_MAX)


# ---- paid generations (Telegram Stars) ----

PackTitle = Annotated[
    str, Field(min_length=1, max_length=32, pattern=NON_BLANK), AfterValidator(_clean_text)
]
PackCredits = Annotated[int, Field(ge=1, le=MAX_PACK_CREDITS), BeforeValidator(_json_integer)]
Stars = Annotated[int, Field(ge=MIN_STARS, le=MAX_STARS), BeforeValidator(_json_integer)]
PackPosition = Annotated[int, Field(ge=0, le=MAX_POSITION), BeforeValidator(_json_integer)]


class PackIn(JsonInput):
    """A pack of generation credits sold for Telegram Stars."""

    title: PackTitle
    credits: PackCredits
    stars: Stars
    enabled: StrictBool = True
    # Shop order (ascending); omitted: after the last pack.
    position: PackPosition | None = None


class PackPatch(JsonInput):
    """Fields to change; at least one (null: unchanged). Invoices already sent for the old
    terms are refused at checkout."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    title: PackTitle | None = None
    credits: PackCredits | None = None
    stars: Stars | None = None
    enabled: StrictBool | None = None
    position: PackPosition | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> PackPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class PackOut(Model):
    id: int
    title: str
    credits: int
    stars: int
    enabled: bool
    position: int
    created_at: datetime


class PackList(BaseModel):
    items: list[PackOut]


class LedgerOut(Model):
    """One credit movement (append-only), newest first."""

    id: int
    kind: LedgerKind
    delta: int
    balance: int
    job_id: int | None
    payment_id: int | None
    actor: str | None
    note: str | None
    created_at: datetime


class LedgerPage(Page[LedgerOut]):
    telegram_id: int
    credits: int


def _not_zero(schema: dict[str, Any], name: str) -> None:
    """Document that a property may not be 0 (`not: {const: 0}`)."""
    schema["properties"][name]["not"] = {"const": 0}


class GrantIn(JsonInput):
    """An admin's correction of a user's credits (written to the ledger); never below 0."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _not_zero(schema, "credits"))

    credits: Annotated[int, Field(ge=-MAX_GRANT, le=MAX_GRANT), BeforeValidator(_json_integer)]
    note: Annotated[Text, Field(max_length=255)] | None = None

    @model_validator(mode="after")
    def _non_zero(self) -> GrantIn:
        if self.credits == 0:
            raise ValueError("credits must not be 0")
        return self


class PaymentQuery(PageQuery):
    telegram_id: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None


class PaymentOut(Model):
    id: int
    charge_id: str
    telegram_id: int
    user_id: int | None
    pack_id: int | None
    title: str
    stars: int
    credits: int
    created_at: datetime
    refunded_at: datetime | None
    refund_debited: int | None
    refund_shortfall: int | None
    # The invoice it paid, and why it credited nothing when it matches none we issued
    # (no_invoice, payer, amount, currency, paid); null: credited from its invoice.
    invoice_id: int | None
    unmatched: str | None


class RefundOut(BaseModel):
    """What a refund did: credits debited, those already spent (`shortfall`, not debited: the
    balance never goes negative), and whether it had been refunded before (`duplicate`)."""

    payment_id: int
    charge_id: str
    stars: int
    debited: int
    shortfall: int
    balance: int | None
    duplicate: bool


class RevenueQuery(Query):
    days: int = Field(default=30, ge=1, le=366)


class RevenueDayOut(BaseModel):
    day: str
    payments: int
    stars: int
    credits: int
    refunds: int
    refunded_stars: int
    net_stars: int


class RevenueOut(BaseModel):
    """Sales per UTC day, oldest first (today last), and the totals."""

    days: list[RevenueDayOut]
    stars: int
    refunded_stars: int
    net_stars: int


class LedgerMismatch(BaseModel):
    user_id: int
    credits: int
    ledger_sum: int


class LedgerCheckOut(BaseModel):
    """Users whose balance disagrees with their ledger (empty: all agree)."""

    ok: bool
    mismatches: list[LedgerMismatch]


class ReconcileOut(BaseModel):
    """Payments Telegram lists (getStarTransactions) that were never recorded, credited now,
    refunds it lists that were never recorded, debited now, and payments it lists that match no
    invoice the bot issued (kept, nothing credited; the admin chat is told)."""

    credited: int
    stars: int
    payment_ids: list[int]
    refunded: int
    refunded_stars: int
    refunded_payment_ids: list[int]
    unmatched: int
    unmatched_payment_ids: list[int]
