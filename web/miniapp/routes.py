"""The Mini App: its page (`/miniapp/`, static files) and its JSON API (`/miniapp/api/`).

Every API call carries `Authorization: tma <initData>`; the route's guard validates it
(`web.miniapp.initdata`) before anything is parsed, and the handler loads the user as the chat
would (`domain.users.touch`: created on first contact, a banned user refused with the chat's
words). Handlers call the same use cases as the chat's buttons: "Use this style" is
`jobs.create_portrait_job` with the same limits, quota, credits and active-job rule, then the
chat's status message and `jobs.release_job`, so the album arrives in the chat as usual. Errors
carry the chat's sentence in the user's language as their message. Pictures are served by
signed URLs (`web.miniapp.media`)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import escape
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel

from core.errors import AppError, PaymentRefused, RateLimited, SelfieRequired, UserBanned
from core.settings import AppConfig
from db.models import BaseModelName, JobStatus
from domain import billing, conversations, jobs, photos, styles, users
from domain.catalog import category_name
from facechain.errors import FaceChainError
from telegram_ui.i18n import (
    LANGUAGES,
    counted_forms,
    error_text,
    normalize_language,
    ntranslate,
    plural_categories,
    translate,
)
from telegram_ui.keyboards import cancel_job_keyboard
from web.auth import FailureLimiter
from web.http import Call
from web.keys import CONFIG
from web.miniapp import initdata, media
from web.miniapp.schemas import (
    ActiveJobOut,
    BalanceOut,
    BaseOut,
    CreatedOut,
    GalleryOut,
    GalleryStyleOut,
    InvoiceOut,
    MediaQuery,
    MeOut,
    PacksOut,
    PictureOut,
    PortraitsOut,
    SetOut,
    ShopPackOut,
    ViewerOut,
)
from web.miniapp.telegram import TelegramLink, invoice_link, send_status
from web.openapi import Handler, Route

logger = logging.getLogger(__name__)

PREFIX = "/miniapp"
API = f"{PREFIX}/api"
STATIC_DIR = Path(__file__).parent / "static"
# The page's files: (URL path, file, media type). No build step; nothing from another host.
STATIC_FILES = (
    (f"{PREFIX}/", "index.html", "text/html"),
    (f"{PREFIX}/app.js", "app.js", "text/javascript"),
    (f"{PREFIX}/bridge.js", "bridge.js", "text/javascript"),
    (f"{PREFIX}/app.css", "app.css", "text/css"),
)
# Only this server: scripts, styles, pictures and API calls alike.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
# Catalog keys the page shows (placeholders are filled in by the page).
PAGE_KEYS = (
    "btn.use_style",
    "buy.none",
    "error.internal",
    "error.selfie_required",
    "kind.portrait",
    "kind.template",
    "kind.training",
    "kind.upscale",
    "status.queued",
    "status.running",
    "miniapp.base.film",
    "miniapp.base.majic",
    "miniapp.buy",
    "miniapp.close",
    "miniapp.filter.all",
    "miniapp.filter.mine",
    "miniapp.finished",
    "miniapp.free_today",
    "miniapp.hd_free",
    "miniapp.hd_started",
    "miniapp.in_progress",
    "miniapp.no_portraits",
    "miniapp.no_styles",
    "miniapp.paid",
    "miniapp.payment_failed",
    "miniapp.prices",
    "miniapp.progress",
    "miniapp.queue_position",
    "miniapp.search",
    "miniapp.started",
    "miniapp.tab.packs",
    "miniapp.tab.portraits",
    "miniapp.tab.styles",
    "miniapp.title",
)
# Counted texts the page says with a number: every form, chosen in the browser by
# Intl.PluralRules against `plural_categories` (the same CLDR rule as the chat).
PAGE_COUNTED_KEYS = ("miniapp.balance", "miniapp.hd", "miniapp.pack_credits")
INIT_DATA = web.RequestKey("miniapp_init_data", initdata.InitData)
LANGUAGE = web.RequestKey("miniapp_language", str)
TELEGRAM_LINK = web.AppKey("miniapp_telegram", TelegramLink)
MEDIA_KEY = web.AppKey("miniapp_media_key", bytes)
PICTURES = web.AppKey("miniapp_pictures", media.PictureCache)
# The chat's flood limit (LIMITS_UPDATES_PER_MINUTE) on what the page asks to be done.
ACTIONS = web.AppKey("miniapp_actions", FailureLimiter)


# ---- authentication and the user ----


def _token(config: AppConfig) -> str:
    assert config.telegram.token is not None, "the Mini App is served only with a bot token"
    return config.telegram.token.get_secret_value()


def require_init_data(request: web.Request) -> None:
    """The route guard: `Authorization: tma <initData>`, valid and fresh, or 401."""
    config = request.app[CONFIG]
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "tma" or not raw.strip():
        raise initdata.InvalidInitData("missing init data: open the app from the bot in Telegram")
    request[INIT_DATA] = initdata.validate(
        raw.strip(), _token(config), max_age=config.miniapp.init_data_max_age
    )


@dataclass(frozen=True)
class Viewer:
    """The user the init data names, as the chat knows them."""

    user_id: int
    telegram_id: int
    first_name: str | None
    language: str
    is_admin: bool


async def viewer(call: Call) -> Viewer:
    """Create or refresh the user (as a message would); a banned user gets the chat's refusal."""
    data = call.request[INIT_DATA]
    contact = await call.db.run(
        users.touch,
        data.user_id,
        data.username,
        data.first_name,
        normalize_language(data.language_code),
    )
    user = contact.user
    language = normalize_language(user.language)
    call.request[LANGUAGE] = language
    is_admin = data.user_id in call.config.telegram.admin_ids
    if user.is_banned and not is_admin:
        raise UserBanned("banned")
    return Viewer(user.id, data.user_id, user.first_name, language, is_admin)


def count_action(call: Call, who: Viewer) -> None:
    """An action (a job, an invoice) under the chat's per-user flood limit (admins exempt, as
    in the chat); RateLimited (429) beyond it. Reads (the page's polling) are not counted."""
    if who.is_admin:
        return
    limiter = call.app[ACTIONS]
    key = f"tg:{who.telegram_id}"
    wait = limiter.retry_after(key)
    if wait > 0:
        raise RateLimited("too many actions; try later", retry_after=math.ceil(wait))
    limiter.record_failure(key)


def describe(language: str, error: AppError | FaceChainError) -> str:
    """The chat's sentence for a typed error, with its details as parameters."""
    if error_text(language, error.code) == error_text(language, "internal"):
        return error_text(language, "internal")
    details = error.details if isinstance(error, AppError) else {}
    return translate(language, f"error.{error.code}", **details)


def localized(handler: Handler) -> Handler:
    """Give a typed error the chat's sentence in the user's language as its message."""

    @functools.wraps(handler)
    async def run(call: Call) -> BaseModel | web.StreamResponse | None:
        try:
            return await handler(call)
        except (AppError, FaceChainError) as exc:
            language = call.request.get(LANGUAGE)
            if language is not None and not getattr(exc, "translated", False):
                exc.args = (describe(language, exc),)
            raise

    return run


# ---- the API ----


def _balance(shown: billing.Balance) -> BalanceOut:
    return BalanceOut(
        credits=shown.credits,
        quota_left=shown.quota_left,
        quota=shown.quota,
        price_portrait=shown.price_portrait,
        price_template=shown.price_template,
        price_upscale=shown.price_upscale,
    )


async def _balance_of(call: Call, who: Viewer) -> BalanceOut:
    shown = await call.db.run(
        billing.balance, who.user_id, call.config.limits, call.config.payments
    )
    return _balance(shown)


@localized
async def miniapp_me(call: Call) -> MeOut:
    """The user, the page's texts in their language, balance and whether a selfie is on file."""
    who = await viewer(call)
    has_selfie = await call.db.run(photos.has_usable_selfie, who.user_id)
    return MeOut(
        user=ViewerOut(
            telegram_id=who.telegram_id, first_name=who.first_name, language=who.language
        ),
        texts={key: translate(who.language, key) for key in PAGE_KEYS},
        counted={key: list(counted_forms(who.language, key)) for key in PAGE_COUNTED_KEYS},
        plural_categories=list(plural_categories(who.language)),
        payments=call.config.payments.enabled,
        has_selfie=has_selfie,
        balance=await _balance_of(call, who),
    )


def _url(call: Call, blob: str | None, size: media.Size) -> str | None:
    return media.signed_url(call.app[MEDIA_KEY], blob, size) if blob else None


@localized
async def miniapp_styles(call: Call) -> GalleryOut:
    """Every style the user may pick, with its picture, name and base."""
    who = await viewer(call)
    rows = await call.db.run(styles.gallery, who.user_id, who.language)
    return GalleryOut(
        styles=[
            GalleryStyleOut(
                id=s.id,
                name=s.name,
                category=s.category,
                category_name=category_name(s.category, who.language),
                base_model=s.base_model,
                own=s.own,
                thumb=_url(call, s.thumbnail_blob, "thumb"),
                picture=_url(call, s.thumbnail_blob, "full"),
            )
            for s in rows
        ],
        bases=[
            BaseOut(id=b, name=translate(who.language, f"miniapp.base.{b.value}"))
            for b in BaseModelName
        ],
    )


async def _announce(call: Call, who: Viewer, created: jobs.CreatedJob) -> CreatedOut:
    """The chat's status message (position, estimate, Cancel), then the job to the workers."""
    text = ntranslate(
        who.language, "job.queued", created.eta_minutes, position=created.position + 1
    )
    message_id = await send_status(
        call.app[TELEGRAM_LINK],
        who.telegram_id,
        text,
        cancel_job_keyboard(created.job_id, who.language),
    )
    await call.transact(jobs.release_job, created.job_id, message_id)
    return CreatedOut(
        job_id=created.job_id,
        position=created.position + 1,
        eta_minutes=created.eta_minutes,
        message=text,
    )


@localized
async def miniapp_use_style(call: Call) -> CreatedOut:
    """ "Use this style": the chat's portrait job, every limit included; the album comes to
    the chat. Without a selfie, the style waits for one (as in the chat)."""
    who = await viewer(call)
    count_action(call, who)
    style_id = call.path_int("style_id")
    try:
        created = await call.db.run(
            jobs.create_portrait_job,
            who.user_id,
            style_id=style_id,
            chat_id=who.telegram_id,
            limits=call.config.limits,
            is_admin=who.is_admin,
            payments=call.config.payments,
            num_images=call.config.engine.num_images,
        )
    except SelfieRequired:
        await call.db.run(conversations.update, who.user_id, pending_style_id=style_id)
        raise
    await call.db.run(conversations.update, who.user_id, pending_style_id=None)
    logger.info("user %s started portrait job %s from the Mini App", who.user_id, created.job_id)
    return await _announce(call, who, created)


@localized
async def miniapp_portraits(call: Call) -> PortraitsOut:
    """Jobs in progress (queue position, progress) and finished sets with their pictures."""
    who = await viewer(call)
    seen = await call.db.run(jobs.overview, who.user_id, who.language)
    key = call.app[MEDIA_KEY]
    return PortraitsOut(
        active=[
            ActiveJobOut(
                job_id=a.job_id,
                kind=a.kind,
                status=a.status,
                position=a.position + 1 if a.status is JobStatus.QUEUED else 0,
                progress=a.progress,
                title=a.title,
            )
            for a in seen.active
        ],
        finished=[
            SetOut(
                job_id=f.job_id,
                kind=f.kind,
                title=f.title,
                created=f.created,
                pictures=[
                    PictureOut(
                        index=i,
                        thumb=media.signed_url(key, blob, "thumb"),
                        full=media.signed_url(key, blob, "full"),
                    )
                    for i, blob in enumerate(f.result_blobs)
                ],
            )
            for f in seen.finished
        ],
        hd_price=call.config.payments.price_upscale if call.config.payments.enabled else 0,
    )


@localized
async def miniapp_hd(call: Call) -> CreatedOut:
    """HD for one picture of a finished portrait set: the chat's HD button (same price and
    rules); the file arrives in the chat."""
    who = await viewer(call)
    count_action(call, who)
    created = await call.db.run(
        jobs.create_upscale_job,
        who.user_id,
        source_job_id=call.path_int("job_id"),
        index=call.path_int("index"),
        size=jobs.HD_SIZE,
        chat_id=who.telegram_id,
        limits=call.config.limits,
        is_admin=who.is_admin,
        payments=call.config.payments,
    )
    return await _announce(call, who, created)


@localized
async def miniapp_packs(call: Call) -> PacksOut:
    """Balance, today's free quota, and the packs on sale (none with payments off)."""
    who = await viewer(call)
    enabled = call.config.payments.enabled
    packs = await call.db.run(billing.list_packs, enabled_only=True) if enabled else []
    return PacksOut(
        enabled=enabled,
        balance=await _balance_of(call, who),
        packs=[
            ShopPackOut(id=p.id, title=p.title, credits=p.credits, stars=p.stars) for p in packs
        ],
    )


# Why a purchase is refused (`domain.billing` reasons); each has a `pay.refused.<reason>` text.
REFUSAL_REASONS = ("disabled", "invalid", "banned", "forgotten", "pack_gone", "price_changed")


@localized
async def miniapp_invoice(call: Call) -> InvoiceOut:
    """A Stars invoice link for a pack (the page opens it with openInvoice); the payment is
    credited by the bot when Telegram reports it, as for /buy."""
    who = await viewer(call)
    count_action(call, who)
    try:
        url = await invoice_link(
            call.app[TELEGRAM_LINK],
            call.db,
            who.user_id,
            call.path_int("pack_id"),
            call.config.payments,
            who.language,
        )
    except PaymentRefused as exc:
        reason = str(exc.details.get("reason", "invalid"))
        reason = reason if reason in REFUSAL_REASONS else "invalid"
        refused = PaymentRefused(translate(who.language, f"pay.refused.{reason}"), reason=reason)
        refused.translated = True  # type: ignore[attr-defined]
        raise refused from exc
    return InvoiceOut(link=url)


async def miniapp_media(call: Call) -> web.StreamResponse:
    """A picture at a signed URL, sized for the grid or the full view."""
    q = call.query_as(MediaQuery)
    media.check(call.app[MEDIA_KEY], q.k, q.s, q.e, q.h, None)
    cache = call.app[PICTURES]
    data = cache.get(q.k, q.s)
    if data is None:
        original = await asyncio.to_thread(call.blobs.get, q.k)
        data = await asyncio.to_thread(media.render, original, q.s)
        cache.put(q.k, q.s, data)
    return web.Response(
        body=data,
        content_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{q.k[:32]}-{q.s}"'},
    )


# ---- the page ----


def _launch_texts() -> str:
    """What the page says, before any API answer, when it was not opened from Telegram."""
    texts = {lang: translate(lang, "miniapp.open_in_telegram") for lang in LANGUAGES}
    return escape(json.dumps(texts, ensure_ascii=False), quote=True)


@functools.cache
def _static(name: str) -> bytes:
    data = (STATIC_DIR / name).read_bytes()
    if name == "index.html":
        data = data.replace(b"{{LAUNCH_TEXTS}}", _launch_texts().encode())
    return data


def _static_handler(name: str, media_type: str) -> Handler:
    async def handler(call: Call) -> web.StreamResponse:
        return web.Response(
            body=_static(name),
            content_type=media_type,
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    handler.__name__ = "miniapp_file_" + name.replace(".", "_")
    return handler


async def telegram_link(app: web.Application) -> AsyncIterator[None]:
    """The Bot the API talks to Telegram with, closed with the app."""
    link = TelegramLink(app[CONFIG].telegram, app[CONFIG].broker.effective_url)
    app[TELEGRAM_LINK] = link
    yield
    await link.close()


def setup(app: web.Application, config: AppConfig) -> None:
    """The Mini App's state on the web app (call before serving its routes)."""
    app[MEDIA_KEY] = media.media_key(_token(config))
    app[PICTURES] = media.PictureCache()
    app[ACTIONS] = FailureLimiter(config.limits.updates_per_minute, 60.0)
    app.cleanup_ctx.append(telegram_link)


def routes() -> list[Route]:
    """The page and its API (served when a bot token is configured)."""
    page = [
        Route(
            "GET",
            path,
            _static_handler(name, media_type),
            f"The Mini App's {name}",
            "miniapp",
            auth=False,
            media_type=media_type,
        )
        for path, name, media_type in STATIC_FILES
    ]

    def api(method: str, path: str, handler: Handler, summary: str, **kw: object) -> Route:
        return Route(
            method,
            f"{API}{path}",
            handler,
            summary,
            "miniapp",
            auth=False,
            tma=True,
            guard=require_init_data,
            **kw,  # type: ignore[arg-type]
        )

    return [
        *page,
        api("GET", "/me", miniapp_me, "The user, the page's texts, balance", response=MeOut),
        api("GET", "/styles", miniapp_styles, "The style gallery", response=GalleryOut),
        api(
            "POST",
            "/styles/{style_id}/use",
            miniapp_use_style,
            "Start a portrait set in this style (the album comes to the chat)",
            response=CreatedOut,
            status=201,
            errors=(404, 409, 429, 503),
        ),
        api(
            "GET",
            "/portraits",
            miniapp_portraits,
            "Jobs in progress and finished sets",
            response=PortraitsOut,
        ),
        api(
            "POST",
            "/portraits/{job_id}/pictures/{index}/hd",
            miniapp_hd,
            "HD of one picture (the file comes to the chat)",
            response=CreatedOut,
            status=201,
            path_bounds={"index": (0, 99)},
            errors=(404, 409, 429, 503),
        ),
        api("GET", "/packs", miniapp_packs, "Balance and the packs on sale", response=PacksOut),
        api(
            "POST",
            "/packs/{pack_id}/invoice",
            miniapp_invoice,
            "A Stars invoice link for a pack",
            response=InvoiceOut,
            errors=(404, 409, 429, 503),
        ),
        Route(
            "GET",
            media.MEDIA_PATH,
            miniapp_media,
            "A picture at a URL the API signed",
            "miniapp",
            auth=False,
            query=MediaQuery,
            media_type="image/jpeg",
            errors=(403, 404),
        ),
    ]
