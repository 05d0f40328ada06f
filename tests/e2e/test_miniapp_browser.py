"""The Mini App in a real browser: headless Chromium opens /miniapp/ with the launch parameters
Telegram puts in the URL fragment, every other host unreachable. The gallery shows every style
picture, a filter narrows it, "Use this style" makes the real job whose album reaches the (fake)
chat, My portraits lists it, the Stars checkout goes through openInvoice and the balance follows
the payment, and forged or stale init data is refused. Screenshots at phone width are taken on
the way (saved into $FACECHAIN_SCREENSHOTS when set; docs/miniapp-*.png come from here)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
import pytest_asyncio
from aiohttp import web
from pydantic import SecretStr

from core.settings import PaymentsSettings, TelegramSettings
from db.models import BaseModelName, JobStatus, Style
from domain import billing
from domain.catalog import import_catalog
from tasks.dispatch import CeleryPublisher
from telegram_ui.i18n import ntranslate, translate
from telegram_ui.payments import paid_text
from tests.utils.chat import JOB_SECONDS, send_selfie
from tests.utils.chromium import chromium, chromium_path, open_page
from tests.utils.fake_telegram import TOKEN, FakeUser
from tests.utils.stack import Stack, config_from_env, open_stack
from web.app import create_web_app
from web.miniapp import initdata

# A full stack (bot, gpu and io workers) and a browser: about a minute, like the other e2e tests.
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="chromium is not installed (.ci/run installs Debian's chromium package)",
    ),
]

USER_ID = 626262
# Telegram's light theme, as a client sends it (the button colour differs from the page's own
# default, so the test sees that the launch parameters were applied).
THEME = {
    "bg_color": "#ffffff",
    "text_color": "#000000",
    "hint_color": "#707579",
    "link_color": "#3390ec",
    "button_color": "#3390ec",
    "button_text_color": "#ffffff",
    "secondary_bg_color": "#f4f4f5",
    "section_bg_color": "#ffffff",
    "destructive_text_color": "#e53935",
}
# A native Telegram client's side of the bridge: what the page posts is recorded.
WEBVIEW_PROXY = """
window.__posted = [];
window.TelegramWebviewProxy = {
  postEvent: function (type, data) {
    window.__posted.push([type, data ? JSON.parse(data) : null]);
  }
};
"""
ALL_IMAGES_LOADED = """(() => {
  const imgs = [...document.querySelectorAll('#grid img')];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;
})()"""


def launch_url(base: str, raw_init_data: str) -> str:
    """/miniapp/ with the fragment a Telegram client opens it with."""
    fragment = (
        f"tgWebAppData={quote(raw_init_data, safe='')}&tgWebAppVersion=8.0"
        f"&tgWebAppPlatform=android&tgWebAppThemeParams={quote(json.dumps(THEME), safe='')}"
    )
    return f"{base}/miniapp/#{fragment}"


def init_data(user: FakeUser, *, age: int = 0, token: str = TOKEN) -> str:
    who = {"id": user.id, "first_name": user.first_name, "language_code": user.language_code}
    return initdata.build(token, who, auth_date=int(time.time()) - age, query_id="AAE1")


def screenshot_dir(tmp: Path) -> Path:
    target = os.environ.get("FACECHAIN_SCREENSHOTS")
    return Path(target) if target else tmp


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Bot (payments on) + gpu and io workers, the whole catalog and a pack on sale."""
    workdir = tmp_path_factory.mktemp("miniapp")
    # The embedded broker: a queue of its own, whatever else uses the test Redis meanwhile.
    broker = f"sqla+sqlite:///{workdir / 'broker.db'}"
    with mock.patch.dict(os.environ, {"PAYMENTS_ENABLED": "true"}):
        async with open_stack(database_url, broker, workdir) as running:
            with running.db.session() as session:
                import_catalog(session, running.blobs)
                billing.create_pack(session, title="Starter", credits=10, stars=50, actor="t")
            yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(stack: Stack) -> AsyncIterator[str]:
    """`web` with the Mini App on 127.0.0.1, on the stack's database, blobs and broker."""
    config = config_from_env(stack.env)
    config.telegram = TelegramSettings(
        token=SecretStr(TOKEN),
        api_base_url=stack.env["TELEGRAM_API_BASE_URL"],
        file_base_url=stack.env["TELEGRAM_FILE_BASE_URL"],
    )
    config.payments = PaymentsSettings(enabled=True)
    assert stack.celery is not None
    app = create_web_app(config, stack.db, stack.blobs, CeleryPublisher(stack.celery, stack.db))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ann(stack: Stack) -> FakeUser:
    """A user who sent a selfie in the chat."""
    user = stack.tg.user(USER_ID, "Ann", "en")
    await send_selfie(stack.tg, user)
    return user


def only_local(requests: list[str], base: str) -> None:
    host = urlsplit(base).netloc
    assert requests, "the page made no request"
    foreign = [
        u
        for u in requests
        if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != host
    ]
    assert foreign == [], f"requests left {host}: {foreign}"


async def test_gallery_use_style_album_and_my_portraits(
    stack: Stack, site: str, browser: Any, ann: FakeUser, tmp_path: Path
) -> None:
    http, devtools = browser
    shots = screenshot_dir(tmp_path)
    with stack.db.session() as session:
        styles = session.query(Style).filter(Style.enabled.is_(True)).all()
        total = len(styles)
        majic = sum(1 for s in styles if s.base_model is BaseModelName.MAJIC)
    assert total >= 77
    assert 0 < majic < total
    async with open_page(http, devtools, init_script=WEBVIEW_PROXY) as page:
        await page.navigate(launch_url(site, init_data(ann)))
        await page.wait_for("document.body.dataset.loaded === '1'")
        # Every style picture arrived and decoded (naturalWidth > 0), one card per style.
        assert await page.wait_for(ALL_IMAGES_LOADED, 60) == total
        assert await page.evaluate("document.querySelectorAll('#grid .card').length") == total
        # The theme is Telegram's, from the launch parameters; ready and expand were posted.
        colour = (
            "getComputedStyle(document.documentElement)"
            ".getPropertyValue('--tg-theme-button-color')"
        )
        assert (await page.evaluate(colour)).strip() == THEME["button_color"]
        posted = [e[0] for e in await page.evaluate("window.__posted")]
        assert "web_app_ready" in posted
        assert "web_app_expand" in posted
        assert await page.evaluate(
            "document.querySelector('#tab-styles').textContent"
        ) == translate("en", "miniapp.tab.styles")
        await page.screenshot(shots / "miniapp-styles.png")

        # A filter narrows the gallery: the Realistic base only.
        await page.click('[data-filter="majic"]')
        assert await page.wait_for(f"document.querySelectorAll('#grid .card').length === {majic}")
        await page.click('[data-filter="all"]')
        await page.evaluate(
            "(() => { const s = document.querySelector('#search'); s.value = 'armo';"
            " s.dispatchEvent(new Event('input')); })()"
        )
        names = await page.evaluate(
            "[...document.querySelectorAll('#grid .card .name')].map(n => n.textContent)"
        )
        assert names
        assert all("armo" in n.lower() for n in names)

        # "Use this style" on the test style: the real job, announced and delivered in the chat.
        style_id = stack.style_ids[0]
        sheet_open = (
            "!document.querySelector('#overlay').hidden"
            " && document.querySelector('#sheet img.large').naturalWidth > 0"
        )
        # A catalog style large (its sample picture), then closed again.
        catalog_id = await page.evaluate(
            "[...document.querySelectorAll('#grid .card')].map(c => c.dataset.style)"
            f".find(id => id !== '{style_id}')"
        )
        await page.click(f'.card[data-style="{catalog_id}"]')
        await page.wait_for(sheet_open)
        await page.screenshot(shots / "miniapp-style.png")
        await page.click("#overlay-close")
        await page.wait_for("document.querySelector('#overlay').hidden")
        await page.click(f'.card[data-style="{style_id}"]')
        await page.wait_for(sheet_open)
        await page.click("#use-style")
        await page.wait_for("document.querySelector('#view-portraits').hidden === false")
        (job,) = stack.jobs_of(USER_ID)
        assert job.style_id == style_id
        await page.wait_for(f"document.querySelector('.job[data-job=\"{job.id}\"]') !== null", 20)
        await stack.wait(lambda: stack.albums(USER_ID), JOB_SECONDS, "the album in the chat")
        assert stack.job(job.id).status is JobStatus.SUCCEEDED
        # My portraits lists the finished set with its pictures (polled while it ran).
        loaded = (
            f"(() => {{ const imgs = [...document.querySelectorAll("
            f"'.set[data-job=\"{job.id}\"] img')];"
            " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
            " ? imgs.length : 0; })()"
        )
        assert await page.wait_for(loaded, 30) == len(stack.job(job.id).result_blobs)
        await page.screenshot(shots / "miniapp-portraits.png")
        only_local(page.requests, site)
        assert not page.exceptions, page.exceptions


async def test_packs_checkout_through_open_invoice(
    stack: Stack, site: str, browser: Any, ann: FakeUser, tmp_path: Path
) -> None:
    http, devtools = browser
    async with open_page(http, devtools, init_script=WEBVIEW_PROXY) as page:
        await page.navigate(launch_url(site, init_data(ann)))
        await page.wait_for("document.body.dataset.loaded === '1'")
        await page.click("#tab-packs")
        await page.wait_for("document.querySelector('.pack button') !== null")
        await page.screenshot(screenshot_dir(tmp_path) / "miniapp-packs.png")
        since = len(stack.tg.calls)
        await page.click(".pack button")
        call = await stack.tg.wait_for("createInvoiceLink", since=since, within=20)
        slug = urlsplit(
            await page.wait_for(
                "(() => { const e = window.__posted.find(e => e[0] === 'web_app_open_invoice');"
                " return e ? 'https://t.me/$' + e[1].slug : null; })()"
            )
        ).path.lstrip("/$")
        # The user pays in Telegram's checkout; the bot records the payment as for /buy.
        assert await stack.tg.pay(ann, call) is not None
        await stack.tg.wait_text(USER_ID, paid_text("en", 10, 10))
        await page.evaluate(
            "window.Telegram.WebView.receiveEvent('invoice_closed',"
            f" {{slug: {json.dumps(slug)}, status: 'paid'}})"
        )
        expected = ntranslate("en", "miniapp.balance", 10)
        await page.wait_for(
            f"document.querySelector('#wallet .big').textContent === {json.dumps(expected)}"
        )
        only_local(page.requests, site)
        assert not page.exceptions, page.exceptions


@pytest.mark.parametrize("how", ["forged", "stale", "absent"])
async def test_forged_or_stale_init_data_is_refused(
    stack: Stack, site: str, browser: Any, ann: FakeUser, how: str
) -> None:
    http, devtools = browser
    if how == "forged":
        url = launch_url(site, init_data(ann, token="123456:NOT-THE-BOT"))
    elif how == "stale":
        url = launch_url(site, init_data(ann, age=2 * 86400))
    else:
        url = f"{site}/miniapp/"
    async with open_page(http, devtools) as page:
        await page.navigate(url)
        await page.wait_for("!document.querySelector('#refused').hidden")
        assert await page.evaluate("document.querySelector('#app').hidden") is True
        text = await page.evaluate("document.querySelector('#refused').textContent")
        assert text == translate("en", "miniapp.open_in_telegram")
        if how != "absent":
            assert await page.evaluate("document.body.dataset.refused") == "401"
        only_local(page.requests, site)
