"""`facechain-bot run` with Telegram Stars on, in both update modes: the bot asks Telegram for
the pre-checkout queries (the fake Bot API, like Telegram, sends only the update types given to
setWebhook or to getUpdates, where a call without the list keeps the previous one), so an
admin's pack is bought through the real service end to end; a forged `successful_payment`
(a payload naming no invoice the bot issued) credits nothing and alerts the admin chat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from telegram_ui.i18n import translate
from tests.service.test_run_command import free_port, wait_healthy
from tests.utils.fake_telegram import TOKEN, FakeTelegram

pytestmark = pytest.mark.slow
ADMIN = 9900


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


@pytest.mark.parametrize("mode", ["webhook", "polling"])
async def test_buying_a_pack(tg: FakeTelegram, tmp_path: Path, mode: str) -> None:
    port = free_port()
    # What an earlier deployment's webhook left behind (getUpdates keeps it unless told).
    tg.polling_allowed = ["message", "callback_query", "edited_message"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "BROKER_", "TELEGRAM_", "STORAGE_", "PAYMENTS_"))
    }
    env.update(
        {
            "TELEGRAM_TOKEN": TOKEN,
            "TELEGRAM_API_BASE_URL": tg.api_base_url,
            "TELEGRAM_FILE_BASE_URL": tg.file_base_url,
            "TELEGRAM_ADMIN_IDS": str(ADMIN),
            "TELEGRAM_ADMIN_CHAT_ID": str(ADMIN),
            "TELEGRAM_MODE": mode,
            "PAYMENTS_ENABLED": "true",
            "DATA_DIR": str(tmp_path / "data"),
            "ADMIN_PORT": str(port),
            "ENGINE_PROFILE": "tiny",
        }
    )
    if mode == "webhook":
        env["TELEGRAM_WEBHOOK_URL"] = f"http://127.0.0.1:{port}/telegram/webhook"
        env["TELEGRAM_WEBHOOK_SECRET"] = "payments-webhook-secret-7"
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, log)
        if mode == "webhook":
            await tg.wait_for("setWebhook", within=60)
        admin = tg.user(ADMIN, "Root", "en")
        tg.send_text(admin, "/pack_add 5 25 Five")
        await tg.wait_text(admin.id, "Five: 5 credits for 25", within=30)
        ann = tg.user(9901, "Ann", "en")
        tg.send_text(ann, "/buy")
        await tg.wait_text(ann.id, "Pick a pack", within=30)
        tg.press_button(ann, tg.bot_messages(ann.id)[-1], "Five")
        invoice = await tg.wait_for("sendInvoice", chat_id=ann.id, within=30)
        charge = await tg.pay(ann, invoice, within=10)
        assert charge is not None
        thanks = "✅ Thank you! 5 credits added. Your balance: 5 credits."
        await tg.wait_text(ann.id, thanks, within=30)
        # A forged successful_payment (what a guessed webhook secret would let through): a
        # pack that does not exist, 1 Star, a million credits in its payload. Credits come
        # from the invoices the bot issued only: nothing credited, the admin chat alerted.
        bob = tg.user(9902, "Bob", "en")
        tg.successful_payment(bob, "pk:999:1000000:1:2:0", 1)
        await tg.wait_text(bob.id, translate("en", "pay.unmatched"), within=30)
        await tg.wait_text(ADMIN, "matches no invoice we issued (no_invoice)", within=30)
        since = len(tg.calls)
        tg.send_text(bob, "/balance")
        await tg.wait_text(bob.id, "Credits: 0", since=since, within=30)
        assert tg.dropped_updates == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- run log ---\n{log.read_text()[-4000:]}") from None
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
